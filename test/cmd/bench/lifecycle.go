package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nodelocal/nodelocal/test/dnsload"
	"github.com/nodelocal/nodelocal/test/harness"
)

// scenario disturbs a serving node-cache at the event time of a load run.
type scenario struct {
	name     string
	goal     string
	template func(string) string // edits corefile.tmpl before the start
	event    func(n *harness.Node, tmpl string, p *harness.Process) error
	fromHost bool // the load comes from the node's own namespace (hostNetwork pods), not a pod
}

var (
	asIs = func(s string) string { return s }
	// upstreamStyle: rules without the socket match and no lameduck, as
	// upstream node-cache's manifest runs.
	upstreamStyle = func(s string) string {
		s = strings.ReplaceAll(s, "    nodelocal {\n", "    nodelocal {\n        fail_open off\n")
		return strings.Replace(s, " {\n        lameduck 5s\n    }", "", 1)
	}
)

func restartAfter(gap time.Duration, stop func(*harness.Process) error) func(*harness.Node, string, *harness.Process) error {
	return func(n *harness.Node, tmpl string, p *harness.Process) error {
		if err := stop(p); err != nil {
			return err
		}
		time.Sleep(gap)
		_, err := n.StartNodeCache("node-cache-next", tmpl)
		return err
	}
}

func sigterm(p *harness.Process) error { return p.Stop(30 * time.Second) }
func sigkill(p *harness.Process) error { p.Kill(); return nil }

var scenarios = []scenario{
	{
		name: "reload with a changed template", goal: "0 failed",
		template: func(s string) string { return strings.ReplaceAll(s, "    reload\n", "    reload 2s 1s\n") },
		event: func(n *harness.Node, _ string, p *harness.Process) error {
			path := filepath.Join(n.Dir, "node-cache.Corefile.tmpl")
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if err := os.WriteFile(path, []byte(strings.Replace(string(b), "cache 30", "cache 25", 1)), 0o644); err != nil {
				return err
			}
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(p.Log(), "Reloading complete") {
				if time.Now().After(deadline) {
					return fmt.Errorf("no reload within 10s")
				}
				time.Sleep(100 * time.Millisecond)
			}
			return nil
		},
	},
	{
		name: "surge handoff (new up, then old SIGTERM)", goal: "0 failed on both IPs", template: asIs,
		event: func(n *harness.Node, tmpl string, p *harness.Process) error {
			next, err := n.StartNodeCacheProcess("node-cache-next", tmpl, nil)
			if err != nil {
				return err
			}
			deadline := time.Now().Add(15 * time.Second)
			for !strings.Contains(next.Log(), "IPv4 iptables rules") {
				if time.Now().After(deadline) {
					return fmt.Errorf("new instance not serving within 15s")
				}
				time.Sleep(50 * time.Millisecond)
			}
			time.Sleep(2 * time.Second)
			return sigterm(p)
		},
	},
	{name: "restart without surge (SIGTERM, new instance 2s after)", goal: "0 failed on the ClusterIP; link-local only in the gap",
		template: asIs, event: restartAfter(2*time.Second, sigterm)},
	{name: "SIGKILL, new instance 2s later", goal: "both IPs: only queries in flight at the kill",
		template: asIs, event: restartAfter(2*time.Second, sigkill)},
	{name: "SIGKILL, new instance 2s later; the load from the node (hostNetwork)", goal: "both IPs: only queries in flight at the kill",
		template: asIs, event: restartAfter(2*time.Second, sigkill), fromHost: true},
	{name: "upstream-style baseline: unconditional rules, no lameduck, restart", goal: "measured, for comparison",
		template: upstreamStyle, event: restartAfter(2*time.Second, sigterm)},
	{name: "upstream-style baseline: SIGKILL, new instance 2s later", goal: "measured, for comparison",
		template: upstreamStyle, event: restartAfter(2*time.Second, sigkill)},
	{name: "upstream-style baseline: SIGKILL, new instance 2s later; the load from the node", goal: "measured, for comparison",
		template: upstreamStyle, event: restartAfter(2*time.Second, sigkill), fromHost: true},
}

// lifecycle runs every scenario under mixed load: 6 streams at rate each, the
// event a third of the way in.
func lifecycle(rate int, d time.Duration, only string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "%d queries/s for %v per scenario from a pod (or from the node, where the row says): UDP, TCP with persistent connections (RFC 7766 retry) and TCP with a connection per query, "+
		"each to 169.254.20.10 and to the kube-dns ClusterIP, cache hits and misses; 2 s timeout. The connection-per-query clients are 200 concurrent "+
		"workers, so new connections keep arriving while some wait for a SYN retransmission.\n\n", 6*rate, d)
	b.WriteString("| scenario | ClusterIP failed / sent | link-local failed / sent | ClusterIP UDP / TCP persistent / TCP per query | goal |\n|---|---|---|---|---|\n")
	for _, sc := range scenarios {
		if !strings.Contains(sc.name, only) {
			continue
		}
		fmt.Fprintf(os.Stderr, "   %s\n", sc.name)
		row, err := runScenario(sc, rate, d)
		if err != nil {
			return b.String(), fmt.Errorf("%s: %w", sc.name, err)
		}
		b.WriteString(row)
	}
	return b.String(), nil
}

func runScenario(sc scenario, rate int, d time.Duration) (string, error) {
	node, tmpl, err := newNode()
	if err != nil {
		return "", err
	}
	defer node.Close()
	tmpl = sc.template(tmpl)
	p, err := node.StartNodeCache("node-cache", tmpl)
	if err != nil {
		return "", err
	}
	start := node.StartMixedLoad
	if sc.fromHost {
		start = node.StartHostLoad
	}
	load := start(context.Background(), rate, d)
	time.Sleep(d / 3)
	if err := sc.event(node, tmpl, p); err != nil {
		<-load
		return "", err
	}
	results := <-load
	for _, r := range results {
		if r.Err != nil {
			return "", r.Err
		}
		if *verbose {
			fmt.Fprintf(os.Stderr, "      %-13s %-14s %v\n", r.Target, r.Transport, r.Result)
		}
	}
	cell := func(target string, trs ...dnsload.Transport) string {
		f, s := results.Failed(target, trs...)
		return fmt.Sprintf("%d / %d", f, s)
	}
	perTransport := func(target string) string {
		var parts []string
		for _, tr := range harness.AllTransports {
			f, _ := results.Failed(target, tr)
			parts = append(parts, fmt.Sprint(f))
		}
		return strings.Join(parts, " / ")
	}
	return fmt.Sprintf("| %s | %s | %s | %s | %s |\n", sc.name, cell(harness.ClusterIP, harness.AllTransports...),
		cell(harness.LocalIP, harness.AllTransports...), perTransport(harness.ClusterIP), sc.goal), nil
}
