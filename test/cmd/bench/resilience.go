package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/nodelocal/nodelocal/test/harness"
)

// The servers of the resilience sections: node-cache as shipped, the
// upstream-style Corefile (stock CoreDNS, upstream node-local-dns's
// Corefile), node-cache on an address of its own with and without coalesce
// (the same path otherwise), and the peers.
var (
	shipped             = servers[0]
	upstreamStyleServer = servers[stockDefaults]
	withCoalesce        = ownAddressNodeCache("node-cache, the shipped Corefile, on an address of its own", "169.254.20.18", "")
	noCoalesce          = ownAddressNodeCache("node-cache, the shipped Corefile without coalesce, on an address of its own", "169.254.20.17", "    coalesce\n")
	// withCoalesceAgain is the A/A pair of withCoalesce: how far two
	// identical servers differ in the same run.
	withCoalesceAgain = ownAddressNodeCache("node-cache, the shipped Corefile, on a second address of its own", "169.254.20.19", "")
)

// ownAddressNodeCache is node-cache with the shipped Corefile minus drop, on
// ip without interface or rules.
func ownAddressNodeCache(name, ip, drop string) server {
	return server{name, ip, shippedEnv, func(node *harness.Node, ip, _ string, wrapper []string) (*harness.Process, error) {
		tmpl, err := node.NodeCacheTemplate("")
		if err != nil {
			return nil, err
		}
		replace := []string{"__PILLAR__LOCAL__DNS__", ip, " __PILLAR__DNS__SERVER__", ""}
		if drop != "" {
			replace = append(replace, drop, "")
		}
		tmpl = strings.NewReplacer(replace...).Replace(harness.WithoutNodeLocal(tmpl))
		return node.StartNodeCacheProcess("node-cache-"+strings.ReplaceAll(ip, ".", "-"), tmpl, wrapper, "-localip", ip, "-setupinterface=false", "-setupiptables=false")
	}}
}

func serverNamed(prefix string) server {
	for _, s := range servers {
		if strings.HasPrefix(s.name, prefix) {
			return s
		}
	}
	panic("no server " + prefix)
}

// withServers runs measure on a new node with list started.
func withServers(list []server, measure func(*harness.Node, []*harness.Process) (string, error)) (string, error) {
	node, err := harness.New(harness.Options{})
	if err != nil {
		return "", err
	}
	defer node.Close()
	procs, err := startServers(node, list)
	if err != nil {
		return "", err
	}
	return measure(node, procs)
}

// coalescing: upstream queries per name for 50 identical concurrent misses,
// and what coalesce costs cache hits.
func coalescing() (string, error) {
	list := []server{shipped, withCoalesce, noCoalesce, withCoalesceAgain, serverNamed("unbound"), serverNamed("dnsmasq")}
	return withServers(list, func(node *harness.Node, _ []*harness.Process) (string, error) {
		const names, clients = 20, 50
		var b strings.Builder
		fmt.Fprintf(&b, "%d clients in the pod ask a server at once for the same name it has never seen, for each of %d names; "+
			"kube-dns counts the queries that reach it. Cache hits: saturated dnsperf against the three node-cache rows on addresses of their "+
			"own (the same path but for coalesce), in rotating turns, %d rounds of %v.\n\n",
			clients, names, coalesceRounds, saturateFor)
		b.WriteString("| server | upstream queries per name |\n|---|---|\n")
		for i, s := range list {
			per, err := node.IdenticalMisses(s.ip, names, clients, fmt.Sprintf("coalesce%d", i))
			if err != nil {
				return "", fmt.Errorf("%s: %w", s.name, err)
			}
			fmt.Fprintf(&b, "| %s | %.2f |\n", s.name, per)
		}
		var ratios, aa []float64
		for round := range coalesceRounds {
			trio := []server{withCoalesce, noCoalesce, withCoalesceAgain}
			for range round % 3 {
				trio = append(trio[1:], trio[0])
			}
			qps := map[string]float64{}
			for _, s := range trio {
				q, err := saturate(node, s.ip, saturateFor)
				if err != nil {
					return "", err
				}
				qps[s.ip] = q
			}
			ratios = append(ratios, qps[withCoalesce.ip]/qps[noCoalesce.ip])
			aa = append(aa, qps[withCoalesce.ip]/qps[withCoalesceAgain.ip])
		}
		fmt.Fprintf(&b, "\nCache-hit throughput with coalesce against without: %.2fx (median of %d rounds; per round %s). "+
			"The same server against an identical second one (A/A, the machine's noise): %.2fx (per round %s).\n",
			median(ratios), coalesceRounds, formatRatios(ratios), median(aa), formatRatios(aa))
		return b.String(), nil
	})
}

// coalesceRounds: cache hits with and without coalesce take the same path,
// so the rounds only show the machine's noise; more of them narrow it.
const coalesceRounds = 3

func formatRatios(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(parts, " ")
}

// kubeDNSDown: clients keep asking for names the caches had answered while
// kube-dns is silent for outage.
func kubeDNSDown(outage time.Duration) (string, error) {
	list := []server{shipped, upstreamStyleServer}
	return withServers(list, func(node *harness.Node, _ []*harness.Process) (string, error) {
		results, err := node.MeasureOutage(context.Background(), []string{shipped.ip, upstreamStyleServer.ip}, 5*time.Second, outage, time.Minute)
		if err != nil {
			return "", err
		}
		var b strings.Builder
		fmt.Fprintf(&b, "kube-dns silent (its packets dropped) for %v. A pod asks each server, side by side, for %d names it had answered "+
			"(half cluster names, half external) twice a second each, UDP, 2 s timeout, no retry. Meanwhile the cluster names' address "+
			"changes; fresh: from kube-dns's return until every cluster name has the new address (cut at 1 minute).\n\n",
			outage, len(harness.OutageNames))
		b.WriteString("| server | lookups answered during the outage | fresh after kube-dns returns |\n|---|---|---|\n")
		for i, r := range results {
			fresh := "not within 1 minute"
			if r.FreshAfterReturn >= 0 {
				fresh = r.FreshAfterReturn.Round(10 * time.Millisecond).String()
			}
			fmt.Fprintf(&b, "| %s | %.1f%% (%d of %d) | %s |\n", list[i].name, 100*r.Share(), r.Answered, r.Asked, fresh)
		}
		return b.String(), nil
	})
}

var rcodeCount = regexp.MustCompile(`(NOERROR|SERVFAIL|REFUSED|NXDOMAIN) ([0-9]+)`)

// blackholed: unique names as fast as the client can while kube-dns is
// silent: memory, how the failures come back, and the return.
func blackholed(d time.Duration) (string, error) {
	list := []server{shipped, upstreamStyleServer}
	return withServers(list, func(node *harness.Node, procs []*harness.Process) (string, error) {
		file := filepath.Join(node.Dir, "blackhole.queries")
		var data strings.Builder
		for i := range 300000 {
			fmt.Fprintf(&data, "b%d.blackhole.example.org A\n", i)
		}
		if err := os.WriteFile(file, []byte(data.String()), 0o644); err != nil {
			return "", err
		}
		before := make([]int, len(list))
		for i, p := range procs {
			kib, err := memoryKiB(p.Pid(), "VmRSS")
			if err != nil {
				return "", err
			}
			before[i] = kib
		}
		if err := node.SilenceKubeDNS(true); err != nil {
			return "", err
		}
		outs := make([]string, len(list))
		errs := make([]error, len(list))
		var wg sync.WaitGroup
		for i, s := range list {
			wg.Add(1)
			go func() {
				defer wg.Done()
				outs[i], errs[i] = runDnsperf(node, s.ip, file, d, "-c", "8", "-q", "10000", "-t", "1")
			}()
		}
		wg.Wait()
		peaks := make([]int, len(list))
		for i, p := range procs {
			if errs[i] != nil {
				return "", fmt.Errorf("%s: %w", list[i].name, errs[i])
			}
			if p.Exited() {
				return "", fmt.Errorf("%s exited during the load: %s", list[i].name, tailLines(p.Log(), 3))
			}
			kib, err := memoryKiB(p.Pid(), "VmHWM")
			if err != nil {
				return "", err
			}
			peaks[i] = kib
		}
		if err := node.SilenceKubeDNS(false); err != nil {
			return "", err
		}
		var b strings.Builder
		fmt.Fprintf(&b, "kube-dns silent; a pod sends each server, side by side, unique names as fast as dnsperf can (%v, 8 sockets, "+
			"10,000 queries outstanding, 1 s timeout); node-cache with the DaemonSet's GOMEMLIMIT (256MiB, so max_concurrent 1024 per forward), "+
			"the upstream-style server as upstream's manifest runs it (no limit). Back: from kube-dns's return until a new name resolves.\n\n", d)
		b.WriteString("| server | RSS before | peak RSS | answered fast (REFUSED / SERVFAIL) | no answer within 1 s | back after |\n|---|---|---|---|---|---|\n")
		for i, s := range list {
			counts := map[string]int{}
			for _, m := range rcodeCount.FindAllStringSubmatch(outs[i], -1) {
				counts[m[1]], _ = strconv.Atoi(m[2])
			}
			sent, lost := dnsperfCount(outs[i], "Queries sent:"), dnsperfCount(outs[i], "Queries lost:")
			back, err := resolvesAgain(node, s.ip)
			if err != nil {
				return "", fmt.Errorf("%s: %w", s.name, err)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %d / %d of %d | %d | %v |\n", s.name, mib(before[i]), mib(peaks[i]),
				counts["REFUSED"], counts["SERVFAIL"], sent, lost, back.Round(time.Millisecond))
		}
		return b.String(), nil
	})
}

// dnsperfCount reads a "label N" count of dnsperf's statistics.
func dnsperfCount(out, label string) int {
	_, rest, ok := strings.Cut(out, label)
	if !ok {
		return 0
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(fields[0])
	return n
}

// resolvesAgain polls ip with new names until one resolves, for at most 30 s.
func resolvesAgain(node *harness.Node, ip string) (time.Duration, error) {
	start := time.Now()
	for i := 0; time.Since(start) < 30*time.Second; i++ {
		m, err := harness.Query(node.Pods[0], "udp", ip, fmt.Sprintf("back%d.blackhole.example.org.", i), dns.TypeA)
		if err == nil && m.Rcode == dns.RcodeSuccess {
			return time.Since(start), nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, fmt.Errorf("new names do not resolve 30 s after kube-dns returned")
}
