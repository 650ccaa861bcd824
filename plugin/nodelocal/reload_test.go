package nodelocal

import (
	"testing"
	"time"
)

// TestReloadPausesAcceptingUntilTheOldServersStop: a reload's new servers share
// the listeners; the old ones take no new connection from just before until
// they have stopped, or for maxReloadPause at most, and the connections they
// hold are carried over to the new servers once they have stopped, or left to
// them when the new servers fail to start.
func TestReloadPausesAcceptingUntilTheOldServersStop(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53")
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.mgr.PauseForReload() // the first start: nothing listens yet
	if got := n.sockets.counts(); got != [4]int{} || len(n.sockets.held) != 0 {
		t.Fatalf("the first start paused, held or touched sockets: %v", got)
	}
	n.listenersUp()

	n.mgr.PauseForReload()
	n.mgr.PauseForReload() // a second block's hook: still one pause
	n.mgr.OldServersStopped()
	n.mgr.OldServersStopped()
	if got := n.sockets.counts(); got != [4]int{1, 1, 0, 0} {
		t.Fatalf("pause, resume, stop, leave: %v, want one pause and one resume", got)
	}
	if h := n.sockets.held; len(h) != 1 || h[0].carried != 1 || h[0].released != 0 {
		t.Fatalf("held connections %v, want one hold carried over once", h)
	}

	n.mgr.PauseForReload()
	n.mgr.ReloadFailed()
	if h := n.sockets.held; len(h) != 2 || h[1].carried != 0 || h[1].released != 1 {
		t.Fatalf("a failed reload's held connections %v, want released once", h[1:])
	}

	// A reload whose old servers take long to stop still resumes in time.
	n.mgr.PauseForReload()
	deadline := time.Now().Add(5 * maxReloadPause)
	for n.sockets.counts()[1] != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("not resumed %v after the pause", 5*maxReloadPause)
		}
		time.Sleep(10 * time.Millisecond)
	}
	n.mgr.OldServersStopped()
	if h := n.sockets.held; h[2].carried != 1 || h[2].released != 0 {
		t.Fatalf("held connections %v after a late stop, want carried over once", h[2])
	}
}
