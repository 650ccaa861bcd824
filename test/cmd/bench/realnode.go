package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nodelocal/nodelocal/test/cluster"
)

// upstreamStyleFixture is upstream's manifest with our binary in upstream
// mode: unconditional rules (fail_open off), teardown on exit, no lameduck,
// maxUnavailable 10%.
func upstreamStyleFixture() (string, error) {
	b, err := os.ReadFile("test/cluster/testdata/upstream-nodelocaldns.yaml")
	if err != nil {
		return "", err
	}
	bind := "        bind 169.254.20.10 198.18.0.10\n"
	return strings.NewReplacer("registry.k8s.io/dns/k8s-dns-node-cache:1.26.4", cluster.NodeCacheImage,
		bind, bind+"        nodelocal {\n            fail_open off\n        }\n").Replace(string(b)), nil
}

// realNode runs the scenarios of cluster.Scenarios on a real node in each
// kube-proxy mode, and the same rollout of the upstream-style DaemonSet, and
// draws failures per second across the rollouts into svgPath.
func realNode(d time.Duration, svgPath string) (string, error) {
	const rate = 350
	var b strings.Builder
	fmt.Fprintf(&b, "A real node (`test/cluster`: kubelet, containerd, kube-proxy, Kubernetes %s). A client pod sends %d queries/s for %v per scenario "+
		"(UDP, TCP persistent, TCP per query, each to the kube-dns ClusterIP and 169.254.20.10, cache hits and misses, 2 s timeout) and looks "+
		"web.default.svc.cluster.local up every 100 ms with nslookup (1 s timeout, no retry); the event comes %v in. In the OOM kill and the "+
		"crash loop a hostNetwork pod (ClusterFirstWithHostNet) sends the same load, at %d queries/s per stream in the crash loop, where kube-dns "+
		"answers everything for a minute; the ClusterIP and 169.254.20.10 columns count both pods. kubelet's clusterDNS (where nslookup asks) is the "+
		"ClusterIP in iptables mode and 169.254.20.10 in nftables mode. Failed / sent.\n\n",
		cluster.KubernetesVersion, 6*rate, d, d/4, crashLoopRate())
	b.WriteString("| kube-proxy | scenario | ClusterIP | 169.254.20.10 | of which the hostNetwork pod's | nslookup | event took | node-cache containers: how they ended | goal |\n|---|---|---|---|---|---|---|---|---|\n")
	var panels []cluster.Panel
	var costs strings.Builder
	costs.WriteString(fmt.Sprintf("\nWhat the cache buys on the real node: the client pod looks up 3 names again and again through the kube-dns ClusterIP, "+
		"over UDP at %d queries/s, then over TCP with a connection per query at %d/s, %v each, without node-cache (kube-proxy's DNAT to the kube-dns pod) "+
		"and with manifests/base installed, in one run. Conntrack entries: the pod's DNS flows in the node's table right after.\n\n",
		cluster.CostUDPRate, cluster.CostTCPRate, cluster.CostFor))
	costs.WriteString("| kube-proxy | node-cache | UDP p50 / p99 | TCP per query p50 / p99 | failed | conntrack entries | queries reaching kube-dns |\n|---|---|---|---|---|---|---|\n")
	costRow := func(mode, label string, cost cluster.LookupCost) {
		fmt.Fprintf(&costs, "| %s | %s | %v / %v | %v / %v | %d | %d | %.0f |\n", mode, label,
			cost.UDP.Latencies.P50.Round(time.Microsecond), cost.UDP.Latencies.P99.Round(time.Microsecond),
			cost.TCP.Latencies.P50.Round(time.Microsecond), cost.TCP.Latencies.P99.Round(time.Microsecond),
			cost.UDP.Failed()+cost.TCP.Failed(), cost.Conntrack, cost.KubeDNSQueries)
	}
	upstream, err := upstreamStyleFixture()
	if err != nil {
		return "", err
	}
	for _, opts := range []cluster.Options{{ProxyMode: "iptables"}, {ProxyMode: "nftables", ClusterDNS: "169.254.20.10"}} {
		mode := opts.ProxyMode
		opts.Dir, opts.Name = cluster.TestDir(0), fmt.Sprintf("nlc%dx0", os.Getpid())
		opts.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, "   "+f+"\n", a...) }
		c, err := cluster.Up(opts)
		if err != nil {
			return "", err
		}
		err = func() error {
			defer c.Down()
			if _, err := c.KubectlOutput("create", "service", "clusterip", "web", "--tcp=80:80"); err != nil {
				return err
			}
			if err := c.StartClient("client"); err != nil {
				return err
			}
			if err := c.StartHostClient(cluster.HostClient); err != nil {
				return err
			}
			row := func(s cluster.Scenario, run cluster.ScenarioRun) {
				cf, cs := run.Load.Failed(cluster.KubeDNSIP)
				lf, ls := run.Load.Failed("169.254.20.10")
				host := "-"
				if s.HostClient {
					hcf, hcs := run.Load.FailedFrom(cluster.HostClient, cluster.KubeDNSIP)
					hlf, hls := run.Load.FailedFrom(cluster.HostClient, "169.254.20.10")
					host = fmt.Sprintf("%d / %d; %d / %d", hcf, hcs, hlf, hls)
				}
				goal := s.Goal
				if s.Check != nil {
					if err := s.Check(run); err != nil {
						goal += " (missed: " + strings.ReplaceAll(err.Error(), "\n", "; ") + ")"
					} else {
						goal += " (met)"
					}
				}
				fmt.Fprintf(os.Stderr, "   %s: %s\n", s.Name, run.Load.Row()) // the kinds and seconds of failures
				fmt.Fprintf(&b, "| %s | %s | %d / %d | %d / %d | %s | %d / %d | %v | %s | %s |\n", mode, s.Name, cf, cs, lf, ls, host,
					run.Load.NslookupFail, run.Load.NslookupSent, run.Took.Round(100*time.Millisecond), stops(run.Stops), goal)
			}
			without, err := c.MeasureLookups("client")
			if err != nil {
				return err
			}
			costRow(mode, "not installed", without)
			// The upstream-style DaemonSet first, then ours.
			if err := c.Apply(upstream); err != nil {
				return err
			}
			if _, err := c.KubectlOutput("-n", "kube-system", "rollout", "status", "ds/node-local-dns", "--timeout=90s"); err != nil {
				return err
			}
			// The rollout, the OOM kill and the crash loop, for comparison.
			var base cluster.ScenarioRun
			for i, s := range cluster.Scenarios {
				if i != 0 && !s.HostClient {
					continue
				}
				s.Name = "upstream-style DaemonSet (maxUnavailable 10%, no lameduck, unconditional rules): " + s.Name
				s.Goal, s.Check = "measured, for comparison", nil
				run, err := c.RunScenario(s, []string{"client"}, rate, d, d/4)
				if err != nil {
					return err
				}
				row(s, run)
				if i == 0 {
					base = run
				}
			}
			if _, err := c.KubectlOutput("delete", "-f", "test/cluster/testdata/upstream-nodelocaldns.yaml", "--wait=true"); err != nil {
				return err
			}
			if err := c.WaitGone("k8s-app=node-local-dns", 60*time.Second); err != nil {
				return err
			}
			if _, err := c.ApplyKustomize(); err != nil {
				return err
			}
			if _, err := c.KubectlOutput("-n", "kube-system", "rollout", "status", "ds/node-local-dns", "--timeout=90s"); err != nil {
				return err
			}
			with, err := c.MeasureLookups("client")
			if err != nil {
				return err
			}
			costRow(mode, "manifests/base", with)
			for i, s := range cluster.Scenarios {
				run, err := c.RunScenario(s, []string{"client"}, rate, d, d/4)
				if err != nil {
					return err
				}
				row(s, run)
				if i == 0 {
					panels = append(panels, cluster.Panel{Title: fmt.Sprintf("rollout restart, kube-proxy %s mode: failed queries per second", mode),
						Series: []cluster.Series{
							{Label: "node-cache (manifests/base)", Color: "#1f77b4", Values: run.Load.FailuresPerSecond()},
							{Label: "upstream-style DaemonSet", Color: "#d62728", Values: base.Load.FailuresPerSecond()},
						}})
				}
			}
			return nil
		}()
		if err != nil {
			return b.String(), fmt.Errorf("%s mode: %w", mode, err)
		}
	}
	if err := os.WriteFile(svgPath, []byte(cluster.SVG("Failed DNS queries per second during a DaemonSet rollout, on a real node", panels)), 0o644); err != nil {
		return b.String(), err
	}
	fmt.Fprintf(&b, "\nFailures per second across the rollouts: %s.\n", svgPath)
	b.WriteString(costs.String())
	return b.String(), nil
}

// stops describes how the node-cache containers of a scenario ended.
func stops(ss []cluster.Stop) string {
	if len(ss) == 0 {
		return "none stopped"
	}
	var parts []string
	for _, s := range ss {
		parts = append(parts, s.String())
	}
	return strings.Join(parts, "; ")
}

// crashLoopRate is the crash loop scenario's rate per stream.
func crashLoopRate() int {
	for _, s := range cluster.Scenarios {
		if s.Rate > 0 {
			return s.Rate
		}
	}
	return 0
}
