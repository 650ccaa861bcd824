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
