package nodelocal

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inScratchNetns runs fn in a network namespace of its own, named for
// `ip netns exec`, removed afterwards.
func inScratchNetns(t *testing.T, fn func(name string)) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (a network namespace and nf_tables), and CI=true forbids skipping")
		}
		t.Skip("needs root: a network namespace and nf_tables")
	}
	name := fmt.Sprintf("nltest-nft-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", name).Run()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	defer netns.Set(orig)
	fn(name)
}

// nftListing is a table's rules as the nft command prints them, by chain.
func nftListing(t *testing.T, netnsName, table string) map[string][]string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", netnsName, "nft", "list", "table", "inet", table).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table inet %s: %v: %s", table, err, out)
	}
	rules := map[string][]string{}
	chain := ""
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "chain "):
			chain = strings.Fields(line)[1]
		case line == "" || line == "}" || strings.HasPrefix(line, "type ") || strings.HasPrefix(line, "table ") || strings.HasPrefix(line, "flags "):
		default:
			rules[chain] = append(rules[chain], line)
		}
	}
	return rules
}

// TestNFTablesAsNFTPrintsThem: every kind of rule we write reads back, in
// the nft command's own words, as the text it carries; the owned table
// vanishes with the socket that made it, the other stays until deleted.
func TestNFTablesAsNFTPrintsThem(t *testing.T) {
	inScratchNetns(t, func(netnsName string) {
		spec := ruleSpec{
			listen: []netip.AddrPort{netip.MustParseAddrPort("169.254.20.10:53"), netip.MustParseAddrPort("198.18.0.10:53"),
				netip.MustParseAddrPort("[fe80::a]:53")},
			mode:     modeSYNOnly,
			takeover: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.10:53")},
			kubeDNS:  []kubeDNSConnection{{client: netip.MustParseAddrPort("198.19.1.7:40000"), service: netip.MustParseAddrPort("198.18.0.10:53")}},
			local:    []netip.Addr{netip.MustParseAddr("169.254.20.10"), netip.MustParseAddr("fe80::a")},
			fallback: map[Family]netip.Addr{IPv4: netip.MustParseAddr("198.18.0.11"), IPv6: netip.MustParseAddr("2001:2::b")},
		}
		nft := newNFTNetlink()
		tables := []nftTable{hostTable("nodelocaldns-host-test", spec), fallbackTable(spec.listen, spec.local, spec.fallback)}
		for _, table := range tables {
			if err := nft.Replace(table); err != nil {
				t.Fatal(err)
			}
			if err := nft.Replace(table); err != nil { // in place: replaced whole
				t.Fatal(err)
			}
			listed, err := nft.Rules(table.name)
			if err != nil || !sameRules(table, listed) {
				t.Fatalf("table %s read back as %v (%v), want:\n%s", table.name, listed, err, nftText([]nftTable{table}))
			}
			printed := nftListing(t, netnsName, table.name)
			for _, c := range table.chains {
				var want []string
				for _, r := range c.rules {
					want = append(want, r.text)
				}
				if !slices.Equal(printed[c.name], want) {
					t.Errorf("chain %s of %s as nft prints it:\n%s\nwant the rules' texts:\n%s", c.name, table.name,
						strings.Join(printed[c.name], "\n"), strings.Join(want, "\n"))
				}
			}
		}
		if err := nft.Delete(fallbackTableName); err != nil {
			t.Fatal(err)
		}
		if err := nft.Delete(fallbackTableName); err != nil {
			t.Fatalf("deleting a missing table: %v", err)
		}
		if listed, err := nft.Rules(fallbackTableName); err != nil || len(listed) != 0 {
			t.Fatalf("a deleted table lists %v (%v)", listed, err)
		}
		unix.Close(nft.fd) // as the process's exit does
		out, err := exec.Command("ip", "netns", "exec", netnsName, "nft", "list", "tables").CombinedOutput()
		if err != nil || strings.Contains(string(out), "nodelocaldns") {
			t.Fatalf("tables left after the owning socket closed (%v):\n%s", err, out)
		}
	})
}
