package nodelocal

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPinRulesSpreadLikeKubeProxy(t *testing.T) {
	up := netip.MustParseAddrPort("198.18.0.20:53")
	eps := []netip.AddrPort{netip.MustParseAddrPort("198.19.0.5:53"), netip.MustParseAddrPort("198.19.0.6:53"), netip.MustParseAddrPort("198.19.0.7:53")}
	var got []string
	for _, r := range pinRules(up, eps) {
		got = append(got, r.String())
	}
	want := []string{
		`-t nat -A OUTPUT -d 198.18.0.20/32 -p udp -m udp --dport 53 -m statistic --mode random --probability 0.33333333333 -m comment --comment "NodeLocal DNS Cache: reach the upstream if its Service goes" -j DNAT --to-destination 198.19.0.5:53`,
		`-t nat -A OUTPUT -d 198.18.0.20/32 -p udp -m udp --dport 53 -m statistic --mode random --probability 0.50000000000 -m comment --comment "NodeLocal DNS Cache: reach the upstream if its Service goes" -j DNAT --to-destination 198.19.0.6:53`,
		`-t nat -A OUTPUT -d 198.18.0.20/32 -p udp -m udp --dport 53 -m comment --comment "NodeLocal DNS Cache: reach the upstream if its Service goes" -j DNAT --to-destination 198.19.0.7:53`,
	}
	if !slices.Equal(got[:3], want) || len(got) != 6 || !strings.Contains(got[5], "-p tcp -m tcp --dport 53 -m comment") {
		t.Fatalf("pin rules:\n%s", strings.Join(got, "\n"))
	}
	v6 := pinRules(netip.MustParseAddrPort("[fd00::20]:53"), []netip.AddrPort{netip.MustParseAddrPort("[fd00:1::5]:53")})
	if last := v6[0].Args[len(v6[0].Args)-1]; last != "[fd00:1::5]:53" {
		t.Fatalf("IPv6 DNAT target %q, want [fd00:1::5]:53", last)
	}
}

func TestStopPinsServiceUpstreams(t *testing.T) {
	upstream := netip.MustParseAddrPort("198.18.0.20:53")
	external := netip.MustParseAddrPort("198.18.255.1:53") // forwarded to, not translated
	endpoints := []netip.AddrPort{netip.MustParseAddrPort("198.19.0.5:53"), netip.MustParseAddrPort("198.19.0.6:53")}
	for _, tc := range []struct {
		name   string
		others int // another instance's sockets at the stop
		want   int // pins during the stop
	}{
		{"alone: an uninstall, a deleted pod", 0, 4},
		{"beside a successor: a surge", 4, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newFakeNode(t)
			n.conntrack.setEndpoints(upstream, endpoints...)
			cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
			cfg.Upstreams = []netip.AddrPort{upstream, external}
			if err := n.mgr.Apply(cfg); err != nil {
				t.Fatal(err)
			}
			n.listenersUp()
			n.peers.others = tc.others
			n.mgr.HandOff()
			if got := n.pins(); len(got) != tc.want {
				t.Fatalf("%d pins during the stop, want %d: %v", len(got), tc.want, got)
			}
			for _, r := range n.pins() {
				if !strings.Contains(r.String(), "-d 198.18.0.20/32") {
					t.Fatalf("pinned an upstream that is not a Service: %s", r)
				}
			}
			n.mgr.Shutdown()
			if got := n.pins(); len(got) != 0 {
				t.Fatalf("pins left after the exit: %v", got)
			}
		})
	}
}

func TestPinsStayAfterKubeProxyIPTablesRules(t *testing.T) {
	upstream := netip.MustParseAddrPort("198.18.0.20:53")
	first, moved := netip.MustParseAddrPort("198.19.0.5:53"), netip.MustParseAddrPort("198.19.0.9:53")
	kubeProxyJump := Rule{Table: "nat", Chain: "OUTPUT", Args: []string{"-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"}}
	for _, tc := range []struct {
		name     string
		ipvs     bool // the upstream's IP is on kube-ipvs0
		wantPins int  // while serving
	}{
		{"iptables mode", false, 2},
		{"IPVS mode", true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newFakeNode(t)
			_ = n.tables[IPv4].Append(kubeProxyJump)
			if tc.ipvs {
				n.links.links["kube-ipvs0"] = true
				_ = n.links.AddAddress("kube-ipvs0", upstream.Addr())
			}
			n.serveWithUpstream(t, upstream, first)
			if got := n.pins(); len(got) != tc.wantPins {
				t.Fatalf("%d pins while serving, want %d: %v", len(got), tc.wantPins, got)
			}
			nat, _ := n.tables[IPv4].ListChain("nat", "OUTPUT")
			if !strings.HasPrefix(nat, "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n") {
				t.Fatalf("kube-proxy's jump is no longer first:\n%s", nat)
			}
			if tc.wantPins == 0 {
				return
			}
			n.conntrack.setEndpoints(upstream, moved) // kube-dns's pod moved
			n.mgr.check(true)
			if got := n.pins(); len(got) != 2 || !strings.HasSuffix(got[0].String(), moved.String()) {
				t.Fatalf("pins after the endpoint moved: %v", got)
			}
			n.mgr.HandOff()
			if got := n.pins(); len(got) != 2 {
				t.Fatalf("%d pins after the stop began, want the same 2", len(got))
			}
			n.mgr.Shutdown()
			if got := n.pins(); len(got) != 0 {
				t.Fatalf("pins left after the exit: %v", got)
			}
		})
	}
}

func TestStartSweepsPinsAKilledInstanceLeft(t *testing.T) {
	left := pinRules(netip.MustParseAddrPort("198.18.0.20:53"), []netip.AddrPort{netip.MustParseAddrPort("198.19.0.5:53")})
	for _, tc := range []struct {
		name   string
		others int // a stopping instance still runs beside the start
	}{
		{"alone", 0},
		{"beside a stopping instance, until it is gone", 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newFakeNode(t)
			for _, r := range left {
				_ = n.tables[IPv4].Append(r)
			}
			n.peers.others = tc.others
			if err := n.mgr.Apply(testConfig("169.254.20.10:53", "198.18.0.10:53")); err != nil {
				t.Fatal(err)
			}
			n.listenersUp()
			n.mgr.check(true)
			if tc.others > 0 {
				if got := len(n.pins()); got != len(left) {
					t.Fatalf("%d pins left while the instance that set them runs, want %d", got, len(left))
				}
				n.peers.others = 0
				n.mgr.check(true)
			}
			if got := n.pins(); len(got) != 0 {
				t.Fatalf("pins a dead instance left are still there: %v", got)
			}
		})
	}
}

// pins lists the fake node's upstream pins.
func (n *fakeNode) pins() []Rule {
	n.tables[IPv4].mu.Lock()
	defer n.tables[IPv4].mu.Unlock()
	return slices.DeleteFunc(slices.Clone(n.tables[IPv4].rules), func(r Rule) bool { return !r.isUpstreamPin() })
}

func TestReloadWithoutAnUpstreamUnpinsIt(t *testing.T) {
	upstream := netip.MustParseAddrPort("198.18.0.20:53")
	n := newFakeNode(t)
	_ = n.tables[IPv4].Append(Rule{Table: "nat", Chain: "OUTPUT", Args: []string{"-j", "KUBE-SERVICES"}})
	n.serveWithUpstream(t, upstream, netip.MustParseAddrPort("198.19.0.5:53"))
	if got := len(n.pins()); got != 2 {
		t.Fatalf("%d pins while serving, want 2", got)
	}
	if err := n.mgr.Apply(testConfig("169.254.20.10:53", "198.18.0.10:53")); err != nil { // the reload
		t.Fatal(err)
	}
	n.mgr.check(true)
	if got := n.pins(); len(got) != 0 {
		t.Fatalf("pins of an upstream the Corefile no longer forwards to: %v", got)
	}
}

// TestPinModeLooksAgainOnlyWhenTheRulesetChanged: where the pins cannot stay
// while serving, nat OUTPUT is listed again a minute later, and with the nft
// backend only if the ruleset changed meanwhile (kube-proxy may have started).
func TestPinModeLooksAgainOnlyWhenTheRulesetChanged(t *testing.T) {
	upstream := netip.MustParseAddrPort("198.18.0.20:53")
	n := newFakeNode(t)
	gen := uint32(7)
	n.nftGen = &gen
	n.serveWithUpstream(t, upstream, netip.MustParseAddrPort("198.19.0.5:53")) // no kube-proxy jump yet: no pin
	_ = n.tables[IPv4].Append(Rule{Table: "nat", Chain: "OUTPUT", Args: []string{"-j", "KUBE-SERVICES"}})
	aMinuteLater := func() {
		n.mgr.mu.Lock()
		n.mgr.pins.modeCheckedAt[IPv4] = time.Now().Add(-pinModeRecheck)
		n.mgr.mu.Unlock()
		n.mgr.check(true)
	}
	aMinuteLater()
	if got := len(n.pins()); got != 0 {
		t.Fatalf("%d pins with the ruleset generation unchanged, want 0 (nothing listed)", got)
	}
	gen++ // kube-proxy's rules went in
	aMinuteLater()
	if got := len(n.pins()); got != 2 {
		t.Fatalf("%d pins once the ruleset changed, want 2", got)
	}
}

// serveWithUpstream starts the fake node's instance, forwarding to upstream,
// whose flows conntrack shows reaching endpoint, and runs a check.
func (n *fakeNode) serveWithUpstream(t *testing.T, upstream, endpoint netip.AddrPort) {
	t.Helper()
	n.conntrack.setEndpoints(upstream, endpoint)
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	cfg.Upstreams = []netip.AddrPort{upstream}
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	n.mgr.check(true)
}
