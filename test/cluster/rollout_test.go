package cluster_test

import (
	"fmt"
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
// ConfigMap reload, a pod deletion, an OOM kill, a crash loop and an
// uninstall, in each kube-proxy mode, meet each scenario's goal exactly (a
// miss is logged and the scenario runs once more; a second miss fails); in
// the OOM kill and the crash loop a hostNetwork pod sends the same load.
// kubelet's clusterDNS (where nslookup asks) is the kube-dns ClusterIP in
// iptables mode and 169.254.20.10 in nftables mode, as kops and kubespray
// run. node-cache exits by itself within the grace period, and the rules
// are the same after each scenario.
func TestZeroLossOnARealNode(t *testing.T) {
	const (
		rate    = 350 // per stream: 6 streams
		loadFor = 25 * time.Second
		eventAt = 5 * time.Second
	)
	for _, opts := range []cluster.Options{{ProxyMode: "iptables"}, {ProxyMode: "nftables", ClusterDNS: "169.254.20.10"}} {
		t.Run(opts.ProxyMode, func(t *testing.T) {
			c := newCluster(t, opts)
			if _, err := c.KubectlOutput("create", "service", "clusterip", "web", "--tcp=80:80"); err != nil {
				t.Fatal(err)
			}
			if err := c.StartClient("client"); err != nil {
				t.Fatal(err)
			}
			if err := c.StartHostClient(cluster.HostClient); err != nil {
				t.Fatal(err)
			}
			install(t, c)
			grace := terminationGrace(t, c)
			for i, s := range cluster.ZeroLossScenarios {
				last := i == len(cluster.ZeroLossScenarios)-1 // the uninstall: the node must be left clean
				_, rulesBefore, err := c.NodeLocalState()
				if err != nil {
					t.Fatal(err)
				}
				var misses []string
				for attempt := 1; attempt <= attempts; attempt++ {
					if last && attempt > 1 {
						install(t, c) // to uninstall again
					}
					miss := runScenario(t, c, s, []string{"client"}, rate, loadFor, eventAt, grace)
					if miss == "" {
						misses = nil
						break
					}
					misses = append(misses, fmt.Sprintf("run %d: %s", attempt, miss))
					t.Logf("%s missed its goal (run %d of at most %d): %s", s.Name, attempt, attempts, miss)
				}
				if len(misses) > 0 {
					t.Errorf("%s: missed its goal in every run:\n%s", s.Name, strings.Join(misses, "\n"))
				}
				if last {
					break
				}
				rulesAfter := rulesOnceKubeDNSConnectionsClosed(t, c)
				// The upstream pins follow kube-dns's pods and the flows seen
				// lately; they must only never be doubled.
				rulesBefore, _ = splitPins(rulesBefore)
				rulesAfter, pins := splitPins(rulesAfter)
				if !slices.Equal(rulesBefore, rulesAfter) {
					t.Errorf("%s: the rules changed:\nbefore:\n%s\nafter:\n%s", s.Name, strings.Join(rulesBefore, "\n"), strings.Join(rulesAfter, "\n"))
				}
				if len(slices.Compact(slices.Clone(pins))) != len(pins) {
					t.Errorf("%s: an upstream pin is doubled:\n%s", s.Name, strings.Join(pins, "\n"))
				}
			}
			assertClean(t, c)
		})
	}
}

// rulesOnceKubeDNSConnectionsClosed returns node-cache's rules once those
// that left kube-dns its open connections at a takeover (the OOM kill's
// restart) are gone: the load closed them, and a check (every 5 s) removes
// their rules.
func rulesOnceKubeDNSConnectionsClosed(t *testing.T, c *cluster.Cluster) []string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, rules, err := c.NodeLocalState()
		if err != nil {
			t.Fatal(err)
		}
		// The connections' rules, the jumps to them and their chain.
		left := slices.ContainsFunc(rules, func(r string) bool {
			return strings.Contains(r, "leave kube-dns its open connection") || strings.Contains(r, "NODELOCAL-KUBE-DNS-CONNS")
		})
		if !left {
			return rules
		}
		if time.Now().After(deadline) {
			t.Errorf("the rules leaving kube-dns its connections are still there 15 s after the load closed them:\n%s", strings.Join(rules, "\n"))
			return rules
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// splitPins sorts rules and takes the upstream pins out of them.
func splitPins(rules []string) (interception, pins []string) {
	slices.Sort(rules)
	for _, r := range rules {
		if strings.Contains(r, "reach the upstream if its Service goes") {
			pins = append(pins, r)
		} else {
			interception = append(interception, r)
		}
	}
	return interception, pins
}

// install applies manifests/base and waits until node-cache intercepts.
func install(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	if _, err := c.ApplyKustomize(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.KubectlOutput("-n", "kube-system", "rollout", "status", "ds/node-local-dns", "--timeout=90s"); err != nil {
		t.Fatal(err)
	}
	waitInterception(t, c)
}

// A scenario that misses its load goal runs once more: on this shared 2-core
// node the load keeps both CPUs busy, and a run can fall short of the load
// it must send (an OOM kill's run, as the cache thrashes at its memory limit).
// Every miss is logged; two in a row fail the test.
const attempts = 2

// runScenario runs s once and returns how it missed its load goal, if it
// did. How node-cache stops is checked strictly, in every run: each
// SIGTERMed instance exits by itself (lameduck, handoff, teardown), with
// status 0, within the grace period.
func runScenario(t *testing.T, c *cluster.Cluster, s cluster.Scenario, pods []string, rate int, loadFor, eventAt, grace time.Duration) string {
	t.Helper()
	run, err := c.RunScenario(s, pods, rate, loadFor, eventAt)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s (event took %v; %v): %s", s.Name, run.Took.Round(100*time.Millisecond), run.Stops, run.Load.Row())
	for _, r := range run.Load.Runs {
		if r.Err != nil {
			t.Fatalf("%s: client %s %s: %v", s.Name, r.Target, r.Transport, r.Err)
		}
	}
	for _, stop := range run.Stops {
		if !stop.Signalled.IsZero() && (stop.ExitStatus != 0 || stop.SignalToExit() >= grace) {
			t.Errorf("%s: pod %s: %v, want exit 0 within the %v grace period", s.Name, stop.Pod, stop, grace)
		}
	}
	var miss []string
	if load := max(loadFor, s.MinLoad); s.LoadOutlastsEvent && eventAt+run.Took > load {
		miss = append(miss, fmt.Sprintf("the event ended %v into the %v load: its end went unmeasured", (eventAt+run.Took).Round(100*time.Millisecond), load))
	}
	if s.Rate > 0 {
		rate = s.Rate
	}
	if _, sent := run.Load.Failed(cluster.KubeDNSIP); sent < rate*3*len(pods)*int(max(loadFor, s.MinLoad).Seconds())*9/10 {
		miss = append(miss, fmt.Sprintf("only %d queries sent to the ClusterIP", sent))
	}
	if err := s.Check(run); err != nil {
		logFirstFailures(t, run)
		miss = append(miss, err.Error())
	}
	return strings.Join(miss, "; ")
}

// logFirstFailures logs the first failed queries of each client, when they
// were sent in the run and how they failed, to line them up with the stops.
func logFirstFailures(t *testing.T, run cluster.ScenarioRun) {
	t.Helper()
	for _, r := range run.Load.Runs {
		if r.Result == nil {
			continue
		}
		for _, f := range r.Result.Failures[:min(5, len(r.Result.Failures))] {
			t.Logf("  %s %s: %s sent %v into the load (connecting %v, %s, from %s)", r.Target, r.Transport, f.Outcome,
				f.Sent.Sub(run.Start).Round(time.Millisecond), f.Connecting, f.Name, f.Local)
		}
	}
}
