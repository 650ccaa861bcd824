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
		otherRules       = 20 // the 24 of two addresses, but their 4 interceptions
		kubeDNSRuleCount = 2  // one connection, one jump
	)
	for _, tc := range []struct {
		name     string
		mode     ruleMode
		failOpen bool
		want     []string
	}{
		{"full", modeFull, true, []string{llTCP, llUDP, svcTCP, svcUDP}},
		{"full, unconditional", modeFull, false, []string{llTCP, llUDP, svcTCP, svcUDP}},
		{"SYN only", modeSYNOnly, true, []string{llTCP, llUDP, svcSYN, svcUDP}},
		{"SYN only needs the socket match", modeSYNOnly, false, []string{llTCP, llUDP, svcTCP, svcUDP}},
		{"handed back", modeHandedBack, true, []string{llTCP, llUDP}},
		{"handed back, unconditional", modeHandedBack, false, []string{llTCP, llUDP}},
		{"draining keeps the ClusterIP's TCP", modeDraining, true, []string{llTCP, llUDP, svcTCP}},
		{"draining needs the socket match", modeDraining, false, []string{llTCP, llUDP}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := ruleSpec{
				listen:     []netip.AddrPort{netip.MustParseAddrPort("169.254.20.10:53"), netip.MustParseAddrPort("198.18.0.10:53")},
				healthPort: 8080, failOpen: tc.failOpen, mode: tc.mode,
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
