package nodelocal

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

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
			if isTCPInterceptionOf(r, cfg.services(cfg.Listen)) {
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
	// The link-local IP failed open to kube-dns too (its fallback is the ClusterIP).
	if p := n.sockets.paused; len(p) != 1 || !slices.Equal(p[0], cfg.Listen) {
		t.Fatalf("listeners paused %v, want the link-local IP's and the ClusterIP's", p)
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
		if n.mgr.ruleSpec().isHandedBack(r) && r.proto() == "udp" {
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
	if n.mgr.phase != phaseWithholding || n.mgr.starts.retransmitWait != afterHandOffWait || n.tables[IPv4].count() != 22 {
		t.Fatalf("phase %s, wait %v, %d rules beside a handed-off instance; want withholding for %v, the old instance's 23 rules but its ClusterIP TCP interception",
			n.mgr.phase, n.mgr.starts.retransmitWait, n.tables[IPv4].count(), afterHandOffWait)
	}
	n.mgr.starts.takeoverTimer.Stop()
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

// TestTakeoverLeavesKubeDNSItsOpenConnections: a connection kube-dns still
// serves as the takeover ends gets a rule in the chain of such connections,
// whose jump is above the ClusterIP's TCP interception (also when a repair
// puts that back); rule, jump and chain go once the connection closes, with
// no repair counted.
func TestTakeoverLeavesKubeDNSItsOpenConnections(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	service, client := cfg.Listen[1], netip.MustParseAddrPort("198.19.0.3:41234")
	n.conntrack.setClients(service, client)
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	exception := kubeDNSConnectionRule(kubeDNSConnection{client: client, service: service})
	jump := kubeDNSJumpRule(service)
	interception := DesiredRules(cfg.Listen, cfg.HealthPort, true)[IPv4]
	interception = slices.DeleteFunc(interception, func(r Rule) bool { return !isTCPInterceptionOf(r, cfg.services(cfg.Listen)) })
	exceptionFirst := func(when string) {
		t.Helper()
		var order []string
		for _, r := range n.tables[IPv4].rules {
			if r.Chain == "PREROUTING" && (r.isKubeDNSJump() || r.key() == interception[0].key()) {
				order = append(order, r.String())
			}
		}
		if len(order) != 2 || order[0] != jump.String() {
			t.Fatalf("%s: raw PREROUTING has %v, want the jump to the connections left to kube-dns, then the interception", when, order)
		}
		if !slices.ContainsFunc(n.tables[IPv4].rules, func(r Rule) bool { return r.key() == exception.key() }) {
			t.Fatalf("%s: no rule for the connection in %s", when, kubeDNSChain)
		}
	}
	exceptionFirst("after the takeover")
	if err := n.tables[IPv4].Delete(interception[0]); err != nil {
		t.Fatal(err)
	}
	n.mgr.check(true)
	exceptionFirst("after a repair")

	repaired := testutil.ToFloat64(repairs.WithLabelValues(repairRule))
	n.mgr.check(true) // still open
	if n.tables[IPv4].count() != 26 {
		t.Fatalf("%d rules while the connection is open, want 24, the jump and its own", n.tables[IPv4].count())
	}
	n.conntrack.setClients(service)
	n.mgr.check(true)
	if n.tables[IPv4].count() != 24 || slices.ContainsFunc(n.tables[IPv4].rules, Rule.isKubeDNSConnection) {
		t.Fatalf("%d rules once the connection closed, want the usual 24", n.tables[IPv4].count())
	}
	if len(n.tables[IPv4].chains) != 0 {
		t.Fatalf("chains %v left once the connection closed", n.tables[IPv4].chains)
	}
	if got := testutil.ToFloat64(repairs.WithLabelValues(repairRule)) - repaired; got != 0 {
		t.Fatalf("%v repairs counted for a closed connection's rule", got)
	}
}

// TestTakeoverLeavesKubeDNSAtMostSomeConnections: past
// maxKubeDNSConnections, the rest are reset rather than keep new
// connections waiting for their rules.
func TestTakeoverLeavesKubeDNSAtMostSomeConnections(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("198.18.0.10:53")
	var clients []netip.AddrPort
	for port := range maxKubeDNSConnections + 5 {
		clients = append(clients, netip.AddrPortFrom(netip.MustParseAddr("198.19.0.3"), uint16(40000+port)))
	}
	n.conntrack.setClients(cfg.Listen[0], clients...)
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	if got := len(slices.DeleteFunc(slices.Clone(n.tables[IPv4].rules), func(r Rule) bool { return !r.isKubeDNSConnection() })); got != maxKubeDNSConnections {
		t.Fatalf("%d connections left to kube-dns, want %d", got, maxKubeDNSConnections)
	}
	// Every other packet crossing raw PREROUTING meets one jump, not a rule
	// per connection.
	prerouting := slices.DeleteFunc(slices.Clone(n.tables[IPv4].rules), func(r Rule) bool { return r.Table != "raw" || r.Chain != "PREROUTING" })
	if got := countRules(prerouting, Rule.isKubeDNSJump); got != 1 || countRules(prerouting, Rule.isKubeDNSConnection) != 0 {
		t.Fatalf("raw PREROUTING holds %d jumps and %d connection rules, want 1 and 0", got, countRules(prerouting, Rule.isKubeDNSConnection))
	}
}

// TestConnectionRulesOfAnEarlierVersionMoveToTheChain: an instance of the
// version that kept them in raw PREROUTING left such rules; a start adopts
// them into the chain, and removes the old ones once the new are in.
func TestConnectionRulesOfAnEarlierVersionMoveToTheChain(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	left := kubeDNSConnection{client: netip.MustParseAddrPort("198.19.0.3:41234"), service: cfg.Listen[1]}
	old := kubeDNSConnectionRule(left)
	old.Chain = "PREROUTING"
	n.tables[IPv4].rules = append([]Rule{old}, DesiredRules(cfg.Listen, cfg.HealthPort, true)[IPv4]...)
	n.conntrack.setClients(left.service, left.client)
	n.peers.others = 2
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	n.mgr.check(true)
	var where []string
	for _, r := range n.tables[IPv4].rules {
		if r.isKubeDNSConnection() {
			where = append(where, r.Chain)
		}
	}
	if !slices.Equal(where, []string{kubeDNSChain}) {
		t.Fatalf("the connection's rule is in %v, want in %s only", where, kubeDNSChain)
	}
}

// TestStartAdoptsTheConnectionsLeftToKubeDNS: a start beside a peer (a
// surge) keeps the rules the peer's takeover left for kube-dns's connections,
// rather than removing them as stale, and removes them once closed.
func TestStartAdoptsTheConnectionsLeftToKubeDNS(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	left := kubeDNSConnection{client: netip.MustParseAddrPort("198.19.0.3:41234"), service: cfg.Listen[1]}
	if c, ok := kubeDNSConnectionRule(left).kubeDNSConnection(); !ok || c != left {
		t.Fatalf("the rule reads back as %v %v, want %v", c, ok, left)
	}
	n.tables[IPv4].rules = append(DesiredRules(cfg.Listen, cfg.HealthPort, true)[IPv4], kubeDNSConnectionRule(left))
	n.conntrack.setClients(left.service, left.client)
	n.peers.others = 2
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	n.mgr.check(true)
	if !slices.ContainsFunc(n.tables[IPv4].rules, Rule.isKubeDNSConnection) {
		t.Fatal("a surge start removed the rule of a connection its peer left to kube-dns")
	}
	n.conntrack.setClients(left.service)
	n.mgr.check(true)
	if slices.ContainsFunc(n.tables[IPv4].rules, Rule.isKubeDNSConnection) {
		t.Fatal("the rule of a closed connection stayed")
	}
}

// TestAdoptionIsBounded: rules leaving more connections to kube-dns than a
// takeover writes (someone else's) are adopted up to the bound; the rest go.
func TestAdoptionIsBounded(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	n.tables[IPv4].rules = DesiredRules(cfg.Listen, cfg.HealthPort, true)[IPv4]
	var clients []netip.AddrPort
	for i := range maxKubeDNSConnections + 50 {
		c := kubeDNSConnection{client: netip.AddrPortFrom(netip.MustParseAddr("198.19.0.3"), uint16(20000+i)), service: cfg.Listen[1]}
		n.tables[IPv4].rules = append([]Rule{kubeDNSConnectionRule(c)}, n.tables[IPv4].rules...)
		clients = append(clients, c.client)
	}
	n.conntrack.setClients(cfg.Listen[1], clients...)
	n.peers.others = 2
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	n.mgr.check(true)
	if got := countRules(n.tables[IPv4].rules, Rule.isKubeDNSConnection); got != maxKubeDNSConnections {
		t.Fatalf("%d connection rules after the start, want the bound %d", got, maxKubeDNSConnections)
	}
}
