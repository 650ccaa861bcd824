package nodelocal

import (
	"net/netip"
	"strings"
	"testing"
)

// upstreamListing is what `iptables -t raw -S` shows after upstream
// node-cache set up 169.254.20.10 (as both backends print it).
const upstreamRawListing = `-P PREROUTING ACCEPT
-P OUTPUT ACCEPT
-A PREROUTING -d 169.254.20.10/32 -p udp -m udp --dport 53 -m comment --comment "NodeLocal DNS Cache: skip conntrack" -j NOTRACK
-A PREROUTING -d 169.254.20.10/32 -p tcp -m tcp --dport 53 -m comment --comment "NodeLocal DNS Cache: skip conntrack" -j NOTRACK
-A PREROUTING -d 198.18.7.7/32 -p udp -m udp --dport 53 -j NOTRACK
`

func TestParseListing(t *testing.T) {
	rules, err := ParseListing("raw", upstreamRawListing)
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 3 {
		t.Fatalf("got %d rules, want 3: %v", len(rules), rules)
	}
	r := rules[0]
	if r.Table != "raw" || r.Chain != "PREROUTING" || !r.isOurs() {
		t.Fatalf("first rule parsed as %+v", r)
	}
	if got := r.Args[len(r.Args)-3]; got != commentSkipConntrack {
		t.Fatalf("quoted comment parsed as %q", got)
	}
	if rules[2].isOurs() {
		t.Fatalf("a rule without our comment was taken as ours: %v", rules[2])
	}
	if _, err := ParseListing("raw", `-A OUTPUT -m comment --comment "unterminated`); err == nil {
		t.Fatal("unterminated quote accepted")
	}
}

func TestDesiredRulesMatchUpstream(t *testing.T) {
	listen := []netip.AddrPort{netip.MustParseAddrPort("169.254.20.10:53"), netip.MustParseAddrPort("[2001:2::10]:53")}
	rules := DesiredRules(listen, 8080, false)
	if n := len(rules[IPv4]); n != 12 {
		t.Fatalf("IPv4: %d rules, want upstream's 12", n)
	}
	if n := len(rules[IPv6]); n != 12 {
		t.Fatalf("IPv6: %d rules, want 12", n)
	}
	// The rules upstream node-cache left are recognised as ours and not added again.
	listed, _ := ParseListing("raw", upstreamRawListing)
	changes := DiffRules(rules[IPv4], listed)
	for _, r := range changes.Add {
		if r.Chain == "PREROUTING" && r.Args[1] == "169.254.20.10/32" {
			t.Fatalf("upstream's rule was not adopted, would be added again: %v", r)
		}
	}
	if len(changes.Delete) != 0 {
		t.Fatalf("adopting upstream's rules deleted %v", changes.Delete)
	}
	if !strings.Contains(rules[IPv6][0].String(), "2001:2::10/128") {
		t.Fatalf("IPv6 rule %v", rules[IPv6][0])
	}
	if rules := DesiredRules(listen[:1], 0, false); len(rules[IPv4]) != 10 {
		t.Fatalf("health_port 0 should drop the 2 health rules, got %d", len(rules[IPv4]))
	}
}

func TestDiffRulesDeduplicatesAndRemovesStale(t *testing.T) {
	desired := DesiredRules([]netip.AddrPort{netip.MustParseAddrPort("169.254.20.10:53")}, 0, true)[IPv4]
	stale := DesiredRules([]netip.AddrPort{netip.MustParseAddrPort("169.254.99.99:53")}, 0, true)[IPv4][0]
	foreign := Rule{Table: "raw", Chain: "PREROUTING", Args: []string{"-d", "198.18.7.7/32", "-j", "NOTRACK"}}
	listed := append([]Rule{desired[0], desired[0], desired[0], stale, foreign}, desired[1:]...)
	ch := DiffRules(desired, listed)
	if len(ch.Add) != 0 {
		t.Fatalf("nothing is missing, yet adds %v", ch.Add)
	}
	if len(ch.Delete) != 3 || ch.Delete[0].key() != desired[0].key() || ch.Delete[2].key() != stale.key() {
		t.Fatalf("want 2 extra copies and the stale rule deleted, got %v", ch.Delete)
	}
	// Teardown: nothing desired, every rule of ours goes, others stay.
	ch = DiffRules(nil, listed)
	if len(ch.Delete) != len(listed)-1 {
		t.Fatalf("teardown deletes %d rules, want %d (all but the foreign one)", len(ch.Delete), len(listed)-1)
	}
}

func TestDetectBackend(t *testing.T) {
	type listing map[string]string // "backend/table" -> output; missing means the binary fails
	tests := []struct {
		name string
		out  listing
		want Backend
	}{
		{"kubelet hint in legacy", listing{"legacy/mangle": "\n-N KUBE-IPTABLES-HINT\n", "nft/mangle": "\n-P PREROUTING ACCEPT\n"}, BackendLegacy},
		{"kubelet hint in nft", listing{"legacy/mangle": "\n-N KUBE-KUBELET-CANARY\n", "nft/mangle": "\n-N KUBE-IPTABLES-HINT\n"}, BackendNFT},
		{"more nat rules in legacy", listing{"legacy/nat": "\n-A PREROUTING -j X\n-A OUTPUT -j X\n", "nft/nat": "\n-A OUTPUT -j X\n"}, BackendLegacy},
		{"nothing anywhere (kube-proxy nftables mode)", listing{"legacy/nat": "\n", "nft/nat": "\n"}, BackendNFT},
		{"only legacy works", listing{"legacy/nat": "\n"}, BackendLegacy},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DetectBackend(func(b Backend, table string) (string, error) {
				out, ok := tc.out[string(b)+"/"+table]
				if !ok {
					return "", errNotFound
				}
				return out, nil
			})
			if err != nil || got != tc.want {
				t.Fatalf("got %s (%v), want %s", got, err, tc.want)
			}
		})
	}
}

func TestDetectBackendRefusesToGuess(t *testing.T) {
	_, err := DetectBackend(func(b Backend, table string) (string, error) {
		if b == BackendLegacy {
			return "", errPermission
		}
		return "\n", nil
	})
	if err == nil || !strings.Contains(err.Error(), "missing NET_RAW capability") {
		t.Fatalf("unreadable legacy rules: %v, want an error naming NET_RAW", err)
	}
}

func TestSplitArgsRoundTrip(t *testing.T) {
	r := rule("raw", "OUTPUT", "-s", netip.MustParseAddr("169.254.20.10"), "tcp", "--sport", 8080, "NOTRACK", commentSkipConntrack)
	line := strings.TrimPrefix(r.String(), "-t raw ")
	got, err := ParseListing("raw", line)
	if err != nil || len(got) != 1 || got[0].key() != r.key() {
		t.Fatalf("%q parsed back as %v (%v)", line, got, err)
	}
}

func FuzzParseListing(f *testing.F) {
	f.Add(upstreamRawListing)
	f.Add(`-A X -m comment --comment "a \"b\" c" -j Y`)
	f.Add("-A PREROUTING " + kubeDNSConnectionRule(kubeDNSConnection{client: netip.MustParseAddrPort("198.19.0.3:41234"), service: netip.MustParseAddrPort("198.18.0.10:53")}).spec())
	f.Fuzz(func(t *testing.T, listing string) {
		rules, err := ParseListing("raw", listing)
		if err != nil {
			return
		}
		for _, r := range rules {
			if r.Chain == "" && len(r.Args) > 0 {
				t.Fatalf("rule without chain from %q", listing)
			}
			DiffRules(rules, rules)
			if c, ok := r.kubeDNSConnection(); ok && (!c.client.IsValid() || !c.service.IsValid()) {
				t.Fatalf("connection %v read from %q", c, listing)
			}
		}
	})
}
