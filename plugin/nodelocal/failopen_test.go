package nodelocal

import (
	"net/netip"
	"strings"
	"testing"
)

func TestFallbacks(t *testing.T) {
	for _, tc := range []struct {
		name     string
		listen   []string
		fallback []string
		local    []string
		want     map[Family]string
	}{
		{"the ClusterIP in the listen addresses", []string{"169.254.20.10:53", "198.18.0.10:53"}, nil, nil, map[Family]string{IPv4: "198.18.0.10"}},
		{"given, over the ClusterIP", []string{"169.254.20.10:53", "198.18.0.10:53"}, []string{"198.18.0.11"}, nil, map[Family]string{IPv4: "198.18.0.11"}},
		{"IPVS: the link-local IP alone", []string{"169.254.20.10:53"}, nil, nil, map[Family]string{}},
		{"per family", []string{"169.254.20.10:53", "[fe80::a]:53", "[2001:2::10]:53"}, []string{"198.18.0.11"}, nil,
			map[Family]string{IPv4: "198.18.0.11", IPv6: "2001:2::10"}},
		// An IPv6 cache's own address is a unique local one, like a Service CIDR can be.
		{"IPv6: the local address is not a Service IP", []string{"[fd00::10]:53", "[fd00:10:96::a]:53"}, nil, []string{"fd00::10"},
			map[Family]string{IPv6: "fd00:10:96::a"}},
		{"IPv6 without local: the first listen address", []string{"[fd00::10]:53", "[fd00:10:96::a]:53"}, nil, nil,
			map[Family]string{IPv6: "fd00::10"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(tc.listen...)
			for _, s := range tc.fallback {
				cfg.Fallback = append(cfg.Fallback, netip.MustParseAddr(s))
			}
			for _, s := range tc.local {
				cfg.Local = append(cfg.Local, netip.MustParseAddr(s))
			}
			got := cfg.fallbacks()
			if len(got) != len(tc.want) {
				t.Fatalf("fallbacks %v, want %v", got, tc.want)
			}
			for f, ip := range tc.want {
				if got[f].String() != ip {
					t.Fatalf("fallbacks %v, want %v", got, tc.want)
				}
			}
		})
	}
}

// TestHostInterceptionInAnOwnedTable: where the kernel has owned tables,
// the node's own clients are intercepted in this process's table, and
// iptables' raw OUTPUT keeps only the replies' and health probes' NOTRACK;
// the fallback table sends the link-local IP to the ClusterIP. A teardown
// removes both, the host interception first.
func TestHostInterceptionInAnOwnedTable(t *testing.T) {
	n := newFakeNode(t)
	n.nft.noOwner = false
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	if got := n.tables[IPv4].count(); got != 20 {
		t.Fatalf("%d iptables rules, want 20: the 24 of two addresses but the 4 NOTRACKs of the node's own queries", got)
	}
	host := n.nft.table(n.mgr.rules.nft.host)
	for _, want := range []string{"ip daddr 169.254.20.10 udp dport 53 notrack", "ip daddr 198.18.0.10 tcp dport 53 notrack"} {
		if !strings.Contains(host, want) {
			t.Errorf("host table lacks %q:\n%s", want, host)
		}
	}
	fallback := n.nft.table(fallbackTableName)
	if !strings.Contains(fallback, "ip daddr 169.254.20.10 udp dport 53 ct state established,new ip daddr set 198.18.0.10") ||
		strings.Contains(fallback, "ip daddr 198.18.0.10 udp dport 53 ct state") {
		t.Errorf("fallback table: want the link-local IP's queries, and only those, sent to the ClusterIP:\n%s", fallback)
	}
	if !n.mgr.Ready() {
		t.Fatal("not ready with everything in place")
	}

	delete(n.nft.tables, fallbackTableName) // someone flushed it
	n.log.reset()
	n.mgr.check(true)
	inOrder(t, n.log.all(), "replace nft table "+fallbackTableName)
	if got, _ := n.mgr.repairs.lastRepair(); got != "nf_tables table inet nodelocaldns put back" {
		t.Errorf("last repair %q, want the fallback table's", got)
	}

	n.log.reset()
	n.mgr.Shutdown()
	inOrder(t, n.log.all(), "delete nft table "+n.mgr.rules.nft.host, "delete nft table "+fallbackTableName)
	if len(n.nft.tables) != 0 {
		t.Fatalf("teardown left nf_tables tables %v", n.nft.tables)
	}
}

// TestKernelWithoutOwnedTables: before Linux 5.12 iptables keeps
// intercepting the node's own clients, without condition, as upstream does;
// the link-local IP still fails open for pods.
func TestKernelWithoutOwnedTables(t *testing.T) {
	n := newFakeNode(t) // the fake kernel refuses owned tables
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	if got := n.tables[IPv4].count(); got != 24 {
		t.Fatalf("%d iptables rules, want upstream's 24", got)
	}
	if len(n.nft.tables) != 1 || n.nft.table(fallbackTableName) == "" {
		t.Fatalf("nf_tables tables %v, want the fallback alone", n.nft.tables)
	}
	if !n.mgr.Ready() {
		t.Fatal("not ready")
	}
}

// TestNoTablesWithoutFailOpen: fail_open off is upstream's behaviour, and
// `iptables off` writes no rule at all; a reload to either removes the
// tables an earlier config made.
func TestNoTablesWithoutFailOpen(t *testing.T) {
	for _, cfg := range []*Config{
		func() *Config { c := testConfig("169.254.20.10:53", "198.18.0.10:53"); c.FailOpen = false; return c }(),
		func() *Config {
			c := testConfig("169.254.20.10:53", "198.18.0.10:53")
			c.Backend = BackendOff
			return c
		}(),
	} {
		n := newFakeNode(t)
		n.nft.noOwner = false
		if err := n.mgr.Apply(cfg); err != nil {
			t.Fatal(err)
		}
		n.listenersUp()
		if len(n.nft.tables) != 0 {
			t.Fatalf("fail_open %v, iptables %s: nf_tables tables %v, want none", cfg.FailOpen, cfg.Backend, n.nft.tables)
		}
		reloaded := newFakeNode(t)
		reloaded.nft.noOwner = false
		if err := reloaded.mgr.Apply(testConfig("169.254.20.10:53", "198.18.0.10:53")); err != nil {
			t.Fatal(err)
		}
		reloaded.listenersUp()
		if len(reloaded.nft.tables) != 2 {
			t.Fatalf("nf_tables tables %v, want the host and fallback tables", reloaded.nft.tables)
		}
		if err := reloaded.mgr.Apply(cfg); err != nil {
			t.Fatal(err)
		}
		if len(reloaded.nft.tables) != 0 {
			t.Fatalf("after a reload to fail_open %v, iptables %s: nf_tables tables %v, want none", cfg.FailOpen, cfg.Backend, reloaded.nft.tables)
		}
	}
}
