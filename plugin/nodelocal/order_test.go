package nodelocal

import (
	"errors"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The protocol's order, step by step, on the event log the fakes share: each
// test fails when two of the steps it names are swapped (the note of #30 says
// which swaps were tried).

// matches: the event is want, or want followed by its arguments.
func matches(event, want string) bool { return event == want || strings.HasPrefix(event, want+" ") }

// inOrder fails unless want occurs in events as a subsequence.
func inOrder(t *testing.T, events []string, want ...string) {
	t.Helper()
	i := 0
	for _, e := range events {
		if i < len(want) && matches(e, want[i]) {
			i++
		}
	}
	if i < len(want) {
		t.Fatalf("want %q in this order, %q not found after %q in:\n%s", want, want[i], want[:i], strings.Join(events, "\n"))
	}
}

// firstInOrder fails unless the first occurrences of want are in this order.
func firstInOrder(t *testing.T, events []string, want ...string) {
	t.Helper()
	last := -1
	for _, w := range want {
		at := -1
		for i, e := range events {
			if matches(e, w) {
				at = i
				break
			}
		}
		if at < 0 || at < last {
			t.Fatalf("want the first %q in this order, %q is at %d after %d in:\n%s", want, w, at, last, strings.Join(events, "\n"))
		}
		last = at
	}
}

var (
	orderLinkLocal = netip.MustParseAddrPort("169.254.20.10:53")
	orderService   = netip.MustParseAddrPort("198.18.0.10:53")
	orderUpstream  = netip.MustParseAddrPort("198.18.0.20:53")
	orderEndpoint  = netip.MustParseAddrPort("198.19.0.5:53")
	orderClient    = netip.MustParseAddrPort("198.19.1.7:40000")
)

// orderConfig listens on the link-local IP and the ClusterIP, and forwards
// to a Service upstream.
func orderConfig() *Config {
	cfg := testConfig(orderLinkLocal.String(), orderService.String())
	cfg.Upstreams = []netip.AddrPort{orderUpstream}
	return cfg
}

// leaveEarlierInstancesRules puts in what a SIGKILLed instance left: its
// rules, an upstream pin, and a connection it left to kube-dns.
func (n *fakeNode) leaveEarlierInstancesRules(cfg *Config) {
	t := n.tables[IPv4]
	t.rules = append(t.rules, DesiredRules(cfg.Listen, cfg.HealthPort, true)[IPv4]...)
	t.rules = append(t.rules, pinRules(orderUpstream, []netip.AddrPort{orderEndpoint})...)
	t.chains = map[string]bool{"raw " + kubeDNSChain: true}
	t.rules = append(t.rules, kubeDNSConnectionRule(kubeDNSConnection{client: orderClient, service: orderService}), kubeDNSJumpRule(orderService))
}

// TestOrderOfTheFirstStart: the instance lock first; then, before the
// listeners open, the pins an earlier instance left go, the connections it
// left to kube-dns are adopted, and the ClusterIP's TCP interception goes.
func TestOrderOfTheFirstStart(t *testing.T) {
	n := newFakeNode(t)
	cfg := orderConfig()
	n.leaveEarlierInstancesRules(cfg)
	n.conntrack.setEndpoints(orderUpstream, orderEndpoint)
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.mgr.ListenersUp()
	firstInOrder(t, n.log.all(),
		"lock", "add link", "add address 169.254.20.10",
		"delete pin",                                              // the sweep
		"list raw table",                                          // the adoption (the whole table: earlier versions put the rules elsewhere)
		"list raw PREROUTING", "delete intercept tcp 198.18.0.10", // TCP withheld
		"publish", "unlock", "insert")
}

// TestOrderOfTheTakeover: once the listeners are up, the TCP listeners of
// the addresses kube-dns served (the ClusterIP, and the link-local IP that
// failed open to it) pause before the SYN-only interception goes in; at the end of
// the drain, the connections kube-dns serves are listed and left to it, the
// full interception goes in, and only then the listeners accept again.
func TestOrderOfTheTakeover(t *testing.T) {
	n := newFakeNode(t)
	n.conntrack.setClients(orderService, orderClient)
	if err := n.mgr.Apply(orderConfig()); err != nil {
		t.Fatal(err)
	}
	n.mgr.ListenersUp()
	firstInOrder(t, n.log.all(), "publish", "unlock", "pause [169.254.20.10:53 198.18.0.10:53]", "insert intercept-syn tcp 198.18.0.10")
	n.log.reset()
	n.mgr.finishTakeover()
	firstInOrder(t, n.log.all(), "conntrack clients 198.18.0.10:53", "new chain", "insert conn", "insert jump",
		"insert intercept tcp 198.18.0.10", "delete intercept-syn tcp 198.18.0.10", "resume [169.254.20.10:53 198.18.0.10:53]")
}

// TestOrderOfTheHandOff: readiness drops before anything else; then the
// upstreams are pinned, the stop waits for a replacement, then for an
// instance that is starting, and only then decides: here, to hand the
// ClusterIP back to kube-proxy.
func TestOrderOfTheHandOff(t *testing.T) {
	n := newFakeNode(t)
	n.serveWithUpstream(t, orderUpstream, orderEndpoint)
	n.mgr.waits.replacementWait = 100 * time.Millisecond
	var readyAtPin atomic.Bool
	readyAtPin.Store(true)
	n.log.onEvent = func(e string) {
		if matches(e, "append pin") {
			readyAtPin.Store(n.mgr.Ready())
		}
	}
	n.log.reset()
	n.mgr.HandOff()
	if readyAtPin.Load() {
		t.Fatal("still ready as the upstreams were pinned: readiness must drop as the stop begins")
	}
	inOrder(t, n.log.all(), "append pin", "count peers", "lock", "unlock", "count peers", "stop [198.18.0.10:53]")
}

// TestOrderOfTheHandBack: the ClusterIP's TCP listeners are shut before its
// interception goes, so no connection opens here that the handoff would
// leave to kube-dns mid-stream.
func TestOrderOfTheHandBack(t *testing.T) {
	n := newFakeNode(t)
	if err := n.mgr.Apply(orderConfig()); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	n.log.reset()
	n.mgr.HandOff()
	events := n.log.all()
	firstInOrder(t, events, "stop [198.18.0.10:53]", "delete intercept udp 198.18.0.10")
	for _, e := range events {
		if matches(e, "delete intercept tcp") || matches(e, "delete intercept udp 169.254.20.10") {
			t.Fatalf("the handoff removed %q: draining keeps the ClusterIP's TCP, the link-local IP keeps all", e)
		}
	}
}

// TestOrderOfLeavingToASuccessor: an instance that started after the hand
// back gets the flows still landing here (the TCP listeners that still
// accept, then UDP), whose answers go out before the exit; the pins go last.
func TestOrderOfLeavingToASuccessor(t *testing.T) {
	n := newFakeNode(t)
	n.serveWithUpstream(t, orderUpstream, orderEndpoint)
	n.mgr.HandOff()
	n.peers.mu.Lock()
	n.peers.others = 1
	n.peers.mu.Unlock()
	n.log.reset()
	n.mgr.Shutdown()
	inOrder(t, n.log.all(), "stop [169.254.20.10:53]", "leave udp [169.254.20.10:53 198.18.0.10:53]", "wait answered", "lock", "delete pin")
}

// TestOrderOfTheTeardown: under the instance lock, once no peer remains, the
// connections the draining interception holds close first, then the rules
// go, then the interface; the pins go last.
func TestOrderOfTheTeardown(t *testing.T) {
	n := newFakeNode(t)
	n.serveWithUpstream(t, orderUpstream, orderEndpoint)
	n.mgr.HandOff()
	n.log.reset()
	n.mgr.Shutdown()
	inOrder(t, n.log.all(), "lock", "count peers", "close answered [198.18.0.10:53]", "delete intercept tcp 198.18.0.10",
		"delete address", "delete link", "delete pin")
}

// TestOrderOfAReload: the old servers' listeners pause before their
// connections are held; at the end, the listeners accept again before the
// held connections are carried over (or released, when the reload failed).
func TestOrderOfAReload(t *testing.T) {
	n := newFakeNode(t)
	if err := n.mgr.Apply(testConfig(orderLinkLocal.String())); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	n.log.reset()
	n.mgr.PauseForReload()
	n.mgr.OldServersStopped()
	n.mgr.PauseForReload()
	n.mgr.ReloadFailed()
	inOrder(t, n.log.all(), "pause", "hold", "resume", "carry over", "pause", "hold", "resume", "release")
}

// TestOrderOfACheck: the interface first, then the connections left to
// kube-dns that closed, the rules, the sweep of earlier pins and this
// instance's, the foreign sockets, and readiness's probe last.
func TestOrderOfACheck(t *testing.T) {
	n := newFakeNode(t)
	cfg := orderConfig()
	n.leaveEarlierInstancesRules(cfg)
	_ = n.tables[IPv4].Append(Rule{Table: "nat", Chain: "OUTPUT", Args: []string{"-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"}})
	n.peers.others = 1 // a surge: the earlier pins stay while a peer runs, nothing is taken over
	n.conntrack.setClients(orderService, orderClient)
	n.conntrack.setEndpoints(orderUpstream, orderEndpoint)
	n.probe = func(netip.AddrPort) error { return errors.New("not answering yet") }
	n.mgr.foreign.interval = 0
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.mgr.ListenersUp()
	// The peer leaves, kube-dns's connection closes, the address goes.
	n.peers.mu.Lock()
	n.peers.others = 0
	n.peers.mu.Unlock()
	n.conntrack.setClients(orderService)
	_ = n.links.DeleteAddress("nodelocaldns", orderLinkLocal.Addr())
	n.log.reset()
	n.mgr.check(true)
	firstInOrder(t, n.log.all(), "add address 169.254.20.10", "conntrack clients 198.18.0.10:53", "list raw table", "delete conn",
		"count peers", "delete pin", "conntrack endpoints", "append pin", "count foreign sockets", "probe")
}
