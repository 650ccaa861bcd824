package cluster_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nodelocal/nodelocal/test/cluster"
)

// TestZeroLossOnARealNode: with kubelet sending the signals and the DaemonSet
// controller ordering the pods, a pod's lookups (2,100 queries/s: UDP, TCP
// per query and persistent, to the kube-dns ClusterIP and 169.254.20.10, and
// an nslookup every 100 ms) across a rollout restart, an image upgrade, a
// ConfigMap reload, a pod deletion, an OOM kill and an uninstall, in each
// kube-proxy mode, meet each scenario's goal exactly; node-cache exits by
// itself within the grace period, and the rules are the same after each.
func TestZeroLossOnARealNode(t *testing.T) {
	const (
		rate    = 350 // per client: 6 clients
		loadFor = 25 * time.Second
		eventAt = 5 * time.Second
	)
	for _, mode := range []string{"iptables", "nftables"} {
		t.Run(mode, func(t *testing.T) {
			c := newCluster(t, mode)
			if _, err := c.KubectlOutput("create", "service", "clusterip", "web", "--tcp=80:80"); err != nil {
				t.Fatal(err)
			}
			if err := c.StartClient("client"); err != nil {
				t.Fatal(err)
			}
			if _, err := c.ApplyKustomize(); err != nil {
				t.Fatal(err)
			}
			if _, err := c.KubectlOutput("-n", "kube-system", "rollout", "status", "ds/node-local-dns", "--timeout=90s"); err != nil {
				t.Fatal(err)
			}
			waitInterception(t, c)
			out, err := c.KubectlOutput("-n", "kube-system", "get", "ds/node-local-dns", "-o", "jsonpath={.spec.template.spec.terminationGracePeriodSeconds}")
			grace, perr := time.ParseDuration(out + "s")
			if err != nil || perr != nil {
				t.Fatal(err, perr)
			}
			for i, s := range cluster.Scenarios {
				_, rulesBefore, err := c.NodeLocalState()
				if err != nil {
					t.Fatal(err)
				}
				run, err := c.RunScenario(s, "client", rate, loadFor, eventAt)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("%s (event took %v; %v): %s", s.Name, run.Took.Round(100*time.Millisecond), run.Stops, run.Load.Row())
				for _, r := range run.Load.Runs {
					if r.Err != nil {
						t.Fatalf("%s: client %s %s: %v", s.Name, r.Target, r.Transport, r.Err)
					}
				}
				if _, sent := run.Load.Failed(cluster.KubeDNSIP); sent < rate*3*int(max(loadFor, s.MinLoad).Seconds())*9/10 {
					t.Errorf("%s: only %d queries sent to the ClusterIP", s.Name, sent)
				}
				if err := s.Check(run); err != nil {
					t.Errorf("%s: %v", s.Name, err)
				}
				// kubelet's SIGTERM: node-cache exits by itself (lameduck,
				// handoff, teardown) well within the grace period.
				for _, stop := range run.Stops {
					if !stop.Signalled.IsZero() && (stop.ExitStatus != 0 || stop.SignalToExit() >= grace) {
						t.Errorf("%s: pod %s: %v, want exit 0 within the %v grace period", s.Name, stop.Pod, stop, grace)
					}
				}
				if i == len(cluster.Scenarios)-1 {
					break // the uninstall: the node must be left clean
				}
				_, rulesAfter, err := c.NodeLocalState()
				if err != nil {
					t.Fatal(err)
				}
				slices.Sort(rulesBefore)
				slices.Sort(rulesAfter)
				if !slices.Equal(rulesBefore, rulesAfter) {
					t.Errorf("%s: the rules changed:\nbefore:\n%s\nafter:\n%s", s.Name, strings.Join(rulesBefore, "\n"), strings.Join(rulesAfter, "\n"))
				}
			}
			assertClean(t, c)
		})
	}
}
