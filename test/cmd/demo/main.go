// Command demo runs node-cache in a simulated Kubernetes node and shows what it
// does: the interface and rules it installs, lookups from a pod through the
// link-local IP and the kube-dns ClusterIP, cache hits, and a graceful stop
// that hands DNS back to kube-dns. Run it as root: `make demo`. With
// -real-node, the same on a real node: `make demo-real-node`.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/nodelocal/nodelocal/test/harness"
)

func main() {
	bin := flag.String("node-cache", "bin/node-cache", "node-cache binary to run")
	mode := flag.String("mode", "iptables", "kube-proxy mode to emulate: iptables, ipvs or nftables")
	backend := flag.String("backend", "nft", "iptables backend of the node: nft or legacy")
	realNode := flag.Bool("real-node", false, "show node-cache on a real node (kubelet, containerd, kube-proxy in -mode iptables or nftables) instead")
	flag.Parse()
	run := func() error { return run(*bin, harness.ProxyMode(*mode), harness.Backend(*backend)) }
	if *realNode {
		run = func() error { return runRealNode(*mode) }
	}
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "demo failed: %v\n", err)
		os.Exit(1)
	}
}

// onInterrupt runs cleanup and exits when the demo is interrupted, so that
// nothing is left behind.
func onInterrupt(cleanup func()) {
	interrupted := make(chan os.Signal, 1)
	signal.Notify(interrupted, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-interrupted
		fmt.Println("\ninterrupted: cleaning up")
		cleanup()
		os.Exit(130)
	}()
}

func step(format string, args ...any) { fmt.Printf("\n== "+format+"\n", args...) }
func show(format string, args ...any) { fmt.Printf("   "+format+"\n", args...) }

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "   (none)"
	}
	return "   " + strings.ReplaceAll(s, "\n", "\n   ")
}

func run(bin string, mode harness.ProxyMode, backend harness.Backend) error {
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%s: %w (run `make build` first)", bin, err)
	}
	os.Setenv("NODELOCAL_NODE_CACHE_BIN", bin)

	step("Building a simulated node: kube-proxy in %s mode, iptables-%s backend", mode, backend)
	node, err := harness.New(harness.Options{Mode: mode, Backend: backend})
	if err != nil {
		return err
	}
	defer node.Close()
	onInterrupt(node.Close)
	show("node netns %s: kube-dns ClusterIP %s and kube-dns-upstream %s DNAT to kube-dns at %s",
		node.Host.Name, harness.ClusterIP, harness.UpstreamIP, harness.KubeDNSPodIP)
	show("pod netns %s (%s), kube-dns netns %s (stock CoreDNS)", node.Pods[0].Name, harness.PodIP(0), node.KubeDNS.Name)

	step("Starting node-cache with the repository's corefile.tmpl, rendered by node-cache itself")
	corefile, err := node.NodeCacheTemplate("")
	if err != nil {
		return err
	}
	start := time.Now()
	proc, err := node.StartNodeCache("node-cache", corefile)
	if err != nil {
		return err
	}
	show("ready after %v (GET http://%s/ready)", time.Since(start).Round(time.Millisecond), harness.NodeCacheReady)

	step("What node-cache put in place on the node")
	out, _ := node.Host.Output("ip", "-br", "addr", "show", "dev", "nodelocaldns")
	fmt.Println(indent(out))
	rules, err := node.NodeLocalRules()
	if err != nil {
		return err
	}
	show("%d rules: iptables (%s backend), and node-cache's nf_tables tables (its own, which the kernel deletes with it, and the link-local IP's fallback):", len(rules), backend)
	fmt.Println(indent(strings.Join(rules, "\n")))

	step("Lookups from the pod")
	pod := node.Pods[0]
	targets := []string{harness.LocalIP}
	if mode != harness.ModeIPVS {
		targets = append(targets, harness.ClusterIP)
	}
	before, err := node.KubeDNSQueries()
	if err != nil {
		return err
	}
	for _, server := range targets {
		for _, q := range []struct {
			name  string
			qtype uint16
		}{{harness.WebSvc, dns.TypeA}, {harness.WebSvc, dns.TypeAAAA}, {harness.WebSRV, dns.TypeSRV}, {"www.example.org.", dns.TypeA}} {
			for attempt := 1; attempt <= 2; attempt++ {
				t0 := time.Now()
				r, err := harness.Query(pod, "udp", server, q.name, q.qtype)
				if err != nil {
					return fmt.Errorf("query %s via %s: %w", q.name, server, err)
				}
				answer := "(no answer)"
				if len(r.Answer) > 0 {
					f := strings.Fields(r.Answer[0].String())
					answer = strings.Join(f[3:], " ")
				}
				show("via %-14s %-4s %-42s -> %-40s %v", server, dns.TypeToString[q.qtype], q.name, answer, time.Since(t0).Round(time.Microsecond))
			}
		}
	}
	after, err := node.KubeDNSQueries()
	if err != nil {
		return err
	}
	hits, _ := node.NodeCacheMetric("coredns_cache_hits_total")
	misses, _ := node.NodeCacheMetric("coredns_cache_misses_total")
	show("kube-dns answered %d of those queries; node-cache counted %.0f cache hits and %.0f misses", after-before, hits, misses)
	for _, server := range targets {
		n, err := node.ConntrackEntries(harness.PodIP(0), server, 53)
		if err != nil {
			return err
		}
		show("conntrack entries for the pod's queries to %s: %d", server, n)
	}

	step("A crash (SIGKILL, as an OOM kill ends it): kube-dns answers both addresses, for the pod and for the node itself, by kernel state alone")
	proc.Kill()
	tables, err := harness.NodeLocalNFTables(node.Host)
	if err != nil {
		return err
	}
	for name := range tables {
		show("nf_tables table left: inet %s", name)
	}
	for _, client := range []*harness.Netns{pod, node.Host} {
		for _, server := range []string{harness.LocalIP, harness.ClusterIP} {
			for _, network := range []string{"udp", "tcp"} {
				before, _ := node.KubeDNSQueries()
				r, err := harness.Query(client, network, server, harness.WebSvc, dns.TypeA)
				if err != nil || len(r.Answer) == 0 {
					return fmt.Errorf("%s query from %s to %s after the kill: %v", network, client.Name, server, err)
				}
				after, _ := node.KubeDNSQueries()
				show("from %-18s via %-14s %s: %s, answered by kube-dns (its counter went up by %d)", client.Name, server, network, r.Answer[0].(*dns.A).A, after-before)
			}
		}
	}
	start = time.Now()
	if proc, err = node.StartNodeCache("node-cache-2", corefile); err != nil {
		return err
	}
	show("a new node-cache is ready after %v and takes both addresses back (kube-dns's open connections finish there first)", time.Since(start).Round(time.Millisecond))

	step("Graceful stop (SIGTERM, as kubelet sends it): 3 s for a replacement (none comes), the ClusterIP back to kube-proxy, lameduck, then teardown")
	start = time.Now()
	if err := proc.Stop(30 * time.Second); err != nil {
		return err
	}
	show("node-cache exited after %v", time.Since(start).Round(time.Millisecond))
	rules, _ = node.NodeLocalRules()
	show("rules left (iptables and nf_tables): %d", len(rules))
	if _, err := node.Host.Output("ip", "link", "show", "nodelocaldns"); err != nil {
		show("interface nodelocaldns: removed")
	} else {
		return fmt.Errorf("interface nodelocaldns still present after teardown")
	}
	before, _ = node.KubeDNSQueries()
	r, err := harness.Query(pod, "udp", harness.ClusterIP, harness.WebSvc, dns.TypeA)
	if err != nil {
		return fmt.Errorf("ClusterIP after teardown: %w", err)
	}
	after, _ = node.KubeDNSQueries()
	show("via %s after the stop: %s, answered by kube-dns (its counter went up by %d)", harness.ClusterIP, r.Answer[0].(*dns.A).A, after-before)

	step("Cleaning up: namespaces and processes removed")
	return nil
}
