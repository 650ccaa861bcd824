package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Scenario disturbs node-cache on the node while a pod load runs.
type Scenario struct {
	Name string
	Goal string
	// Prepare, if set, runs before the load starts.
	Prepare func(c *Cluster) error
	// Event runs while client runs the load.
	Event func(c *Cluster, client string) error
	// Check says how the run missed the goal, if it did.
	Check func(run ScenarioRun) error
	// MinLoad is how long the load must run at least, when the event takes
	// longer than the usual load (a ConfigMap edit reaches the pod through
	// kubelet, then the reload plugin's next poll).
	MinLoad time.Duration
	// HostClient: the load runs from the hostNetwork client pod too
	// (HostClient, started by the caller).
	HostClient bool
	// LoadOutlastsEvent: the run misses its goal when the event ends after
	// the load, whose end would go unmeasured (the fleet's rollouts, whose
	// length varies with the machine's load).
	LoadOutlastsEvent bool
	// Targets, if set, are the load's targets instead of LoadTargets (the
	// ClusterIP only, where no node-cache runs).
	Targets []string
	// Rate, if set, is each client's rate instead of the caller's: kube-dns
	// answers everything while node-cache is down, and on this 2-core
	// machine one kube-dns pod times out now and then above about 2,000
	// queries/s.
	Rate int
}

// Scenarios are what operators do to the DaemonSet of manifests/base
// (deployed through ApplyKustomize), in the order they run: each leaves the
// DaemonSet serving for the next, but the uninstall, which comes last.
var Scenarios = []Scenario{
	{Name: "kubectl rollout restart ds/node-local-dns (maxSurge 1, maxUnavailable 0)", Goal: "0 failed", Event: func(c *Cluster, _ string) error {
		if _, err := c.KubectlOutput("-n", "kube-system", "rollout", "restart", "ds/node-local-dns"); err != nil {
			return err
		}
		return c.rolledOut()
	}, Check: noFailures(LoadTargets...)},
	{Name: "kubectl set image to another tag of the same archive", Goal: "0 failed", Event: func(c *Cluster, _ string) error {
		next := strings.TrimSuffix(NodeCacheImage, ":e2e") + ":e2e-next"
		if _, err := c.Ctr("images", "tag", "--force", NodeCacheImage, next); err != nil {
			return err
		}
		if _, err := c.KubectlOutput("-n", "kube-system", "set", "image", "ds/node-local-dns", "node-cache="+next); err != nil {
			return err
		}
		return c.rolledOut()
	}, Check: noFailures(LoadTargets...)},
	// kubelet writes a ConfigMap's edit into the pod's volume when it syncs
	// the pod: every minute or so, or at once when the pod changes, which an
	// annotation does (as operators do to skip the wait). The reload plugin
	// polls the file every 30 s (+-7.5 s).
	{Name: "ConfigMap edit picked up by the reload plugin", Goal: "0 failed", MinLoad: 55 * time.Second, LoadOutlastsEvent: true, Event: func(c *Cluster, _ string) error {
		before := strings.Count(c.nodeCacheLog(), "Reloading complete")
		// A TTL cap one second lower, or back.
		corefile := c.corefileTemplate()
		if edited := strings.Replace(corefile, "success 9984 30", "success 9984 29", 1); edited != corefile {
			corefile = edited
		} else {
			corefile = strings.Replace(corefile, "success 9984 29", "success 9984 30", 1)
		}
		patch := `[{"op": "replace", "path": "/data/Corefile", "value": ` + jsonString(corefile) + `}]`
		if _, err := c.KubectlOutput("-n", "kube-system", "patch", "configmap", "node-local-dns", "--type=json", "-p", patch); err != nil {
			return err
		}
		if _, err := c.KubectlOutput("-n", "kube-system", "annotate", "pod", "-l", "k8s-app=node-local-dns", "--overwrite",
			"nodelocal.test/configmap-edited="+time.Now().Format(time.RFC3339Nano)); err != nil {
			return err
		}
		return c.waitFor("node-cache reloading the edited ConfigMap", "kubelet", 45*time.Second, func() error {
			if n := strings.Count(c.nodeCacheLog(), "Reloading complete"); n <= before {
				return fmt.Errorf("%d reloads", n)
			}
			return nil
		})
	}, Check: noFailures(LoadTargets...)},
	{Name: "kubectl delete pod (eviction, drain); the DaemonSet recreates it", Goal: "ClusterIP 0 failed; link-local only in the gap", Event: func(c *Cluster, _ string) error {
		if _, err := c.KubectlOutput("-n", "kube-system", "delete", "pod", "-l", "k8s-app=node-local-dns", "--wait=false"); err != nil {
			return err
		}
		time.Sleep(time.Second) // the DaemonSet controller sees the deletion
		return c.rolledOut()
	}, Check: noFailures(KubeDNSIP)},
	{Name: "OOM kill: the kernel kills node-cache at its memory limit (lowered to " + oomLimit + "), kubelet restarts it",
		Goal: "both addresses, pod and hostNetwork pod: only queries in flight at the kill; no duplicate rule after", HostClient: true, Prepare: func(c *Cluster) error {
			// add: upstream's manifest sets no limits at all
			patch := `[{"op": "add", "path": "/spec/template/spec/containers/0/resources/limits", "value": {"memory": "` + oomLimit + `"}}]`
			if _, err := c.KubectlOutput("-n", "kube-system", "patch", "ds/node-local-dns", "--type=json", "-p", patch); err != nil {
				return err
			}
			return c.rolledOut()
		}, Event: func(c *Cluster, client string) error { return c.fillUntilOOMKilled(client) }, Check: onlyInFlightAtTheKill},
	{Name: fmt.Sprintf("crash loop: node-cache SIGKILLed each time kubelet starts it again, %d times (back-off 10 s, 20 s, 40 s), then the pod deleted", crashLoopKills),
		Goal: "both addresses, pod and hostNetwork pod: only queries in flight at a kill", HostClient: true, MinLoad: 90 * time.Second, Rate: 100,
		Event: func(c *Cluster, _ string) error { return c.crashLoop(crashLoopKills) }, Check: onlyInFlightAtTheKill},
	{Name: "kubectl delete -k (uninstall)", Goal: "ClusterIP 0 failed; node left as before", Event: func(c *Cluster, _ string) error {
		if _, err := c.KubectlOutput("delete", "-k", c.path("overlay"), "--wait=true"); err != nil {
			return err
		}
		return c.WaitGone("k8s-app=node-local-dns", 60*time.Second)
	}, Check: noFailures(KubeDNSIP)},
}

// SurgesInOneLoad is Scenarios' two surge rollouts, the restart and the
// image change, one after the other under one load, as
// TestZeroLossOnARealNode asserts them (the bench runs them apart, for each
// one's numbers). Each event took 11 to 14 s on this machine.
var SurgesInOneLoad = InOneLoad("kubectl rollout restart ds/node-local-dns, then set image to another tag of the same archive (maxSurge 1, maxUnavailable 0), under one load",
	42*time.Second, Scenarios[0], Scenarios[1])

// ZeroLossScenarios are Scenarios as TestZeroLossOnARealNode runs them: the
// surges under one load (SurgesInOneLoad), then the others in their order.
var ZeroLossScenarios = append([]Scenario{SurgesInOneLoad}, Scenarios[2:]...)

// InOneLoad runs the events of scenarios that share a goal one after the
// other under one load of at least minLoad, which must outlast them: one
// load instead of several, where each scenario's own load is mostly the
// wait for its event.
func InOneLoad(name string, minLoad time.Duration, scenarios ...Scenario) Scenario {
	for _, s := range scenarios[1:] {
		if s.Goal != scenarios[0].Goal || s.Prepare != nil || s.HostClient != scenarios[0].HostClient || s.Rate != scenarios[0].Rate ||
			!slices.Equal(s.Targets, scenarios[0].Targets) {
			panic(fmt.Sprintf("InOneLoad %q: %q differs from %q in its goal or its load", name, s.Name, scenarios[0].Name))
		}
	}
	return Scenario{Name: name, Goal: scenarios[0].Goal, MinLoad: minLoad, LoadOutlastsEvent: true, HostClient: scenarios[0].HostClient,
		Rate: scenarios[0].Rate, Targets: scenarios[0].Targets, Prepare: scenarios[0].Prepare, Check: scenarios[0].Check,
		Event: func(c *Cluster, client string) error {
			for _, s := range scenarios {
				if err := s.Event(c, client); err != nil {
					return fmt.Errorf("%s: %w", s.Name, err)
				}
			}
			return nil
		}}
}

// noFailures: no query to targets fails, and no nslookup when kubelet's
// clusterDNS is one of them.
func noFailures(targets ...string) func(ScenarioRun) error {
	return func(run ScenarioRun) error {
		var errs []error
		for _, target := range targets {
			if f, sent := run.Load.Failed(target); f > 0 {
				errs = append(errs, fmt.Errorf("%d of %d queries to %s failed", f, sent, target))
			}
		}
		if run.Load.NslookupFail > 0 && slices.Contains(targets, run.ClusterDNS) {
			errs = append(errs, fmt.Errorf("%d of %d nslookups failed: %s", run.Load.NslookupFail, run.Load.NslookupSent,
				strings.Join(run.Load.NslookupFailures[:min(5, len(run.Load.NslookupFailures))], "; ")))
		}
		return errors.Join(errs...)
	}
}

// onlyInFlightAtTheKill: the only queries that fail, to either address and
// from any client, were sent at most a timeout (2 s, and a second for the
// exit event's stamp) before a kill, and at most the one nslookup per
// client under way at each kill.
func onlyInFlightAtTheKill(run ScenarioRun) error {
	var kills []time.Time
	for _, s := range run.Stops {
		if s.Signalled.IsZero() && s.ExitStatus == 137 {
			kills = append(kills, s.Exited)
		}
	}
	if len(kills) == 0 {
		return fmt.Errorf("no container was killed (SIGKILL, no SIGTERM): %v", run.Stops)
	}
	inFlight := func(sent time.Time) bool {
		return slices.ContainsFunc(kills, func(k time.Time) bool { return !sent.Before(k.Add(-3*time.Second)) && !sent.After(k) })
	}
	var errs []error
	clients := map[string]bool{}
	for _, r := range run.Load.Runs {
		clients[r.Client] = true
		if r.Result == nil {
			continue
		}
		var outside []string
		for _, sent := range r.Result.FailedAt() {
			if !inFlight(sent) {
				outside = append(outside, sent.Sub(run.Start).Round(100*time.Millisecond).String())
			}
		}
		if len(outside) > 0 {
			errs = append(errs, fmt.Errorf("%s to %s %s: %d failed queries sent outside the 3 s before a kill (kills at %s into the load), at %s",
				r.Client, r.Target, r.Transport, len(outside), sinceStart(run.Start, kills), strings.Join(outside[:min(5, len(outside))], " ")))
		}
	}
	if limit := len(kills) * len(clients); run.Load.NslookupFail > limit {
		errs = append(errs, fmt.Errorf("%d of %d nslookups failed, want at most the %d under way at the kills", run.Load.NslookupFail, run.Load.NslookupSent, limit))
	}
	return errors.Join(errs...)
}

func sinceStart(start time.Time, ts []time.Time) string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Sub(start).Round(100*time.Millisecond).String())
	}
	return strings.Join(out, ", ")
}

func (c *Cluster) nodeCacheLog() string {
	out, _ := c.KubectlOutput("-n", "kube-system", "logs", "ds/node-local-dns")
	return out
}

func (c *Cluster) corefileTemplate() string {
	out, _ := c.KubectlOutput("-n", "kube-system", "get", "configmap", "node-local-dns", "-o", "jsonpath={.data.Corefile}")
	return out
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// rolledOut waits until the DaemonSet's pods are all updated and ready.
func (c *Cluster) rolledOut() error {
	_, err := c.KubectlOutput("-n", "kube-system", "rollout", "status", "ds/node-local-dns", "--timeout=90s")
	return err
}

// ScenarioRun is what a scenario's load saw, when the load started, how long
// the event took (for a rollout: until it was done) and how the node-cache
// containers running at the start ended.
type ScenarioRun struct {
	ClusterDNS string // kubelet's clusterDNS: where the pods' resolver (nslookup) asks
	Load       PodLoad
	Start      time.Time
	Took       time.Duration
	Stops      []Stop
}

// RunScenario prepares s, then runs a pod load from each of pods for d and
// s's event after eventAt; the event gets the first pod.
func (c *Cluster) RunScenario(s Scenario, pods []string, rate int, d, eventAt time.Duration) (ScenarioRun, error) {
	var run ScenarioRun
	if s.Prepare != nil {
		if err := s.Prepare(c); err != nil {
			return run, fmt.Errorf("%s: preparing: %w", s.Name, err)
		}
	}
	stops, err := c.watchStops()
	if err != nil {
		return run, err
	}
	if s.Rate > 0 {
		rate = s.Rate
	}
	targets := s.Targets
	if targets == nil {
		targets = LoadTargets
	}
	if s.HostClient {
		pods = append(slices.Clone(pods), HostClient)
	}
	run.Start, run.ClusterDNS = time.Now(), c.clusterDNS()
	var results []<-chan PodLoad
	for _, pod := range pods {
		results = append(results, c.StartPodLoad(pod, targets, rate, max(d, s.MinLoad)))
	}
	time.Sleep(eventAt)
	eventStart := time.Now()
	err = s.Event(c, pods[0])
	run.Took = time.Since(eventStart)
	for _, r := range results {
		run.Load.merge(<-r)
	}
	run.Stops = stops.stop()
	if err != nil {
		return run, fmt.Errorf("%s: %w", s.Name, err)
	}
	return run, nil
}

// Row is the scenario's result as a line of the table: failed/sent per
// target, per client kind, and the nslookup client.
func (l PodLoad) Row() string {
	var b strings.Builder
	for _, target := range LoadTargets {
		f, s := l.Failed(target)
		fmt.Fprintf(&b, "%s %d/%d; ", target, f, s)
	}
	for _, r := range l.Runs {
		if r.Result == nil {
			fmt.Fprintf(&b, "%s %s: %v; ", r.Target, r.Transport, r.Err)
		} else if r.Result.Failed() > 0 {
			fmt.Fprintf(&b, "%s %s failed %d in seconds %v (%s); ", r.Target, r.Transport, r.Result.Failed(), r.Result.FailedSeconds(), r.Result.FailedOutcomes())
		}
	}
	fmt.Fprintf(&b, "nslookup every 100 ms: %d/%d failed", l.NslookupFail, l.NslookupSent)
	if len(l.NslookupFailures) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(l.NslookupFailures[:min(5, len(l.NslookupFailures))], "; "))
	}
	return b.String()
}
