package cluster_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nodelocal/nodelocal/test/cluster"
)

// TestFleetOnARealCluster: on a control plane node and 3 workers, in each
// kube-proxy mode, with kube-dns's two pods on the control plane's node (every
// miss crosses the LAN) and a client on every worker (UDP, TCP per query and
// persistent to both addresses, cluster and external names, hits and unique
// misses, and an nslookup every 100 ms), no query fails across a rollout
// restart of node-local-dns over the fleet, and across kube-dns's own
// rollout, its scaling 2 -> 1 -> 2 and the deletion of one of its pods (one
// after the other under one load) while the caches hold TCP connections to
// it; then, in node rotation, the last worker is drained and uncordoned, then
// drained and terminated, and a new one joins with node-cache's startup
// taint: a pod scheduled on the uncordoned worker and one on the new worker
// resolve from their first lookup, and no query of the other workers'
// clients fails.
func TestFleetOnARealCluster(t *testing.T) {
	const (
		rate    = 25               // per client and stream: 18 streams; more starves this 2-core machine at each event
		loadFor = 20 * time.Second // each scenario's MinLoad is longer
		eventAt = 3 * time.Second
	)
	for _, opts := range []cluster.Options{{ProxyMode: "iptables"}, {ProxyMode: "nftables", ClusterDNS: "169.254.20.10"}} {
		opts.Workers = 3
		t.Run(opts.ProxyMode, func(t *testing.T) {
			start := time.Now()
			c := newCluster(t, opts)
			t.Logf("%d nodes Ready in %v", len(c.Nodes()), time.Since(start).Round(time.Second))
			if _, err := c.KubectlOutput("create", "service", "clusterip", "web", "--tcp=80:80"); err != nil {
				t.Fatal(err)
			}
			pods, err := c.StartFleetClients()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.ApplyKustomizeOf("overlays/node-readiness"); err != nil {
				t.Fatal(err)
			}
			if _, err := c.KubectlOutput("-n", "kube-system", "rollout", "status", "ds/node-local-dns", "--timeout=120s"); err != nil {
				t.Fatal(err)
			}
			waitInterception(t, c)
			grace := terminationGrace(t, c)
			for _, s := range []cluster.Scenario{cluster.FleetScenarios[0], cluster.KubeDNSInOneLoad, cluster.NodeRotation} {
				clients := pods
				if s.Name == cluster.NodeRotation.Name {
					clients = pods[:len(pods)-1] // the rotated worker's client goes with it
				}
				var misses []string
				for attempt := 1; attempt <= attempts; attempt++ {
					miss := runScenario(t, c, s, clients, rate, loadFor, eventAt, grace)
					if miss == "" {
						misses = nil
						break
					}
					misses = append(misses, fmt.Sprintf("run %d: %s", attempt, miss))
					t.Logf("%s missed its goal (run %d of at most %d): %s", s.Name, attempt, attempts, miss)
					if s.Name == cluster.NodeRotation.Name {
						break // it cannot run again: its worker is gone
					}
				}
				if len(misses) > 0 {
					t.Errorf("%s: missed its goal in every run:\n%s", s.Name, strings.Join(misses, "\n"))
				}
			}
		})
	}
}

// terminationGrace is node-local-dns's grace period.
func terminationGrace(t *testing.T, c *cluster.Cluster) time.Duration {
	t.Helper()
	out, err := c.KubectlOutput("-n", "kube-system", "get", "ds/node-local-dns", "-o", "jsonpath={.spec.template.spec.terminationGracePeriodSeconds}")
	grace, perr := time.ParseDuration(out + "s")
	if err != nil || perr != nil {
		t.Fatal(err, perr)
	}
	return grace
}
