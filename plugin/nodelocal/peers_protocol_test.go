package nodelocal

import (
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestListenersUpPublishesBeforeTheStartLockGoes: a stopping peer waits for
// the start lock, then counts only published sockets as a successor's; so
// the sockets are published first.
func TestListenersUpPublishesBeforeTheStartLockGoes(t *testing.T) {
	n := newFakeNode(t)
	if err := n.mgr.Apply(testConfig("169.254.20.10:53")); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	events := n.log.all()
	publish, unlock := slices.Index(events, "publish"), slices.Index(events, "unlock")
	if publish < 0 || unlock < 0 || publish > unlock {
		t.Fatalf("events %v: want the sockets published before the start lock is released", events)
	}
}

// TestStopWaitsEndWithinTheBudget: whatever holds the instance lock, the
// teardown's wait for it ends stopBudget after the stop began, inside
// kubelet's grace period.
func TestStopWaitsEndWithinTheBudget(t *testing.T) {
	n := newFakeNode(t)
	if err := n.mgr.Apply(testConfig("169.254.20.10:53")); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	n.mgr.HandOff()
	began := time.Now().Add(-stopBudget + 2*time.Second) // the stop's other waits took 18 s
	n.mgr.ready.began.Store(began.UnixNano())
	n.mgr.Shutdown()
	last := n.peers.lockTimeouts[len(n.peers.lockTimeouts)-1]
	if last > 2*time.Second {
		t.Fatalf("the teardown waits up to %v for the lock, past the stop's budget (2 s left)", last)
	}
	// A stop whose waits already used the budget does not wait at all.
	n2 := newFakeNode(t)
	if err := n2.mgr.Apply(testConfig("169.254.20.10:53")); err != nil {
		t.Fatal(err)
	}
	n2.listenersUp()
	n2.mgr.HandOff()
	n2.mgr.ready.began.Store(time.Now().Add(-time.Minute).UnixNano())
	n2.mgr.Shutdown()
	if last := n2.peers.lockTimeouts[len(n2.peers.lockTimeouts)-1]; last != 0 {
		t.Fatalf("the teardown waits %v for the lock after the budget was spent", last)
	}
}

// TestForeignSocketsAreExported: the check exports the sockets on the cache's
// addresses that belong to no instance, counted at the first check and then
// once an interval.
func TestForeignSocketsAreExported(t *testing.T) {
	n := newFakeNode(t)
	n.mgr.foreign.interval = 0
	if err := n.mgr.Apply(testConfig("169.254.20.10:53")); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	for _, foreign := range []int{2, 0} { // they open, then close
		n.peers.mu.Lock()
		n.peers.foreign = foreign
		n.peers.mu.Unlock()
		n.mgr.check(true)
		if got := testutil.ToFloat64(foreignSockets); got != float64(foreign) {
			t.Fatalf("foreign_sockets %v, want %d", got, foreign)
		}
	}
}

// TestForeignSocketsAreCountedOnceAnInterval: a check within the interval
// reads no socket table.
func TestForeignSocketsAreCountedOnceAnInterval(t *testing.T) {
	n := newFakeNode(t)
	if err := n.mgr.Apply(testConfig("169.254.20.10:53")); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	n.mgr.check(true)
	n.peers.mu.Lock()
	n.peers.foreign = 3
	n.peers.mu.Unlock()
	n.mgr.check(true)
	if n.mgr.foreign.count != 0 {
		t.Fatalf("counted %d foreign sockets within the interval, want the first count kept", n.mgr.foreign.count)
	}
	n.mgr.foreign.countedAt = time.Now().Add(-foreignSocketsInterval)
	n.mgr.check(true)
	if n.mgr.foreign.count != 3 {
		t.Fatalf("counted %d foreign sockets after the interval, want 3", n.mgr.foreign.count)
	}
}
