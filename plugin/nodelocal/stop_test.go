package nodelocal

import (
	"net/netip"
	"testing"
	"time"
)

func TestSkipTeardownLeavesEverything(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53")
	cfg.Teardown = false
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	n.mgr.Shutdown()
	if n.tables[IPv4].count() != 12 || !n.links.links["nodelocaldns"] {
		t.Fatal("skip_teardown removed state")
	}
}

func TestManagerHandsOffServiceIPsFirst(t *testing.T) {
	n := newFakeNode(t)
	if err := n.mgr.Apply(testConfig("169.254.20.10:53", "198.18.0.10:53")); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	n.mgr.HandOff()
	if n.mgr.Ready() {
		t.Fatal("still ready after the stop began")
	}
	if got := n.sockets.stopped; len(got) != 1 || len(got[0]) != 1 || got[0][0].Addr().String() != "198.18.0.10" {
		t.Fatalf("TCP listeners shut on %v, want the ClusterIP's, once", got)
	}
	if got := n.sockets.udpLeft; len(got) != 0 {
		t.Fatalf("UDP sockets taken out of their groups with no peer: %v", got)
	}
	for _, r := range n.tables[IPv4].rules {
		if r.isInterception() && r.Args[1] == "198.18.0.10/32" && r.Args[3] == "udp" {
			t.Fatalf("ClusterIP UDP still intercepted after the handoff: %v", r)
		}
	}
	// The link-local IP keeps everything through lameduck; the ClusterIP loses
	// its UDP interception, and keeps the TCP one for the connections already
	// open (its listener is shut, so the socket match holds only those).
	if got := n.tables[IPv4].count(); got != 23 {
		t.Fatalf("%d rules after the handoff, want 23 (24 minus the ClusterIP's UDP PREROUTING rule)", got)
	}
	n.mgr.check(true) // the check loop must not put the interception back
	if got := n.tables[IPv4].count(); got != 23 {
		t.Fatalf("the check restored handed-off rules: %d", got)
	}
	n.mgr.Shutdown()
	if n.tables[IPv4].count() != 0 || len(n.links.links) != 0 {
		t.Fatal("teardown after the handoff left state")
	}
	if got := n.sockets.closedAnswered; len(got) != 1 || len(got[0]) != 1 || got[0][0].Addr().String() != "198.18.0.10" {
		t.Fatalf("connections closed before the teardown on %v, want the ClusterIP's, once", got)
	}
}

func TestManagerLeavesStateToAPeer(t *testing.T) {
	n := newFakeNode(t)
	if err := n.mgr.Apply(testConfig("169.254.20.10:53", "198.18.0.10:53")); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	n.peers.others = 4 // a surge pod listens on the same IPs
	n.mgr.HandOff()
	// Every flow moves to the peer at once: no new connection or datagram
	// is left to be lost when this process's sockets close.
	for name, calls := range map[string][][]netip.AddrPort{"TCP listeners shut": n.sockets.stopped, "UDP sockets left": n.sockets.udpLeft} {
		if len(calls) != 1 || len(calls[0]) != 2 {
			t.Fatalf("%s: %v, want both IPs once", name, calls)
		}
	}
	if n.mgr.Ready() {
		t.Fatal("still ready after the stop began")
	}
	n.mgr.Shutdown()
	if got := n.tables[IPv4].count(); got != 24 {
		t.Fatalf("%d rules left for the peer, want all 24", got)
	}
	if !n.links.links["nodelocaldns"] || len(n.links.addrs) != 2 {
		t.Fatal("the interface was taken from the peer")
	}
	if n.peers.locks < 2 {
		t.Fatalf("instance lock taken %d times, want at start and at teardown", n.peers.locks)
	}
}

// A surge pod can be marked ready, and this one stopped, while the new
// instance is still starting: the handoff waits for its listeners, and then
// moves every flow to it instead of handing the Service IPs back to
// kube-proxy.
func TestHandOffWaitsForAStartingSuccessor(t *testing.T) {
	n := newFakeNode(t)
	if err := n.mgr.Apply(testConfig("169.254.20.10:53", "198.18.0.10:53")); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	n.peers.starting = 4
	n.mgr.HandOff()
	for name, calls := range map[string][][]netip.AddrPort{"TCP listeners shut": n.sockets.stopped, "UDP sockets left": n.sockets.udpLeft} {
		if len(calls) != 1 || len(calls[0]) != 2 {
			t.Fatalf("%s: %v, want both IPs once, for the successor", name, calls)
		}
	}
	if got := n.tables[IPv4].count(); got != 24 {
		t.Fatalf("%d rules after the handoff, want all 24 left to the successor", got)
	}
}

// A deleted pod's replacement starts during the old one's stop: the old one
// waits for it, and moves every flow to it as in a surge instead of handing
// the Service IPs back to kube-proxy, whose connections the replacement's
// takeover would reset. Without a replacement, the hand-back follows the wait.
func TestHandOffWaitsForAReplacement(t *testing.T) {
	for _, replaced := range []bool{true, false} {
		n := newFakeNode(t)
		if err := n.mgr.Apply(testConfig("169.254.20.10:53", "198.18.0.10:53")); err != nil {
			t.Fatal(err)
		}
		n.listenersUp()
		n.mgr.waits.replacementWait = 300 * time.Millisecond
		if replaced {
			time.AfterFunc(100*time.Millisecond, func() {
				n.peers.mu.Lock()
				n.peers.starting = 4 // sockets open, listeners not yet: it holds the lock
				n.peers.others = 1
				n.peers.mu.Unlock()
			})
		}
		start := time.Now()
		n.mgr.HandOff()
		took := time.Since(start)
		rules := n.tables[IPv4].count()
		switch {
		case replaced && (len(n.sockets.stopped) != 1 || len(n.sockets.stopped[0]) != 2 || rules != 24):
			t.Fatalf("replaced: TCP listeners shut %v and %d rules left; want both IPs moved to the replacement and all 24 rules left to it", n.sockets.stopped, rules)
		case replaced && took >= n.mgr.waits.replacementWait:
			t.Fatalf("replaced after 100ms: the handoff took %v, want it as soon as the replacement listens", took)
		case !replaced && took < n.mgr.waits.replacementWait:
			t.Fatalf("no replacement: handed back after %v, want after the %v wait", took, n.mgr.waits.replacementWait)
		case !replaced && rules == 24:
			t.Fatal("no replacement: the Service IPs' interception stayed, want it handed back to kube-proxy")
		}
	}
}

// A stop during the process's own start does not wait for its own lock.
func TestHandOffDuringOwnStartDoesNotWaitForItself(t *testing.T) {
	n := newFakeNode(t)
	if err := n.mgr.Apply(testConfig("169.254.20.10:53")); err != nil {
		t.Fatal(err)
	}
	locks := n.peers.locks
	n.mgr.HandOff()
	if n.peers.locks != locks {
		t.Fatalf("the stop took the instance lock its own start holds")
	}
}

func TestHandOffWithoutSocketMatchKeepsTheListener(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	cfg.FailOpen = false
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	n.mgr.HandOff()
	if len(n.sockets.stopped) != 0 {
		t.Fatal("listener shut although the interception is unconditional")
	}
	for _, r := range n.tables[IPv4].rules {
		if r.isInterception() && r.Args[1] == "198.18.0.10/32" {
			t.Fatalf("unconditional ClusterIP interception kept after the handoff: %v", r)
		}
	}
}
