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
		"web.default.svc.cluster.local up every 100 ms with nslookup (1 s timeout, no retry); the event comes %v in. Failed / sent.\n\n",
		cluster.KubernetesVersion, 6*rate, d, d/4)
	b.WriteString("| kube-proxy | scenario | ClusterIP | 169.254.20.10 | nslookup | event took | goal |\n|---|---|---|---|---|---|---|\n")
	var panels []cluster.Panel
	upstream, err := upstreamStyleFixture()
	if err != nil {
		return "", err
	}
	for _, mode := range []string{"iptables", "nftables"} {
		c, err := cluster.Up(cluster.Options{ProxyMode: mode, Dir: cluster.TestDir(0), Name: fmt.Sprintf("nlc%dx0", os.Getpid()),
			Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, "   "+f+"\n", a...) }})
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
			row := func(name, goal string, load cluster.PodLoad, took time.Duration) {
				cf, cs := load.Failed(cluster.KubeDNSIP)
				lf, ls := load.Failed("169.254.20.10")
				fmt.Fprintf(&b, "| %s | %s | %d / %d | %d / %d | %d / %d | %v | %s |\n", mode, name, cf, cs, lf, ls,
					load.NslookupFail, load.NslookupSent, took.Round(100*time.Millisecond), goal)
			}
			// The upstream-style DaemonSet first, then ours.
			if err := c.Apply(upstream); err != nil {
				return err
			}
			if _, err := c.KubectlOutput("-n", "kube-system", "rollout", "status", "ds/node-local-dns", "--timeout=90s"); err != nil {
				return err
			}
			baseline := cluster.Scenarios[0]
			baseline.Name = "upstream-style DaemonSet (maxUnavailable 10%, no lameduck, unconditional rules), rollout restart"
			baseline.Goal = "measured, for comparison"
			baseLoad, took, err := c.RunScenario(baseline, "client", rate, d, d/4)
			if err != nil {
				return err
			}
			row(baseline.Name, baseline.Goal, baseLoad, took)
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
			for i, s := range cluster.Scenarios {
				load, took, err := c.RunScenario(s, "client", rate, d, d/4)
				if err != nil {
					return err
				}
				row(s.Name, s.Goal, load, took)
				if i == 0 {
					panels = append(panels, cluster.Panel{Title: fmt.Sprintf("rollout restart, kube-proxy %s mode: failed queries per second", mode),
						Series: []cluster.Series{
							{Label: "node-cache (manifests/base)", Color: "#1f77b4", Values: load.FailuresPerSecond()},
							{Label: "upstream-style DaemonSet", Color: "#d62728", Values: baseLoad.FailuresPerSecond()},
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
	return b.String(), nil
}
