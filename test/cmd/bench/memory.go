package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/nodelocal/nodelocal/test/dnsload"
	"github.com/nodelocal/nodelocal/test/harness"
)

// memoryKiB reads a process's VmRSS or VmHWM in KiB.
var memoryKiB = harness.MemoryKiB

func mib(kib int) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }

// fills are unique names that land in each cache of the default Corefile.
var fills = []struct {
	cache string
	query dnsload.Query
}{
	{"cluster.local success", dnsload.Query{Name: dnsload.UniqueToken + ".fill.svc.cluster.local.", Type: dns.TypeA}},
	{"cluster.local denial", dnsload.Query{Name: dnsload.UniqueToken + ".nx.svc.cluster.local.", Type: dns.TypeA}},
	{"in-addr.arpa success", dnsload.Query{Name: dnsload.UniqueToken + ".fill.in-addr.arpa.", Type: dns.TypePTR}},
	{"in-addr.arpa denial", dnsload.Query{Name: dnsload.UniqueToken + ".nx.in-addr.arpa.", Type: dns.TypePTR}},
	{"ip6.arpa denial", dnsload.Query{Name: dnsload.UniqueToken + ".ip6.arpa.", Type: dns.TypePTR}},
	{". success", dnsload.Query{Name: dnsload.UniqueToken + ".example.org.", Type: dns.TypeA}},
	{". denial", dnsload.Query{Name: dnsload.UniqueToken + ".nonexistent.", Type: dns.TypeA}},
}

// cacheCapacity is the default size of each cache in corefile.tmpl.
const cacheCapacity = 9984

// memory measures node-cache's RSS idle, with every cache full, and at its
// peak during an NXDOMAIN storm (ndots:5 search expansion of unique names).
func memory(limit string) (string, error) {
	node, tmpl, err := newNode()
	if err != nil {
		return "", err
	}
	defer node.Close()
	p, err := node.StartNodeCacheProcess("node-cache", tmpl, append([]string{"env"}, shippedEnv...))
	if err != nil {
		return "", err
	}
	if err := node.WaitReady(p, 15*time.Second); err != nil {
		return "", err
	}
	time.Sleep(2 * time.Second)
	idle, err := memoryKiB(p.Pid(), "VmRSS")
	if err != nil {
		return "", err
	}
	run := func(queries []dnsload.Query, count int, d time.Duration) (*dnsload.Result, error) {
		return dnsload.Run(context.Background(), dnsload.Config{Target: harness.LocalIP + ":53", Queries: queries,
			Count: count, Duration: d, Workers: 64, Timeout: 2 * time.Second, Dial: node.Pods[0].DialContext})
	}
	for _, f := range fills {
		res, err := run([]dnsload.Query{f.query}, cacheCapacity*5/4, 2*time.Minute)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(os.Stderr, "   fill %s: %v\n", f.cache, res)
	}
	full, err := memoryKiB(p.Pid(), "VmRSS")
	if err != nil {
		return "", err
	}
	// A pod with ndots:5 looking up unique external names: three NXDOMAINs
	// from the search list, then the name itself.
	storm := []dnsload.Query{
		{Name: dnsload.UniqueToken + ".api.example.com.default.svc.cluster.local.", Type: dns.TypeA},
		{Name: dnsload.UniqueToken + ".api.example.com.svc.cluster.local.", Type: dns.TypeA},
		{Name: dnsload.UniqueToken + ".api.example.com.cluster.local.", Type: dns.TypeA},
		{Name: dnsload.UniqueToken + ".api.example.com.", Type: dns.TypeA},
	}
	res, err := run(storm, 0, 15*time.Second)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "   storm: %v\n", res)
	peak, err := memoryKiB(p.Pid(), "VmHWM")
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "node-cache with the default corefile.tmpl (4 server blocks; each cache %d entries) and the DaemonSet's environment (%s).\n\n",
		cacheCapacity, strings.Join(shippedEnv, ", "))
	b.WriteString("| state | RSS |\n|---|---|\n")
	fmt.Fprintf(&b, "| idle, after start | %s |\n", mib(idle))
	fmt.Fprintf(&b, "| every cache full (%d unique names into each of %d caches) | %s |\n", cacheCapacity*5/4, len(fills), mib(full))
	fmt.Fprintf(&b, "| peak (VmHWM) after a 15 s NXDOMAIN storm, %.0f queries/s of unique names | %s |\n", res.QPS(), mib(peak))
	fmt.Fprintf(&b, "| the DaemonSet's memory limit | %s |\n", limit)
	return b.String(), nil
}
