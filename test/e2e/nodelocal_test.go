package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/nodelocal/nodelocal/test/harness"
)

func mustQuery(t *testing.T, node *harness.Node, network, server, name string) *dns.Msg {
	t.Helper()
	r, err := harness.Query(node.Pods[0], network, server, name, dns.TypeA)
	if err != nil {
		t.Fatalf("%s query for %s to %s: %v", network, name, server, err)
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
		t.Fatalf("%s query for %s to %s: %s, %d answers", network, name, server, dns.RcodeToString[r.Rcode], len(r.Answer))
	}
	return r
}

func kubeDNSCount(t *testing.T, node *harness.Node) int {
	t.Helper()
	n, err := node.KubeDNSQueries()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestNodeCacheIntercepts: in every kube-proxy mode, pods' queries to the
// link-local IP (and, except in IPVS mode, to the ClusterIP) are answered by
// the cache without conntrack entries; cache hits never reach kube-dns.
func TestNodeCacheIntercepts(t *testing.T) {
	cases := []struct {
		mode    harness.ProxyMode
		backend harness.Backend
	}{
		{harness.ModeIPTables, harness.BackendNFT},
		{harness.ModeIPTables, harness.BackendLegacy},
		{harness.ModeIPVS, harness.BackendNFT},
		{harness.ModeNFTables, harness.BackendNFT},
	}
	for _, tc := range cases {
		t.Run(string(tc.mode)+"/"+string(tc.backend), func(t *testing.T) {
			node := harness.NewNode(t, harness.Options{Mode: tc.mode, Backend: tc.backend})
			if _, err := node.StartNodeCache("node-cache", mustTemplate(t, node, "")); err != nil {
				t.Fatal(err)
			}
			rules, err := node.NodeLocalRules()
			if err != nil {
				t.Fatal(err)
			}
			servers := []string{harness.LocalIP, harness.ClusterIP}
			wantRules := rulesBoth
			if tc.mode == harness.ModeIPVS {
				servers, wantRules = servers[:1], rulesLinkLocal
			}
			if len(rules) != wantRules {
				t.Fatalf("%d rules in the %s backend, want %d:\n%s", len(rules), tc.backend, wantRules, strings.Join(rules, "\n"))
			}
			for _, server := range servers {
				name := fmt.Sprintf("svc-%s.example.org", strings.ReplaceAll(server, ".", "-"))
				before := kubeDNSCount(t, node)
				mustQuery(t, node, "udp", server, name) // a miss: forwarded once
				for i := 0; i < 5; i++ {
					mustQuery(t, node, "udp", server, name)
					mustQuery(t, node, "tcp", server, name)
				}
				if got := kubeDNSCount(t, node) - before; got != 1 {
					t.Fatalf("via %s: kube-dns saw %d queries for 1 miss and 10 hits, want 1", server, got)
				}
				if n, err := node.ConntrackEntries(harness.PodIP(0), server, 53); err != nil || n != 0 {
					t.Fatalf("via %s: %d conntrack entries (%v), want 0", server, n, err)
				}
			}
			hits, err := node.NodeCacheMetric("coredns_cache_hits_total")
			if err != nil || hits < 10 {
				t.Fatalf("cache hits metric %v (%v), want at least 10", hits, err)
			}
			if active, _ := node.NodeCacheMetric("coredns_nodelocal_interception_active"); active != 1 {
				t.Fatalf("interception_active = %v, want 1", active)
			}
			// -heapfloor: a few MiB of live heap collect at 16 MiB, not at twice the live heap.
			if gogc, _ := node.NodeCacheMetric("go_gc_gogc_percent"); gogc <= 100 {
				t.Fatalf("go_gc_gogc_percent = %v, want more than Go's default 100 with a small heap", gogc)
			}
			if tc.mode == harness.ModeIPVS {
				out, err := node.Host.Output("ip", "-o", "addr", "show", "dev", "kube-ipvs0")
				if err != nil || !strings.Contains(out, harness.ClusterIP+"/32") {
					t.Fatalf("kube-ipvs0 lost the ClusterIP: %s %v", out, err)
				}
				out, _ = node.Host.Output("ip", "-o", "addr", "show", "dev", "nodelocaldns")
				if strings.Contains(out, harness.ClusterIP) {
					t.Fatalf("the ClusterIP was put on nodelocaldns: %s", out)
				}
				// The ClusterIP still reaches kube-dns through "IPVS".
				mustQuery(t, node, "udp", harness.ClusterIP, harness.WebSvc)
			}
		})
	}
}

// TestSelfHealing measures how fast a deleted interface and flushed rules come
// back. The check interval is the default 5s, so healing within 1s comes from
// the netlink events.
func TestSelfHealing(t *testing.T) {
	node := harness.NewNode(t, harness.Options{})
	if _, err := node.StartNodeCache("node-cache", mustTemplate(t, node, "")); err != nil {
		t.Fatal(err)
	}
	mustQuery(t, node, "udp", harness.LocalIP, harness.WebSvc)

	start := time.Now()
	if err := node.Host.Run("ip", "link", "del", "nodelocaldns"); err != nil {
		t.Fatal(err)
	}
	if err := node.WaitForAnswer(node.Pods[0], harness.LocalIP, harness.WebSvc, time.Second); err != nil {
		t.Fatalf("not healed within 1s of `ip link del nodelocaldns`: %v", err)
	}
	t.Logf("interface deleted -> answering again: %v", time.Since(start))

	start = time.Now()
	if err := node.Host.Run("ip", "addr", "del", harness.LocalIP+"/32", "dev", "nodelocaldns"); err != nil {
		t.Fatal(err)
	}
	if err := node.WaitForAnswer(node.Pods[0], harness.LocalIP, harness.WebSvc, time.Second); err != nil {
		t.Fatalf("address not restored within 1s: %v", err)
	}
	t.Logf("address deleted -> answering again: %v", time.Since(start))

	start = time.Now()
	ipt := node.Opts.Backend.IPTables()
	if err := node.Host.Run(ipt, "-w", "5", "-t", "raw", "-F"); err != nil {
		t.Fatal(err)
	}
	waitForRules(t, node, rulesBoth, 7*time.Second, "rules after a raw flush (check_interval 5s)")
	t.Logf("raw table flushed -> rules restored: %v", time.Since(start))
	if n, _ := node.NodeCacheMetric(`coredns_nodelocal_repairs_total{kind="interface"}`); n < 1 {
		t.Fatalf("interface repair not counted: %v", n)
	}
}

// TestAdoptsUpstreamState: an interface and rules left by upstream node-cache
// (its argument order, its comments) are adopted without duplicates, and extra
// copies are removed.
func TestAdoptsUpstreamState(t *testing.T) {
	node := harness.NewNode(t, harness.Options{})
	ipt := node.Opts.Backend.IPTables()
	if err := node.Host.Run("ip", "link", "add", "nodelocaldns", "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{harness.LocalIP, harness.ClusterIP} {
		if err := node.Host.Run("ip", "addr", "add", ip+"/32", "dev", "nodelocaldns"); err != nil {
			t.Fatal(err)
		}
		for _, proto := range []string{"tcp", "udp"} {
			upstream := [][]string{
				{"-t", "raw", "-I", "PREROUTING", "1", "-p", proto, "-d", ip, "--dport", "53", "-j", "NOTRACK", "-m", "comment", "--comment", "NodeLocal DNS Cache: skip conntrack"},
				{"-t", "filter", "-I", "INPUT", "1", "-p", proto, "-d", ip, "--dport", "53", "-j", "ACCEPT", "-m", "comment", "--comment", "NodeLocal DNS Cache: allow DNS traffic"},
			}
			// The raw rule twice: the duplicates upstream used to pile up.
			for _, args := range append(upstream, upstream[0]) {
				if err := node.Host.Run(ipt, append([]string{"-w", "5"}, args...)...); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if _, err := node.StartNodeCache("node-cache", mustTemplate(t, node, "")); err != nil {
		t.Fatal(err)
	}
	rules, err := node.NodeLocalRules()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range rules {
		if seen[r] {
			t.Fatalf("duplicate rule after adoption: %s", r)
		}
		seen[r] = true
	}
	if len(rules) != rulesBoth {
		t.Fatalf("%d rules after adoption, want %d:\n%s", len(rules), rulesBoth, strings.Join(rules, "\n"))
	}
	mustQuery(t, node, "udp", harness.ClusterIP, harness.WebSvc)
}

// TestGracefulStopRestoresNode: SIGTERM removes the rules and the interface,
// and the ClusterIP falls back to kube-dns.
func TestGracefulStopRestoresNode(t *testing.T) {
	node := harness.NewNode(t, harness.Options{})
	p, err := node.StartNodeCache("node-cache", mustTemplate(t, node, ""))
	if err != nil {
		t.Fatal(err)
	}
	mustQuery(t, node, "udp", harness.ClusterIP, harness.WebSvc)
	if err := p.Stop(10 * time.Second); err != nil {
		t.Fatalf("node-cache did not stop cleanly: %v\n%s", err, p.Log())
	}
	rules, err := node.NodeLocalRules()
	if err != nil || len(rules) != 0 {
		t.Fatalf("rules left after SIGTERM: %v %v", rules, err)
	}
	if out, err := node.Host.Output("ip", "link", "show", "nodelocaldns"); err == nil {
		t.Fatalf("interface left after SIGTERM: %s", out)
	}
	before := kubeDNSCount(t, node)
	mustQuery(t, node, "udp", harness.ClusterIP, harness.WebSvc)
	mustQuery(t, node, "tcp", harness.ClusterIP, harness.WebSvc)
	if got := kubeDNSCount(t, node) - before; got != 2 {
		t.Fatalf("after teardown kube-dns answered %d of 2 ClusterIP queries", got)
	}
}

func exitCode(err error) int {
	if ws, ok := errAsWaitStatus(err); ok {
		return ws.ExitStatus()
	}
	return -1
}

// TestDualStackInOneProcess: an IPv4 and an IPv6 listen IP in one process
// (upstream allows one family): both on the interface, iptables and ip6tables
// rules, answers over IPv6, and a clean teardown of both.
func TestDualStackInOneProcess(t *testing.T) {
	node := harness.NewNode(t, harness.Options{})
	const ipv6 = "2001:2::a" // the IPv6 benchmarking range
	p, err := node.StartNodeCache("node-cache", mustTemplate(t, node, ""), "-localip", harness.LocalIP+","+ipv6)
	if err != nil {
		t.Fatal(err)
	}
	out, err := node.Host.Output("ip", "-o", "addr", "show", "dev", "nodelocaldns")
	if err != nil || !strings.Contains(out, ipv6+"/128") || !strings.Contains(out, harness.LocalIP+"/32") {
		t.Fatalf("interface addresses: %s %v", out, err)
	}
	for _, ipt := range []string{"iptables-nft", "ip6tables-nft"} {
		n := 0
		for _, table := range []string{"raw", "filter"} {
			listing, err := node.Host.Output(ipt, "-w", "5", "-t", table, "-S")
			if err != nil {
				t.Fatal(err)
			}
			n += strings.Count(listing, "NodeLocal DNS Cache")
		}
		// upstream's 12 per address, but the NOTRACKs of the node's own
		// queries, in node-cache's own nf_tables table
		want := map[string]int{"iptables-nft": 20, "ip6tables-nft": 10}[ipt]
		if n != want {
			t.Fatalf("%s: %d rules, want %d", ipt, n, want)
		}
	}
	// A hostNetwork client on the node asks over IPv6.
	for _, network := range []string{"udp", "tcp"} {
		r, err := harness.Query(node.Host, network, "["+ipv6+"]", harness.WebSvc, dns.TypeA)
		if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
			t.Fatalf("%s over IPv6: %v %v", network, r, err)
		}
	}
	if err := p.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, ipt := range []string{"iptables-nft", "ip6tables-nft"} {
		listing, _ := node.Host.Output(ipt, "-w", "5", "-t", "raw", "-S")
		if strings.Contains(listing, "NodeLocal DNS Cache") {
			t.Fatalf("%s rules left after the stop:\n%s", ipt, listing)
		}
	}
	if _, err := node.Host.Output("ip", "link", "show", "nodelocaldns"); err == nil {
		t.Fatal("interface left after the stop")
	}
}
