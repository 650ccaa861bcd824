package nodelocal

import (
	"net/netip"
	"os"
	"slices"
	"testing"
)

// TestRulesInBulk runs iptables-restore of each backend, in a child process
// with a network namespace of its own.
func TestRulesInBulk(t *testing.T) {
	inNewNetns(t, "TestHelperRulesInBulk", "NODELOCAL_HELPER_BULK")
}

// TestHelperRulesInBulk is the child: the rules of connections left to
// kube-dns go in together into their chain and list exactly as built (so
// checks find them); the jump to the chain goes above the interception; the
// rules go together, and the chain with them.
func TestHelperRulesInBulk(t *testing.T) {
	if os.Getenv("NODELOCAL_HELPER_BULK") == "" {
		t.Skip("helper process only")
	}
	service := netip.MustParseAddrPort("198.18.0.10:53")
	interception := DesiredRules([]netip.AddrPort{service}, 0, true)[IPv4][0]
	jump := kubeDNSJumpRule(service)
	var bulk []Rule
	for _, port := range []uint16{40001, 40002, 40003} {
		bulk = append(bulk, kubeDNSConnectionRule(kubeDNSConnection{client: netip.AddrPortFrom(netip.MustParseAddr("198.19.0.3"), port), service: service}))
	}
	for _, b := range []Backend{BackendLegacy, BackendNFT} {
		ipt, err := newIPTablesCmd(b, IPv4)
		if err != nil {
			t.Fatal(err)
		}
		listed := func(chain string) []string {
			out, err := ipt.ListChain("raw", chain)
			if err != nil {
				t.Fatal(err)
			}
			rules, err := ParseListing("raw", out)
			if err != nil {
				t.Fatal(err)
			}
			var keys []string
			for _, r := range rules {
				keys = append(keys, r.key())
			}
			return keys
		}
		if err := ipt.Insert(interception, 1); err != nil {
			t.Fatal(err)
		}
		if err := ipt.NewChain("raw", kubeDNSChain); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if err := ipt.InsertAll(bulk); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if err := ipt.Insert(jump, 1); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if got := listed("PREROUTING"); !slices.Equal(got, []string{jump.key(), interception.key()}) {
			t.Fatalf("%s: raw PREROUTING %q, want the jump, then the interception", b, got)
		}
		got := listed(kubeDNSChain)
		for _, r := range bulk {
			if !slices.Contains(got, r.key()) {
				t.Fatalf("%s: %s not listed as built: %q", b, r, got)
			}
		}
		if err := ipt.DeleteAll(bulk); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if got := listed(kubeDNSChain); len(got) != 0 {
			t.Fatalf("%s: after DeleteAll, %s %q, want it empty", b, kubeDNSChain, got)
		}
		if err := ipt.Delete(jump); err != nil {
			t.Fatal(err)
		}
		if err := ipt.DeleteChain("raw", kubeDNSChain); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if out, _ := ipt.List("raw"); hasChain(out, kubeDNSChain) {
			t.Fatalf("%s: chain left:\n%s", b, out)
		}
		if err := ipt.Delete(interception); err != nil {
			t.Fatal(err)
		}
	}
}
