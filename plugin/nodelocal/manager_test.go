package nodelocal

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

type fakeNode struct {
	links   *fakeLinks
	tables  map[Family]*fakeTables
	peers   *fakePeers
	sockets *fakeSockets
	nftGen  *uint32 // the ruleset generation, if the fake node keeps one
	mgr     *manager
}

func newFakeNode(t *testing.T) *fakeNode {
	n := &fakeNode{links: newFakeLinks(), tables: map[Family]*fakeTables{IPv4: {}, IPv6: {}}, peers: &fakePeers{}, sockets: &fakeSockets{}}
	n.mgr = newManager(n.links,
		func(b Backend, f Family) (RuleTables, error) { return n.tables[f], nil },
		func(Backend) (uint32, bool, error) {
			if n.nftGen == nil {
				return 0, false, nil
			}
			return *n.nftGen, true, nil
		},
		func() (Backend, error) { return BackendNFT, nil },
		func(netip.AddrPort) error { return nil },
		n.peers, n.sockets)
	n.mgr.takeoverDrain = time.Hour // tests end the takeover themselves
	t.Cleanup(func() {
		n.mgr.mu.Lock()
		if n.mgr.stop != nil {
			close(n.mgr.stop)
			n.mgr.stop = nil
		}
		n.mgr.mu.Unlock()
	})
	return n
}

// listenersUp is the listeners coming up and, where the start takes the
// Service IPs' TCP over from kube-dns, that takeover's end.
func (n *fakeNode) listenersUp() {
	n.mgr.ListenersUp()
	n.mgr.finishTakeover()
	n.mgr.check(false) // the readiness finishTakeover updates in the background
}

func testConfig(listen ...string) *Config {
	cfg := &Config{Interface: "nodelocaldns", ManageInterface: true, Backend: BackendAuto,
		CheckInterval: time.Hour, HealthPort: 8080, Teardown: true, FailOpen: true}
	for _, s := range listen {
		cfg.Listen = append(cfg.Listen, netip.MustParseAddrPort(s))
	}
	return cfg
}

func TestManagerLifecycle(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53", "[2001:2::10]:53")
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	// Before the listeners are up: interface and addresses, no rules, not ready.
	if !n.links.links["nodelocaldns"] || len(n.links.addrs) != 3 {
		t.Fatalf("interface state after Apply: %v %v", n.links.links, n.links.addrs)
	}
	if n.tables[IPv4].count() != 0 || n.mgr.Ready() {
		t.Fatal("rules installed or ready before the listeners are up")
	}
	n.listenersUp()
	if got := n.tables[IPv4].count(); got != 24 {
		t.Fatalf("IPv4 rules %d, want 24 (12 per IP)", got)
	}
	if got := n.tables[IPv6].count(); got != 12 {
		t.Fatalf("IPv6 rules %d, want 12", got)
	}
	if !n.mgr.Ready() {
		t.Fatal("not ready with everything in place")
	}

	// Applying the same config again (a reload, a second block) changes nothing.
	inserts := n.tables[IPv4].inserts
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.mgr.check(true)
	if n.tables[IPv4].inserts != inserts {
		t.Fatal("re-applying the same config inserted rules")
	}

	// One listing per table and family for a check, however many rules.
	lists := n.tables[IPv4].lists
	n.mgr.check(true)
	if got := n.tables[IPv4].lists - lists; got != len(ruleTables) {
		t.Fatalf("one check listed %d times, want %d (one per table)", got, len(ruleTables))
	}

	n.mgr.Shutdown()
	if n.tables[IPv4].count() != 0 || n.tables[IPv6].count() != 0 || len(n.links.links) != 0 || len(n.links.addrs) != 0 {
		t.Fatalf("teardown left rules %d/%d, links %v, addrs %v", n.tables[IPv4].count(), n.tables[IPv6].count(), n.links.links, n.links.addrs)
	}
}

func TestManagerRepairs(t *testing.T) {
	n := newFakeNode(t)
	if err := n.mgr.Apply(testConfig("169.254.20.10:53")); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	before := testutil.ToFloat64(repairs.WithLabelValues(repairInterface))
	beforeRules := testutil.ToFloat64(repairs.WithLabelValues(repairRule))

	n.links.DeleteLink("nodelocaldns")
	n.mgr.check(false) // what a link event triggers
	if !n.links.links["nodelocaldns"] || n.links.addrs[netip.MustParseAddr("169.254.20.10")] != "nodelocaldns" {
		t.Fatal("interface not restored")
	}
	if got := testutil.ToFloat64(repairs.WithLabelValues(repairInterface)) - before; got != 1 {
		t.Fatalf("interface repairs counted %v, want 1", got)
	}
	// A repair that fails once, then succeeds on the next link event: ready
	// again at once, not at the next periodic check (the rules never went).
	n.links.failAdd = 1
	n.links.DeleteLink("nodelocaldns")
	n.mgr.check(false)
	if n.mgr.Ready() {
		t.Fatal("ready without the interface")
	}
	n.mgr.check(false)
	if !n.mgr.Ready() {
		t.Fatal("not ready after the interface came back on a link event")
	}

	n.tables[IPv4].mu.Lock()
	n.tables[IPv4].rules = n.tables[IPv4].rules[:0] // iptables -t raw -F; iptables -F
	n.tables[IPv4].mu.Unlock()
	n.mgr.check(true)
	if got := n.tables[IPv4].count(); got != 12 {
		t.Fatalf("rules after flush and check: %d, want 12", got)
	}
	if got := testutil.ToFloat64(repairs.WithLabelValues(repairRule)) - beforeRules; got != 12 {
		t.Fatalf("rule repairs counted %v, want 12", got)
	}
}

func TestManagerAdoptsAndDeduplicates(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53")
	// An earlier instance left the interface, the address, every rule, and two extra copies.
	n.links.AddLink("nodelocaldns")
	n.links.AddAddress("nodelocaldns", netip.MustParseAddr("169.254.20.10"))
	rules := DesiredRules(cfg.Listen, cfg.HealthPort, cfg.FailOpen)[IPv4]
	n.tables[IPv4].rules = append(append([]Rule{}, rules...), rules[0], rules[3])
	// Someone else's address on the same interface stays.
	n.links.AddAddress("nodelocaldns", netip.MustParseAddr("169.254.99.1"))

	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	if got := n.tables[IPv4].count(); got != 12 {
		t.Fatalf("rules %d after adoption, want 12 (duplicates removed)", got)
	}
	if n.tables[IPv4].inserts != 0 {
		t.Fatalf("adoption inserted %d rules", n.tables[IPv4].inserts)
	}
	n.mgr.Shutdown()
	if !n.links.links["nodelocaldns"] || n.links.addrs[netip.MustParseAddr("169.254.99.1")] != "nodelocaldns" {
		t.Fatal("teardown removed an interface that holds someone else's address")
	}
	if _, ok := n.links.addrs[netip.MustParseAddr("169.254.20.10")]; ok {
		t.Fatal("teardown left our address")
	}
}

func TestManagerLeavesForeignAddressAlone(t *testing.T) {
	n := newFakeNode(t)
	// kube-proxy IPVS mode: the ClusterIP is on kube-ipvs0.
	n.links.AddLink("kube-ipvs0")
	n.links.AddAddress("kube-ipvs0", netip.MustParseAddr("198.18.0.10"))
	if err := n.mgr.Apply(testConfig("169.254.20.10:53", "198.18.0.10:53")); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	if owner := n.links.addrs[netip.MustParseAddr("198.18.0.10")]; owner != "kube-ipvs0" {
		t.Fatalf("ClusterIP moved to %s", owner)
	}
	for _, r := range n.tables[IPv4].rules {
		if r.Args[1] == "198.18.0.10/32" {
			t.Fatalf("rule for the IPVS-owned ClusterIP: %v", r)
		}
	}
	if got := n.tables[IPv4].count(); got != 12 {
		t.Fatalf("rules %d, want 12 for the link-local IP only", got)
	}
	n.mgr.Shutdown()
	if !n.links.links["kube-ipvs0"] || n.links.addrs[netip.MustParseAddr("198.18.0.10")] != "kube-ipvs0" {
		t.Fatal("teardown touched kube-ipvs0")
	}
}

func TestManagerReloadDropsOldAddress(t *testing.T) {
	n := newFakeNode(t)
	if err := n.mgr.Apply(testConfig("169.254.20.10:53", "198.18.0.10:53")); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	if err := n.mgr.Apply(testConfig("169.254.20.10:53")); err != nil {
		t.Fatal(err)
	}
	if _, ok := n.links.addrs[netip.MustParseAddr("198.18.0.10")]; ok {
		t.Fatal("address no longer listened on is still there")
	}
	if got := n.tables[IPv4].count(); got != 12 {
		t.Fatalf("rules %d after dropping an IP, want 12", got)
	}
}

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

func TestManagerReplacesUnconditionalRules(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("198.18.0.10:53")
	// An upstream node-cache left its unconditional rules.
	n.tables[IPv4].rules = DesiredRules(cfg.Listen, cfg.HealthPort, false)[IPv4]
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	if got := n.tables[IPv4].count(); got != 12 {
		t.Fatalf("%d rules, want 12: upstream's replaced, not kept beside ours", got)
	}
	for _, r := range n.tables[IPv4].rules {
		if r.isInterception() && !strings.Contains(strings.Join(r.Args, " "), "-m socket --nowildcard") {
			t.Fatalf("unconditional interception left: %v", r)
		}
	}
}

func TestManagerInstallsInterceptionLast(t *testing.T) {
	n := newFakeNode(t)
	if err := n.mgr.Apply(testConfig("169.254.20.10:53", "198.18.0.10:53")); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	// fakeTables prepends: the first rules listed were inserted last.
	for i, r := range n.tables[IPv4].rules {
		if want := i < 4; r.isInterception() != want {
			t.Fatalf("rule %d inserted out of order (interception must come last): %v", i, r)
		}
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
// they have stopped, or for maxReloadPause at most.
func TestReloadPausesAcceptingUntilTheOldServersStop(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53")
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.mgr.PauseForReload() // the first start: nothing listens yet
	if got := n.sockets.counts(); got != [4]int{} {
		t.Fatalf("the first start paused or touched sockets: %v", got)
	}
	n.listenersUp()

	n.mgr.PauseForReload()
	n.mgr.PauseForReload() // a second block's hook: still one pause
	n.mgr.ResumeAccepting()
	n.mgr.ResumeAccepting()
	if got := n.sockets.counts(); got != [4]int{1, 1, 0, 0} {
		t.Fatalf("pause, resume, stop, leave: %v, want one pause and one resume", got)
	}

	// A reload whose old servers take long to stop still resumes in time.
	n.mgr.PauseForReload()
	deadline := time.Now().Add(5 * maxReloadPause)
	for n.sockets.counts()[1] != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("not resumed %v after the pause", 5*maxReloadPause)
		}
		time.Sleep(10 * time.Millisecond)
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

// TestChecksListOnlyWhenTheRulesetChanged: with a ruleset generation (nft),
// a check lists the rules only when the generation or the desired rules
// changed since a check found them complete; a change is still repaired.
func TestChecksListOnlyWhenTheRulesetChanged(t *testing.T) {
	n := newFakeNode(t)
	gen := uint32(7)
	n.nftGen = &gen
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	gen++ // our own inserts
	lists := func() int { return n.tables[IPv4].lists + n.tables[IPv6].lists }
	n.mgr.check(true) // finds everything in place: remembers the generation
	before := lists()
	n.mgr.check(true)
	n.mgr.check(true)
	if got := lists() - before; got != 0 {
		t.Fatalf("unchanged ruleset: %d listings, want none", got)
	}

	n.tables[IPv4].rules = n.tables[IPv4].rules[1:] // someone deletes a rule
	gen++
	n.mgr.check(true)
	if got := lists() - before; got != len(ruleTables) {
		t.Fatalf("changed ruleset: %d listings, want one per table", got)
	}
	if got := n.tables[IPv4].count(); got != 24 {
		t.Fatalf("%d rules after the check, want the deleted one back (24)", got)
	}
	gen++
	n.mgr.check(true)

	// Other rules wanted, the ruleset unchanged: the check lists and syncs.
	n.mgr.mu.Lock()
	n.mgr.handedOff = true
	n.mgr.mu.Unlock()
	n.mgr.check(true)
	if got := n.tables[IPv4].count(); got == 24 {
		t.Fatal("a check skipped a change of the desired rules")
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
