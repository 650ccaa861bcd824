package nodelocal

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

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
	if !n.links.links["nodelocaldns"] || n.links.on("169.254.20.10") != "nodelocaldns" {
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
	if !n.links.links["nodelocaldns"] || n.links.on("169.254.99.1") != "nodelocaldns" {
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
	if owner := n.links.on("198.18.0.10"); owner != "kube-ipvs0" {
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
	if !n.links.links["kube-ipvs0"] || n.links.on("198.18.0.10") != "kube-ipvs0" {
		t.Fatal("teardown touched kube-ipvs0")
	}
}

// TestManagerGivesBackAnAddressKubeProxyTakes: kube-proxy's IPVS mode may
// start after node-cache on a new node; when it puts the ClusterIP on
// kube-ipvs0 too, the next check (a netlink event's) removes it from our
// interface and its interception, and does not fight for it.
func TestManagerGivesBackAnAddressKubeProxyTakes(t *testing.T) {
	n := newFakeNode(t)
	if err := n.mgr.Apply(testConfig("169.254.20.10:53", "198.18.0.10:53")); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	if got := n.tables[IPv4].count(); got != 24 {
		t.Fatalf("rules %d before kube-proxy, want 24", got)
	}
	n.links.AddLink("kube-ipvs0")
	n.links.AddAddress("kube-ipvs0", netip.MustParseAddr("198.18.0.10"))
	n.mgr.check(false)
	if owner := n.links.on("198.18.0.10"); owner != "kube-ipvs0" {
		t.Fatalf("the ClusterIP is on %q, want kube-ipvs0 alone", owner)
	}
	if got := n.tables[IPv4].count(); got != 12 {
		t.Fatalf("rules %d after kube-ipvs0 took the ClusterIP, want the link-local IP's 12", got)
	}
	n.log.reset()
	n.mgr.check(true)
	for _, e := range n.log.all() {
		if matches(e, "add address") || matches(e, "delete address") || matches(e, "insert") {
			t.Fatalf("a later check fought for the address: %q", e)
		}
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
	intercepting := false
	for i, r := range n.tables[IPv4].inserted {
		if intercepting && !r.isInterception() {
			t.Fatalf("rule %d inserted out of order (interception must come last): %v", i, r)
		}
		intercepting = intercepting || r.isInterception()
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
	n.mgr.phase = phaseTakingOver // the Service IPs' TCP interception matches SYNs only
	want := n.mgr.rules.desired(n.mgr.ruleSpec())[IPv4]
	n.mgr.mu.Unlock()
	n.mgr.check(true)
	if ch := DiffRules(want, n.tables[IPv4].rules); len(ch.Add)+len(ch.Delete) != 0 {
		t.Fatalf("a check skipped a change of the desired rules: %+v", ch)
	}
}

// TestIPv6OnlyNode: with IPv6 listen addresses only, only ip6tables is used.
func TestIPv6OnlyNode(t *testing.T) {
	n := newFakeNode(t)
	if err := n.mgr.Apply(testConfig("[2001:2::10]:53")); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	if got := n.tables[IPv6].count(); got != 12 {
		t.Fatalf("%d IPv6 rules, want 12", got)
	}
	if n.tables[IPv4].lists+n.tables[IPv4].inserts != 0 {
		t.Fatalf("an IPv6-only node ran iptables (IPv4) %d times", n.tables[IPv4].lists+n.tables[IPv4].inserts)
	}
}
