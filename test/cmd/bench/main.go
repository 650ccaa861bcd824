// Command bench measures node-cache in the simulated node and prints markdown
// tables (also written to -out). Run it as root: `make bench`.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/nodelocal/nodelocal/test/harness"
)

var verbose = flag.Bool("v", false, "print every load stream's result")

func main() {
	bin := flag.String("node-cache", "bin/node-cache", "node-cache binary to measure")
	out := flag.String("out", "bench-results.md", "file the tables are written to")
	duration := flag.Duration("duration", 15*time.Second, "length of each lifecycle scenario")
	sections := flag.String("sections", "", "run only the sections whose title contains this (default: all)")
	scenario := flag.String("scenario", "", "run only the lifecycle scenarios whose name contains this (default: all)")
	rate := flag.Int("rate", 350, "queries per second of each of the 6 load streams (2 IPs x UDP, TCP persistent, TCP per query)")
	profileOut := flag.String("profile", "", "measure nothing: write a CPU profile of node-cache under load to this file (for PGO: build/default.pgo)")
	svgPath := flag.String("svg", "bench-rollouts.svg", "where the real node section draws failures per second across the rollouts")
	fleetSVG := flag.String("fleet-svg", "bench-fleet-rollouts.svg", "where the fleet section draws failures per second across the fleet rollouts")
	outage := flag.Duration("outage", 35*time.Second, "how long kube-dns stays silent in the kube-dns-down section (make bench-outage: 5m)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench needs root (network namespaces, iptables): run `sudo make bench`")
		os.Exit(1)
	}
	os.Setenv("NODELOCAL_NODE_CACHE_BIN", *bin)
	if *profileOut != "" {
		if err := profile(*profileOut); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}

	var report strings.Builder
	fmt.Fprintf(&report, "# node-cache benchmarks\n\n%s, measured %s with `make bench`.\n\n", machine(), time.Now().UTC().Format("2006-01-02"))
	section := func(title string, run func() (string, error)) {
		if !strings.Contains(title, *sections) {
			return
		}
		fmt.Fprintf(os.Stderr, "== %s\n", title)
		start := time.Now()
		table, err := run()
		fmt.Fprintf(os.Stderr, "   (%v)\n", time.Since(start).Round(time.Second))
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", title, err)
			table = fmt.Sprintf("failed: %v\n", err)
		}
		fmt.Fprintf(&report, "## %s\n\n%s\n", title, table)
		fmt.Print("## " + title + "\n\n" + table + "\n")
	}
	section("Cache throughput and latency against the peers", throughput)
	section("What the node cache buys", whatTheCacheBuys)
	section("Self-healing, start-up and steady-state cost", selfHealing)
	section("Memory", func() (string, error) { return memory("256Mi") })
	section("Queries lost across reloads, restarts, upgrades and crashes", func() (string, error) {
		return lifecycle(*rate, *duration, *scenario)
	})
	section("Identical misses: coalescing", coalescing)
	section("kube-dns down: answers from the cache", func() (string, error) { return kubeDNSDown(*outage) })
	section("kube-dns blackholed: bounded memory", func() (string, error) { return blackholed(time.Minute) })
	// About 10 minutes each on their own: only when asked for (make bench-cluster).
	if strings.Contains(*sections, "real") {
		section("Rollouts, upgrades, evictions, an OOM kill and uninstall on a real node, and what the cache buys there", func() (string, error) { return realNode(40*time.Second, *svgPath) })
	}
	if strings.Contains(*sections, "real") || strings.Contains(*sections, "fleet") {
		section("A fleet on a real cluster: rollouts, kube-dns's own changes, node rotation, and what the cache buys with kube-dns across the LAN",
			func() (string, error) { return fleet(*fleetSVG) })
	}
	if strings.Contains(*sections, "real") || strings.Contains(*sections, "fleet") || strings.Contains(*sections, "storm") {
		section("A fleet rollout's miss storm at kube-dns on a real cluster: successors that start warm, and cold", storm)
	}
	if err := os.WriteFile(*out, []byte(report.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "written to %s\n", *out)
}

// newNode builds a simulated node and reads corefile.tmpl for it; the caller
// closes the node.
func newNode() (*harness.Node, string, error) {
	node, err := harness.New(harness.Options{})
	if err != nil {
		return nil, "", err
	}
	tmpl, err := node.NodeCacheTemplate("")
	if err != nil {
		node.Close()
		return nil, "", err
	}
	return node, tmpl, nil
}

// machine describes where the numbers were measured.
func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if name, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), ":"))
				break
			}
		}
	}
	kernel, _ := exec.Command("uname", "-r").Output()
	return fmt.Sprintf("%d cores (%s), Linux %s, %s", runtime.NumCPU(), cpu, strings.TrimSpace(string(kernel)), runtime.Version())
}
