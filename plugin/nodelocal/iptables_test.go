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

// TestHelperRulesInBulk is the child: rules put in together come first in
// their chain and list exactly as built (so checks find them), above a rule
// already there, and go together.
func TestHelperRulesInBulk(t *testing.T) {
	if os.Getenv("NODELOCAL_HELPER_BULK") == "" {
		t.Skip("helper process only")
	}
	service := netip.MustParseAddrPort("198.18.0.10:53")
	interception := DesiredRules([]netip.AddrPort{service}, 0, true)[IPv4][0]
	var bulk []Rule
	for _, port := range []uint16{40001, 40002, 40003} {
		bulk = append(bulk, kubeDNSConnectionRule(kubeDNSConnection{client: netip.AddrPortFrom(netip.MustParseAddr("198.19.0.3"), port), service: service}))
	}
	for _, b := range []Backend{BackendLegacy, BackendNFT} {
		ipt, err := newIPTablesCmd(b, IPv4)
		if err != nil {
			t.Fatal(err)
		}
		listed := func() []string {
			out, err := ipt.ListChain("raw", "PREROUTING")
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
		if err := ipt.InsertAll(bulk); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		got := listed()
		if len(got) != 4 || got[3] != interception.key() {
			t.Fatalf("%s: raw PREROUTING %q, want the 3 rules, then the interception", b, got)
		}
		for _, r := range bulk {
			if !slices.Contains(got[:3], r.key()) {
				t.Fatalf("%s: %s not listed as built: %q", b, r, got)
			}
		}
		if err := ipt.DeleteAll(bulk); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if got := listed(); len(got) != 1 {
			t.Fatalf("%s: after DeleteAll, raw PREROUTING %q, want the interception only", b, got)
		}
		if err := ipt.Delete(interception); err != nil {
			t.Fatal(err)
		}
	}
}
