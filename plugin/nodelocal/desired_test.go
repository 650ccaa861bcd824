package nodelocal

import (
	"net/netip"
	"slices"
	"testing"
)

// TestDesiredRulesPerMode: each mode's interception of the link-local IP and
// the ClusterIP, with and without the socket match; the other rules (the
// replies' NOTRACK, the filter ACCEPTs, the health port's) and those leaving
// kube-dns its connections stay in every mode.
func TestDesiredRulesPerMode(t *testing.T) {
	const (
		llTCP, llUDP     = "intercept tcp 169.254.20.10", "intercept udp 169.254.20.10"
		svcTCP, svcUDP   = "intercept tcp 198.18.0.10", "intercept udp 198.18.0.10"
		svcSYN           = "intercept-syn tcp 198.18.0.10"
		llSYN            = "intercept-syn tcp 169.254.20.10"
		otherRules       = 20 // the 24 of two addresses, but their 4 interceptions
		kubeDNSRuleCount = 2  // one connection, one jump
	)
	linkLocal, service := netip.MustParseAddrPort("169.254.20.10:53"), netip.MustParseAddrPort("198.18.0.10:53")
	for _, tc := range []struct {
		name     string
		mode     ruleMode
		failOpen bool
		takeover []netip.AddrPort // the addresses a start takes over from kube-dns
		want     []string
	}{
		{"full", modeFull, true, nil, []string{llTCP, llUDP, svcTCP, svcUDP}},
		{"full, unconditional", modeFull, false, nil, []string{llTCP, llUDP, svcTCP, svcUDP}},
		{"SYN only", modeSYNOnly, true, []netip.AddrPort{service}, []string{llTCP, llUDP, svcSYN, svcUDP}},
		{"SYN only, the link-local IP too", modeSYNOnly, true, []netip.AddrPort{linkLocal, service}, []string{llSYN, llUDP, svcSYN, svcUDP}},
		{"SYN only needs the socket match", modeSYNOnly, false, []netip.AddrPort{service}, []string{llTCP, llUDP, svcTCP, svcUDP}},
		{"handed back", modeHandedBack, true, nil, []string{llTCP, llUDP}},
		{"handed back, unconditional", modeHandedBack, false, nil, []string{llTCP, llUDP}},
		{"draining keeps the ClusterIP's TCP", modeDraining, true, nil, []string{llTCP, llUDP, svcTCP}},
		{"draining needs the socket match", modeDraining, false, nil, []string{llTCP, llUDP}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := ruleSpec{
				listen:     []netip.AddrPort{linkLocal, service},
				local:      []netip.Addr{linkLocal.Addr()},
				healthPort: 8080, failOpen: tc.failOpen, mode: tc.mode, takeover: tc.takeover,
				kubeDNS: []kubeDNSConnection{{client: netip.MustParseAddrPort("198.19.1.7:40000"), service: netip.MustParseAddrPort("198.18.0.10:53")}},
			}
			rules := spec.rules()[IPv4]
			var intercepting []string
			others, kubeDNS := 0, 0
			for _, r := range rules {
				switch {
				case r.isKubeDNSConnection() || r.isKubeDNSJump():
					kubeDNS++
				case r.isInterception():
					intercepting = append(intercepting, ruleEvent(r))
					if socket := slices.Contains(r.Args, "socket"); socket != tc.failOpen {
						t.Errorf("socket match %v in %s, want %v", socket, r, tc.failOpen)
					}
				default:
					others++
				}
			}
			slices.Sort(intercepting)
			want := slices.Sorted(slices.Values(tc.want))
			if !slices.Equal(intercepting, want) {
				t.Errorf("interception %q, want %q", intercepting, want)
			}
			if others != otherRules || kubeDNS != kubeDNSRuleCount {
				t.Errorf("%d other rules and %d for kube-dns's connection, want %d and %d", others, kubeDNS, otherRules, kubeDNSRuleCount)
			}
		})
	}
}

// TestHandBackKeepsTheCachesOwnIPv6: an IPv6 cache's own address is a unique
// local one, as the Service CIDR can be; given with `local`, a stop without
// successor keeps intercepting it and hands the ClusterIP alone back.
func TestHandBackKeepsTheCachesOwnIPv6(t *testing.T) {
	cfg := testConfig("[fd00::10]:53", "[fd00:10:96::a]:53")
	cfg.Local = []netip.Addr{netip.MustParseAddr("fd00::10")}
	own := cfg.Listen[0]
	spec := ruleSpec{listen: cfg.Listen, local: cfg.localIPs(), failOpen: true, mode: modeHandedBack}
	var kept []string
	for _, r := range spec.rules()[IPv6] {
		if r.isInterception() {
			if !r.isTo(own) {
				t.Errorf("handed back, the ClusterIP is still intercepted: %v", r)
			}
			kept = append(kept, ruleEvent(r))
		}
	}
	if len(kept) != 2 {
		t.Errorf("interception %q, want the cache's own address's UDP and TCP", kept)
	}
	if got := cfg.services(cfg.Listen); !slices.Equal(got, cfg.Listen[1:]) {
		t.Errorf("services %v, want the ClusterIP alone", got)
	}
	if got := cfg.fromKubeDNS(cfg.Listen); !slices.Equal(got, cfg.Listen) {
		t.Errorf("from kube-dns %v, want both: the ClusterIP is the own address's fallback", got)
	}
}
