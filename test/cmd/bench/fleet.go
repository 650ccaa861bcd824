package main

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nodelocal/nodelocal/test/cluster"
	"github.com/nodelocal/nodelocal/test/dnsload"
)

// Sizes of the fleet section.
const (
	fleetWorkers = 3
	fleetRate    = 25 // per client and stream, as TestFleetOnARealCluster: 6 streams on each worker
	// A working set of names each client looks up again and again, as a
	// fleet's pods do: pod-form names kube-dns answers (pods insecure) and
	// each cache keeps for 30 s; a cache restarted empty asks them all again.
	workingSet     = "A:198-19-3-" + dnsload.SetToken + ".default.pod.cluster.local"
	workingSetSize = 250
	workingSetRate = 100
	warmFor        = 20 * time.Second
)

// fleet runs, in each kube-proxy mode, on a control plane node with kube-dns's
// two pods and 3 workers with a client each: what the cache buys with
// kube-dns across the LAN; kube-dns's own changes without node-cache and
// with it; the fleet rollout with the shipped strategy, with maxUnavailable 1
// and with the upstream-style DaemonSet, and the queries reaching kube-dns
// meanwhile; node rotation. It draws failures per second across the fleet
// rollouts into svgPath.
func fleet(svgPath string) (string, error) {
	var b, costs, storm strings.Builder
	fmt.Fprintf(&b, "A control plane node and %d workers on this machine (`make cluster-up WORKERS=%d`), kube-dns's two pods (kubeadm's Corefile, "+
		"lameduck 5 s) on the control plane's node, so every miss crosses the LAN; a client pod on every worker sends %d queries/s per stream "+
		"(UDP, TCP persistent, TCP per query, each to the kube-dns ClusterIP and 169.254.20.10, cache hits and unique misses, cluster and external "+
		"names, 2 s timeout) and looks web.default.svc.cluster.local up every 100 ms with nslookup (1 s timeout). node-cache is installed with "+
		"manifests/overlays/node-readiness. Failed / sent, all clients.\n\n", fleetWorkers, fleetWorkers, fleetRate)
	b.WriteString("| kube-proxy | scenario | ClusterIP | 169.254.20.10 | nslookup | event took | lookup p50 / p99 (worst client: UDP; TCP per query) | goal |\n|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(&costs, "\nWhat the cache buys with kube-dns across the LAN: the client on the first worker looks up 3 names again and again through the "+
		"kube-dns ClusterIP, over UDP at %d queries/s, then over TCP with a connection per query at %d/s, %v each. Conntrack entries: the "+
		"pod's DNS flows in its node's table right after; queries reaching kube-dns: both pods.\n\n", cluster.CostUDPRate, cluster.CostTCPRate, cluster.CostFor)
	costs.WriteString("| kube-proxy | node-cache | UDP p50 / p99 | TCP per query p50 / p99 | failed | conntrack entries | queries reaching kube-dns |\n|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(&storm, "\nWhat a fleet rollout costs kube-dns: besides the load above, each client looks up a working set of %d names (`%s`) at %d/s over "+
		"UDP, from %v before the run; queries kube-dns's pods counted per second (coredns_dns_requests_total), before the rollout (%v of the "+
		"whole load, the first 2 s left out), during it and after it, until the load ends.\n\n", workingSetSize, workingSet, workingSetRate, warmFor, rolloutEventAt)
	storm.WriteString("| kube-proxy | rollout | before (mean) | during (mean / peak) | after (mean) | peak / before |\n|---|---|---|---|---|---|\n")
	var panels []cluster.Panel
	var boot []string
	for _, opts := range []cluster.Options{{ProxyMode: "iptables"}, {ProxyMode: "nftables", ClusterDNS: "169.254.20.10"}} {
		mode := opts.ProxyMode
		opts.Workers = fleetWorkers
		opts.Dir, opts.Name = cluster.TestDir(0), fmt.Sprintf("nlc%dx0", os.Getpid())
		opts.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, "   "+f+"\n", a...) }
		available := memAvailable()
		start := time.Now()
		c, err := cluster.Up(opts)
		if err != nil {
			return b.String(), err
		}
		boot = append(boot, fmt.Sprintf("%s mode: %v, %d MiB", mode, time.Since(start).Round(time.Second), (available-memAvailable())>>20))
		err = func() error {
			defer c.Down()
			f := fleetRun{c: c, mode: mode, table: &b, costs: &costs, storm: &storm}
			series, err := f.run()
			panels = append(panels, cluster.Panel{Title: fmt.Sprintf("fleet rollout restart, kube-proxy %s mode: failed queries per second, all workers", mode), Series: series})
			return err
		}()
		if err != nil {
			return b.String(), fmt.Errorf("%s mode: %w", mode, err)
		}
	}
	if err := os.WriteFile(svgPath, []byte(cluster.SVG("Failed DNS queries per second during a DaemonSet rollout across a control plane node and 3 workers", panels)), 0o644); err != nil {
		return b.String(), err
	}
	fmt.Fprintf(&b, "\nFailures per second across the fleet rollouts: %s. Boot to Ready with kube-dns, and memory taken (MemAvailable): %s.\n",
		svgPath, strings.Join(boot, "; "))
	return b.String() + storm.String() + costs.String(), nil
}

// fleetRun is one kube-proxy mode of the fleet section.
type fleetRun struct {
	c                   *cluster.Cluster
	mode                string
	pods                []string
	table, costs, storm *strings.Builder
}

func (f *fleetRun) run() ([]cluster.Series, error) {
	c := f.c
	if _, err := c.KubectlOutput("create", "service", "clusterip", "web", "--tcp=80:80"); err != nil {
		return nil, err
	}
	var err error
	if f.pods, err = c.StartFleetClients(); err != nil {
		return nil, err
	}
	if err := f.cost("not installed"); err != nil {
		return nil, err
	}
	for _, s := range cluster.KubeDNSScenarios {
		if _, err := f.scenario(cluster.Baseline(s)); err != nil {
			return nil, err
		}
	}
	if _, err := c.ApplyKustomizeOf("overlays/node-readiness"); err != nil {
		return nil, err
	}
	if err := f.rolledOut(); err != nil {
		return nil, err
	}
	if err := f.cost("manifests/overlays/node-readiness"); err != nil {
		return nil, err
	}
	var series []cluster.Series
	for i, s := range cluster.FleetScenarios {
		if i == 0 {
			s.MinLoad += rolloutEventAt
			run, err := f.rollout(s, "shipped: maxSurge 1, maxUnavailable 0")
			if err != nil {
				return series, err
			}
			series = append(series, cluster.Series{Label: "node-cache, shipped strategy (maxSurge 1)", Color: "#1f77b4", Values: run.Load.FailuresPerSecond()})
			continue
		}
		if _, err := f.scenario(s); err != nil {
			return series, err
		}
	}
	if _, err := f.scenario(cluster.NodeRotation); err != nil {
		return series, err
	}
	if f.pods, err = c.StartFleetClients(); err != nil { // the new worker's
		return series, err
	}
	// maxUnavailable 1, as upstream-style clusters run: each node's own gap.
	patch := `{"spec":{"updateStrategy":{"rollingUpdate":{"maxSurge":0,"maxUnavailable":1}}}}`
	if _, err := c.KubectlOutput("-n", "kube-system", "patch", "ds/node-local-dns", "-p", patch); err != nil {
		return series, err
	}
	unavailable := cluster.FleetScenarios[0]
	unavailable.Name = strings.Replace(unavailable.Name, "maxSurge 1, maxUnavailable 0", "maxSurge 0, maxUnavailable 1", 1)
	unavailable.Goal, unavailable.Check = "ClusterIP 0 failed; 169.254.20.10 only in each node's own gap", f.onlyInOwnGaps
	unavailable.MinLoad = 100 * time.Second // each node waits for its new pod's readiness
	run, err := f.rollout(unavailable, "maxSurge 0, maxUnavailable 1")
	if err != nil {
		return series, err
	}
	series = append(series, cluster.Series{Label: "node-cache, maxUnavailable 1", Color: "#ff7f0e", Values: run.Load.FailuresPerSecond()})
	// The upstream-style DaemonSet (maxUnavailable 10%: one node at a time here).
	if _, err := c.KubectlOutput("delete", "-k", c.Dir+"/overlay", "--wait=true"); err != nil {
		return series, err
	}
	if err := c.WaitGone("k8s-app=node-local-dns", 90*time.Second); err != nil {
		return series, err
	}
	upstream, err := upstreamStyleFixture()
	if err != nil {
		return series, err
	}
	if err := c.Apply(upstream); err != nil {
		return series, err
	}
	if err := f.rolledOut(); err != nil {
		return series, err
	}
	upstreamStyle := cluster.FleetScenarios[0]
	upstreamStyle.Name = "upstream-style DaemonSet (maxUnavailable 10%, no lameduck, unconditional rules): kubectl rollout restart across the fleet"
	upstreamStyle.Goal, upstreamStyle.Check = "measured, for comparison", nil
	upstreamStyle.MinLoad += rolloutEventAt
	if run, err = f.rollout(upstreamStyle, "upstream-style DaemonSet"); err != nil {
		return series, err
	}
	return append(series, cluster.Series{Label: "upstream-style DaemonSet", Color: "#d62728", Values: run.Load.FailuresPerSecond()}), nil
}

// onlyInOwnGaps checks a rollout with maxUnavailable 1: nothing failed on
// the ClusterIP (nor nslookup through it), and a client lost queries to
// 169.254.20.10 only while its own node had no node-cache.
func (f *fleetRun) onlyInOwnGaps(run cluster.ScenarioRun) error {
	var missed []string
	if failed, sent := run.Load.Failed(cluster.KubeDNSIP); failed > 0 {
		missed = append(missed, fmt.Sprintf("%d of %d queries to the ClusterIP failed", failed, sent))
	}
	if run.ClusterDNS == cluster.KubeDNSIP && run.Load.NslookupFail > 0 {
		missed = append(missed, fmt.Sprintf("%d of %d nslookups failed", run.Load.NslookupFail, run.Load.NslookupSent))
	}
	outside, err := f.c.FailuresOutsideOwnGaps(run, "169.254.20.10")
	switch {
	case err != nil:
		missed = append(missed, err.Error())
	case len(outside) > 0:
		missed = append(missed, fmt.Sprintf("%d failed queries to 169.254.20.10 outside their node's own gap: %s", len(outside), strings.Join(outside[:min(3, len(outside))], "; ")))
	case len(missed) > 0:
		missed = append(missed, "169.254.20.10 only in each node's own gap (met)") // the rest of the goal, said apart
	}
	if len(missed) > 0 {
		return errors.New(strings.Join(missed, "; "))
	}
	return nil
}

func (f *fleetRun) rolledOut() error {
	_, err := f.c.KubectlOutput("-n", "kube-system", "rollout", "status", "ds/node-local-dns", "--timeout=120s")
	return err
}

// cost measures what the first worker's client's lookups cost.
func (f *fleetRun) cost(label string) error {
	cost, err := f.c.MeasureLookups(f.pods[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(f.costs, "| %s | %s | %v / %v | %v / %v | %d | %d | %.0f |\n", f.mode, label,
		cost.UDP.Latencies.P50.Round(time.Microsecond), cost.UDP.Latencies.P99.Round(time.Microsecond),
		cost.TCP.Latencies.P50.Round(time.Microsecond), cost.TCP.Latencies.P99.Round(time.Microsecond),
		cost.UDP.Failed()+cost.TCP.Failed(), cost.Conntrack, cost.KubeDNSQueries)
	return nil
}

// scenario runs s from every client and writes its row.
func (f *fleetRun) scenario(s cluster.Scenario) (cluster.ScenarioRun, error) {
	return f.scenarioAt(s, 3*time.Second)
}

// scenarioAt is scenario with the event eventAt into the load.
func (f *fleetRun) scenarioAt(s cluster.Scenario, eventAt time.Duration) (cluster.ScenarioRun, error) {
	pods := f.pods
	if s.Name == cluster.NodeRotation.Name {
		pods = pods[:len(pods)-1] // the rotated worker's client goes with it
	}
	run, err := f.c.RunScenario(s, pods, fleetRate, 20*time.Second, eventAt)
	if err != nil {
		return run, err
	}
	goal := s.Goal
	if load := max(20*time.Second, s.MinLoad); eventAt+run.Took > load {
		goal += fmt.Sprintf(" (the event outlasted the %v load)", load)
	}
	if s.Check != nil {
		if err := s.Check(run); err != nil {
			goal += " (missed: " + strings.ReplaceAll(err.Error(), "\n", "; ") + ")"
		} else {
			goal += " (met)"
		}
	}
	fmt.Fprintf(os.Stderr, "   %s: %s\n", s.Name, run.Load.Row())
	cf, cs := run.Load.Failed(cluster.KubeDNSIP)
	lf, ls := run.Load.Failed("169.254.20.10")
	nslookup := fmt.Sprintf("%d / %d", run.Load.NslookupFail, run.Load.NslookupSent)
	if s.Targets != nil && !slices.Contains(s.Targets, run.ClusterDNS) {
		nslookup = "- (kubelet's clusterDNS is " + run.ClusterDNS + ")"
	}
	fmt.Fprintf(f.table, "| %s | %s | %d / %d | %d / %d | %s | %v | %s | %s |\n", f.mode, s.Name, cf, cs, lf, ls,
		nslookup, run.Took.Round(100*time.Millisecond), worstLatencies(run.Load), goal)
	return run, nil
}

// rollout runs a fleet rollout scenario with the working set loaded, and
// writes what kube-dns saw before, during and after it.
func (f *fleetRun) rollout(s cluster.Scenario, label string) (cluster.ScenarioRun, error) {
	load := warmFor + rolloutEventAt + s.MinLoad + 10*time.Second
	var wg sync.WaitGroup
	for _, pod := range f.pods {
		wg.Go(func() {
			f.c.Exec(pod, "dnsload", "-target", cluster.KubeDNSIP+":53", "-queries", workingSet, "-set", strconv.Itoa(workingSetSize),
				"-rate", strconv.Itoa(workingSetRate), "-duration", load.String(), "-timeout", "2s")
		})
	}
	time.Sleep(warmFor)
	stop, err := f.c.SampleKubeDNSRate()
	if err != nil {
		return cluster.ScenarioRun{}, err
	}
	run, err := f.scenarioAt(s, rolloutEventAt)
	samples := stop()
	wg.Wait()
	if err != nil {
		return run, err
	}
	// Before: the load running, the event not yet (its first 2 s starting).
	eventStart := run.Start.Add(rolloutEventAt)
	eventEnd := eventStart.Add(run.Took)
	var before, during, after []float64
	for _, s := range samples {
		switch {
		case s.At.Before(run.Start.Add(2 * time.Second)):
		case s.At.Before(eventStart):
			before = append(before, s.PerSecond)
		case !s.At.After(eventEnd):
			during = append(during, s.PerSecond)
		default:
			after = append(after, s.PerSecond)
		}
	}
	if len(before) == 0 || len(during) == 0 {
		return run, fmt.Errorf("%d samples of kube-dns's rate: none before or during the rollout", len(samples))
	}
	peak := slices.Max(during)
	fmt.Fprintf(f.storm, "| %s | %s | %.0f/s | %.0f/s / %.0f/s | %.0f/s | %.1f |\n", f.mode, label, mean(before), mean(during), peak, mean(after), peak/mean(before))
	return run, nil
}

// rolloutEventAt is how long the load of a fleet rollout runs before it:
// the steady rate kube-dns sees.
const rolloutEventAt = 10 * time.Second

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}

// worstLatencies are the highest p50 and p99 of any client's UDP and TCP
// per query streams.
func worstLatencies(l cluster.PodLoad) string {
	worst := map[dnsload.Transport][2]time.Duration{}
	for _, r := range l.Runs {
		if r.Result == nil {
			continue
		}
		w := worst[r.Transport]
		worst[r.Transport] = [2]time.Duration{max(w[0], r.Result.Latencies.P50), max(w[1], r.Result.Latencies.P99)}
	}
	u, t := worst[dnsload.UDP], worst[dnsload.TCPPerQuery]
	return fmt.Sprintf("%v / %v; %v / %v", u[0].Round(10*time.Microsecond), u[1].Round(100*time.Microsecond),
		t[0].Round(10*time.Microsecond), t[1].Round(100*time.Microsecond))
}

// memAvailable is the machine's MemAvailable in bytes.
func memAvailable() int64 {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
