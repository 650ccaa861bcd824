package nodelocal

import (
	"net/netip"
	"slices"
	"strings"
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
		n.mgr.replacementWait = 300 * time.Millisecond
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
		case replaced && took >= n.mgr.replacementWait:
			t.Fatalf("replaced after 100ms: the handoff took %v, want it as soon as the replacement listens", took)
		case !replaced && took < n.mgr.replacementWait:
			t.Fatalf("no replacement: handed back after %v, want after the %v wait", took, n.mgr.replacementWait)
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
	if h := n.sockets.held; len(h) != 1 || *h[0] != (fakeHeld{carried: 1}) {
		t.Fatalf("held connections %v, want one hold carried over once", h)
	}

	n.mgr.PauseForReload()
	n.mgr.ReloadFailed()
	if h := n.sockets.held; len(h) != 2 || *h[1] != (fakeHeld{released: 1}) {
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
	if h := n.sockets.held; *h[2] != (fakeHeld{carried: 1}) {
		t.Fatalf("held connections %v after a late stop, want carried over once", h[2])
	}
}

// TestStartTakesTCPOverFromKubeDNSInSteps: connections that kube-dns serves
// when the cache starts are not reset. A dead instance's TCP interception
// goes before the listeners open; once they are up, SYNs only are intercepted
// and dropped by the paused listeners; after the drain, all of TCP is.
func TestStartTakesTCPOverFromKubeDNSInSteps(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	n.tables[IPv4].rules = DesiredRules(cfg.Listen, cfg.HealthPort, true)[IPv4] // a SIGKILLed instance's
	tcpInterception := func() []string {
		var out []string
		for _, r := range n.tables[IPv4].rules {
			if isServiceTCPInterception(r) {
				out = append(out, r.String())
			}
		}
		return out
	}
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if got := tcpInterception(); len(got) != 0 {
		t.Fatalf("the dead instance's ClusterIP TCP interception is still there before the listeners open: %v", got)
	}
	n.mgr.ListenersUp()
	got := tcpInterception()
	if len(got) != 1 || !strings.Contains(got[0], "--tcp-flags FIN,SYN,RST,ACK SYN -m socket") {
		t.Fatalf("while kube-dns's connections finish, ClusterIP TCP interception %v, want SYNs only", got)
	}
	if p := n.sockets.paused; len(p) != 1 || len(p[0]) != 1 || p[0][0] != cfg.Listen[1] {
		t.Fatalf("listeners paused %v, want the ClusterIP's", p)
	}
	if n.tables[IPv4].count() != 24 {
		t.Fatalf("%d rules, want 24", n.tables[IPv4].count())
	}
	if n.mgr.Ready() {
		t.Fatal("ready before the takeover ended")
	}
	n.mgr.PauseForReload() // a reload meanwhile leaves the takeover's pause alone
	n.sockets.onResume = func() {
		if got := tcpInterception(); len(got) != 1 || strings.Contains(got[0], "--tcp-flags") {
			t.Errorf("the listeners accept again while the ClusterIP's TCP interception is %v: want the full rule in first, or the connections they accept are reset by kube-dns", got)
		}
	}
	n.mgr.finishTakeover()
	want := DesiredRules(cfg.Listen, cfg.HealthPort, true)[IPv4]
	if ch := DiffRules(want, n.tables[IPv4].rules); len(ch.Add)+len(ch.Delete) != 0 {
		t.Fatalf("after the takeover, rules differ from the usual set: %+v", ch)
	}
	if got := n.sockets.counts(); got != [4]int{1, 1, 0, 0} {
		t.Fatalf("pause, resume, stop, leave: %v, want the takeover's pause and resume", got)
	}
	n.mgr.check(false)
	if !n.mgr.Ready() {
		t.Fatal("not ready after the takeover")
	}
}

// TestStopDuringTakeover: a SIGTERM in the takeover's SYN phase completes it
// (full rule, then the listeners accept) before the usual handoff, which then
// shuts the listeners and hands the Service IP back.
func TestStopDuringTakeover(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.mgr.ListenersUp()
	n.mgr.HandOff()
	if got := n.sockets.counts(); got != [4]int{1, 1, 1, 0} {
		t.Fatalf("pause, resume, stop, leave: %v, want the takeover's pause and resume, then the handoff's stop", got)
	}
	for _, r := range n.tables[IPv4].rules {
		if strings.Contains(r.String(), "--tcp-flags") {
			t.Fatalf("the takeover's SYN-only rule outlived the handoff: %v", r)
		}
		if isHandedOff(r) && r.proto() == "udp" {
			t.Fatalf("the ClusterIP's UDP interception outlived the handoff: %v", r)
		}
	}
}

// TestSurgeStartTakesNothingOver: with a peer serving the Service IPs, kube-dns
// serves no connection, and the peer's interception must stay.
func TestSurgeStartTakesNothingOver(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	n.tables[IPv4].rules = DesiredRules(cfg.Listen, cfg.HealthPort, true)[IPv4]
	n.peers.others = 2
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.mgr.ListenersUp()
	want := DesiredRules(cfg.Listen, cfg.HealthPort, true)[IPv4]
	if ch := DiffRules(want, n.tables[IPv4].rules); len(ch.Add)+len(ch.Delete) != 0 || n.tables[IPv4].inserts != 0 {
		t.Fatalf("a surge start changed the peer's rules: %+v, %d inserts", ch, n.tables[IPv4].inserts)
	}
	if got := n.sockets.counts(); got != [4]int{} {
		t.Fatalf("a surge start paused listeners: %v", got)
	}
}

// TestStartBesideAHandedOffInstance: a deleted pod's replacement starts while
// the old instance is in its lameduck, its Service IPs handed back to
// kube-proxy, its TCP listeners shut and its UDP sockets still open. Kube-dns
// serves the new TCP connections meanwhile, so this is a takeover in steps,
// not a surge; and the old instance's checks leave the new one's rules alone.
func TestStartBesideAHandedOffInstance(t *testing.T) {
	old := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	if err := old.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	old.listenersUp()
	old.mgr.HandOff()

	n := newFakeNode(t)
	n.tables = old.tables // one node
	n.peers.others, n.peers.handedOff = 2, true
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.mgr.ListenersUp()
	// The SYNs the old instance dropped as it shut its listeners come back
	// after 1 s: they go to kube-dns, not to a takeover that drops them again.
	if n.mgr.phase != phaseWithholding || n.mgr.retransmitWait != afterHandOffWait || n.tables[IPv4].count() != 22 {
		t.Fatalf("phase %s, wait %v, %d rules beside a handed-off instance; want withholding for %v, the old instance's 23 rules but its ClusterIP TCP interception",
			n.mgr.phase, n.mgr.retransmitWait, n.tables[IPv4].count(), afterHandOffWait)
	}
	n.mgr.takeoverTimer.Stop()
	n.mgr.startTakeover()
	if n.mgr.phase != phaseTakingOver {
		t.Fatalf("phase %s after the wait, want takingOver", n.mgr.phase)
	}
	n.mgr.finishTakeover()
	want := DesiredRules(cfg.Listen, cfg.HealthPort, true)[IPv4]
	old.mgr.check(true) // the old instance's periodic check, in its lameduck
	if ch := DiffRules(want, n.tables[IPv4].rules); len(ch.Add)+len(ch.Delete) != 0 {
		t.Fatalf("the stopping instance's check changed the new one's rules: %+v", ch)
	}

	// Lameduck over: the old instance gives what still lands on its sockets
	// to the new one before its servers stop, and leaves the node to it.
	old.peers.others = 2
	old.mgr.Shutdown()
	if got := old.sockets.stopped; len(got) != 2 || !slices.Equal(got[1], cfg.Listen[:1]) {
		t.Fatalf("TCP listeners shut %v, want the ClusterIP's at the handoff, then the link-local IP's", got)
	}
	if got := old.sockets.udpLeft; len(got) != 1 || !slices.Equal(got[0], cfg.Listen) {
		t.Fatalf("UDP sockets left %v, want both IPs'", got)
	}
	if got := old.sockets.waitedAnswered; len(got) != 1 || !slices.Equal(got[0], cfg.Listen) {
		t.Fatalf("waited for answers on %v before the exit, want both IPs", got)
	}
	if ch := DiffRules(want, n.tables[IPv4].rules); len(ch.Add)+len(ch.Delete) != 0 {
		t.Fatalf("the old instance's exit changed the new one's rules: %+v", ch)
	}
}

// TestNoTakeoverWithoutRules: with `iptables off` there is no interception to
// take over, so the start neither pauses listeners nor delays readiness.
func TestNoTakeoverWithoutRules(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	cfg.Backend = BackendOff
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.mgr.ListenersUp()
	if got := n.sockets.counts(); got != [4]int{} || !n.mgr.Ready() {
		t.Fatalf("sockets touched %v, ready %v: want no takeover and ready at once", got, n.mgr.Ready())
	}
}
