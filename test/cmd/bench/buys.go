package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/nodelocal/nodelocal/test/dnsload"
	"github.com/nodelocal/nodelocal/test/harness"
)

// podLoad is the same load, from the pod, over UDP and TCP (a connection per query).
func podLoad(node *harness.Node, target string) (udp, tcp *dnsload.Result, err error) {
	queries, _ := dnsload.ParseMix(cachedMix)
	run := func(tr dnsload.Transport, rate int) (*dnsload.Result, error) {
		return dnsload.Run(context.Background(), dnsload.Config{Target: target + ":53", Transport: tr, Queries: queries,
			Rate: rate, Duration: 10 * time.Second, Workers: 20, Timeout: 2 * time.Second, Dial: node.Pods[0].DialContext})
	}
	if udp, err = run(dnsload.UDP, 2000); err != nil {
		return nil, nil, err
	}
	tcp, err = run(dnsload.TCPPerQuery, 500)
	return udp, tcp, err
}

// whatTheCacheBuys compares the pod's queries to the kube-dns ClusterIP
// without a node cache (kube-proxy DNAT to kube-dns) with its queries to the
// cache on 169.254.20.10, and measures whether concurrent identical misses are
// coalesced into one upstream query.
func whatTheCacheBuys() (string, error) {
	node, err := harness.New(harness.Options{})
	if err != nil {
		return "", err
	}
	defer node.Close()
	var b strings.Builder
	b.WriteString("The same load from a pod (a mix of 8 names): UDP at 2,000 queries/s, then TCP with a connection per query at 500/s, 10 s each. " +
		"Conntrack entries are those of the pod's DNS flows left in the node's table right after.\n\n")
	b.WriteString("| path | UDP p50 / p99 | TCP per query p50 / p99 | failed | conntrack entries | kube-dns queries |\n|---|---|---|---|---|---|\n")
	row := func(label, target string) error {
		before, err := node.KubeDNSQueries()
		if err != nil {
			return err
		}
		udp, tcp, err := podLoad(node, target)
		if err != nil {
			return err
		}
		after, _ := node.KubeDNSQueries()
		ct, err := node.ConntrackEntries(harness.PodIP(0), target, 53)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "| %s | %v / %v | %v / %v | %d | %d | %d |\n", label,
			udp.Latencies.P50.Round(time.Microsecond), udp.Latencies.P99.Round(time.Microsecond),
			tcp.Latencies.P50.Round(time.Microsecond), tcp.Latencies.P99.Round(time.Microsecond),
			udp.Failed()+tcp.Failed(), ct, after-before)
		return nil
	}
	if err := row("ClusterIP, no node cache (DNAT to kube-dns)", harness.ClusterIP); err != nil {
		return "", err
	}
	tmpl, err := node.NodeCacheTemplate("")
	if err != nil {
		return "", err
	}
	if _, err := node.StartNodeCache("node-cache", tmpl); err != nil {
		return "", err
	}
	if err := row("169.254.20.10, node-cache", harness.LocalIP); err != nil {
		return "", err
	}

	// Coalescing: 50 clients ask for the same uncached name at once.
	const names, clients = 20, 50
	before, _ := node.KubeDNSQueries()
	for i := 0; i < names; i++ {
		var wg sync.WaitGroup
		for c := 0; c < clients; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				harness.Query(node.Pods[0], "udp", harness.LocalIP, fmt.Sprintf("burst%d.example.org", i), dns.TypeA)
			}()
		}
		wg.Wait()
	}
	after, _ := node.KubeDNSQueries()
	fmt.Fprintf(&b, "\nConcurrent identical misses: %d clients asking for the same new name at once reach kube-dns %.1f times per name "+
		"(1 would mean coalesced).\n", clients, float64(after-before)/names)
	fmt.Fprintf(os.Stderr, "   coalescing: %d upstream queries for %d names\n", after-before, names)
	return b.String(), nil
}
