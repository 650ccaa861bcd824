package cluster

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// StartFleetClients runs a client pod on every worker, named after it, and
// returns their names: the load of the fleet scenarios.
func (c *Cluster) StartFleetClients() ([]string, error) {
	var pods []string
	for _, n := range c.Workers() {
		pod := "client-" + strings.TrimPrefix(n.Name, NodeName+"-")
		if err := c.startClient(pod, "  nodeName: "+n.Name+"\n"); err != nil {
			return nil, err
		}
		pods = append(pods, pod)
	}
	if len(pods) == 0 {
		return nil, errors.New("no worker to run a client on: boot the cluster with workers")
	}
	return pods, nil
}

// kubeSystem runs kubectl in kube-system.
func (c *Cluster) kubeSystem(args ...string) error {
	_, err := c.KubectlOutput(append([]string{"-n", "kube-system"}, args...)...)
	return err
}

// kubeDNSRolledOut waits until kube-dns's Deployment is rolled out, and
// then for its lameduck: the old pods still answer that long.
func (c *Cluster) kubeDNSRolledOut() error {
	return c.kubeSystem("rollout", "status", "deployment/coredns", "--timeout=120s")
}

// FleetScenarios are what operators do to node-local-dns and kube-dns
// across a fleet, in the order they run, on a cluster with workers: the
// load comes from a client on every worker (StartFleetClients), kube-dns's
// two pods run on the control plane's node, so every miss crosses the LAN
// and the node-caches hold TCP connections to kube-dns's pods.
var FleetScenarios = loadOutlastsEvent([]Scenario{
	{Name: "kubectl rollout restart ds/node-local-dns across the fleet (maxSurge 1, maxUnavailable 0)", Goal: "0 failed",
		MinLoad: 55 * time.Second, Event: func(c *Cluster, _ string) error {
			if err := c.kubeSystem("rollout", "restart", "ds/node-local-dns"); err != nil {
				return err
			}
			return c.rolledOut()
		}, Check: noFailures(LoadTargets...)},
	KubeDNSScenarios[0], KubeDNSScenarios[1], KubeDNSScenarios[2],
})

// loadOutlastsEvent marks each scenario's event as one the load must outlast.
func loadOutlastsEvent(scenarios []Scenario) []Scenario {
	for i := range scenarios {
		scenarios[i].LoadOutlastsEvent = true
	}
	return scenarios
}

// KubeDNSScenarios disturb kube-dns's pods while the caches forward their
// misses to them: with node-cache (FleetScenarios) and without it, the
// baseline (the ClusterIP only).
var KubeDNSScenarios = []Scenario{
	{Name: "kubectl rollout restart deploy/coredns (kube-dns's pods replaced one by one, lameduck 5 s)", Goal: "0 failed, misses too",
		// A new pod is Ready after its probe's first 10 s period.
		MinLoad: 40 * time.Second, Event: func(c *Cluster, _ string) error {
			if err := c.kubeSystem("rollout", "restart", "deployment/coredns"); err != nil {
				return err
			}
			return c.kubeDNSRolledOut()
		}, Check: noFailures(LoadTargets...)},
	{Name: "kube-dns scaled 2 -> 1 -> 2", Goal: "0 failed, misses too", MinLoad: 40 * time.Second, Event: func(c *Cluster, _ string) error {
		for _, replicas := range []string{"1", "2"} {
			if err := c.kubeSystem("scale", "deployment/coredns", "--replicas="+replicas); err != nil {
				return err
			}
			if err := c.kubeDNSRolledOut(); err != nil {
				return err
			}
			time.Sleep(6 * time.Second) // past the removed pod's lameduck
		}
		return nil
	}, Check: noFailures(LoadTargets...)},
	{Name: "one kube-dns pod deleted", Goal: "0 failed, misses too", MinLoad: 28 * time.Second, Event: func(c *Cluster, _ string) error {
		pods, err := c.KubectlOutput("-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns", "-o", "jsonpath={.items[0].metadata.name}")
		if err != nil {
			return err
		}
		if err := c.kubeSystem("delete", "pod", pods); err != nil {
			return err
		}
		return c.kubeDNSRolledOut()
	}, Check: noFailures(LoadTargets...)},
}

// KubeDNSInOneLoad is KubeDNSScenarios one after the other under one load,
// as TestFleetOnARealCluster asserts them (the bench runs them apart, for
// each one's numbers). The three events took 47 to 66 s on this machine.
var KubeDNSInOneLoad = InOneLoad("kube-dns rolled, then scaled 2 -> 1 -> 2, then one of its pods deleted, under one load",
	85*time.Second, KubeDNSScenarios...)

// Baseline is s without node-cache: the load to the kube-dns ClusterIP only,
// measured, not checked.
func Baseline(s Scenario) Scenario {
	s.Name += ", without node-cache"
	s.Goal = "measured"
	s.Targets = []string{KubeDNSIP}
	s.Check = func(ScenarioRun) error { return nil }
	return s
}

// FirstLookupPod runs a pod on node whose first lookup, as it starts, is
// its log; it is scheduled there through the node's hostname label, so it
// waits out the startup taint as any pod does.
func (c *Cluster) FirstLookupPod(name, node string) error {
	pod := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: default}
spec:
  nodeSelector: {kubernetes.io/hostname: %s}
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: %s
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "timeout 2 nslookup -type=A kubernetes.default.svc.cluster.local; trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]
`, name, node, ClientImage)
	if err := c.Apply(pod); err != nil {
		return err
	}
	if _, err := c.KubectlOutput("wait", "--for=condition=Ready", "pod/"+name, "--timeout=120s"); err != nil {
		return err
	}
	log, err := c.KubectlOutput("logs", name)
	if err != nil {
		return err
	}
	if !strings.Contains(log, "Name:") || !strings.Contains(log, APIServiceIP) {
		return fmt.Errorf("pod %s on %s: its first lookup failed:\n%s", name, node, log)
	}
	return nil
}

// DrainAndUncordon drains the worker (its pods evicted; node-local-dns
// stays, as DaemonSets do) and makes it schedulable again, as operators do
// for maintenance: a pod scheduled there then must resolve from its first
// lookup. The pod is left there; a drain evicts it.
func (c *Cluster) DrainAndUncordon(n *Node) error {
	if _, err := c.KubectlOutput("drain", n.Name, "--ignore-daemonsets", "--force", "--grace-period=1", "--timeout=90s"); err != nil {
		return err
	}
	if _, err := c.KubectlOutput("uncordon", n.Name); err != nil {
		return err
	}
	return c.FirstLookupPod("back-"+strings.TrimPrefix(n.Name, NodeName+"-"), n.Name)
}

// RotateNode is node rotation, as operators replace nodes: the worker is
// drained (its pods evicted; node-local-dns stays, as DaemonSets do) and
// terminated, and a new worker joins (registered with taints, such as
// node-cache's startup taint); a pod scheduled there at once must resolve
// from its first lookup. It returns the new worker.
func (c *Cluster) RotateNode(old *Node, taints ...string) (*Node, error) {
	if _, err := c.KubectlOutput("drain", old.Name, "--ignore-daemonsets", "--force", "--grace-period=1", "--timeout=90s"); err != nil {
		return nil, err
	}
	if err := c.RemoveWorker(old); err != nil {
		return nil, err
	}
	n, err := c.AddWorker(taints...)
	if err != nil {
		return n, err
	}
	return n, c.FirstLookupPod("first-"+strings.TrimPrefix(n.Name, NodeName+"-"), n.Name)
}

// NodeRotation drains the last worker and uncordons it (DrainAndUncordon),
// then rotates it (RotateNode), while the clients on the other workers send
// the load; the new worker registers with node-cache's startup taint, which
// the node-readiness overlay removes.
var NodeRotation = Scenario{Name: "node rotation: the last worker drained and uncordoned, then drained and terminated, a new one joining; a pod there at once each time",
	Goal: "0 failed; the pods resolve from their first lookup", MinLoad: 48 * time.Second, LoadOutlastsEvent: true, Event: func(c *Cluster, _ string) error {
		workers := c.Workers()
		last := workers[len(workers)-1]
		if err := c.DrainAndUncordon(last); err != nil {
			return fmt.Errorf("drain and uncordon %s: %w", last.Name, err)
		}
		_, err := c.RotateNode(last, StartupTaint+":NoSchedule")
		return err
	}, Check: noFailures(LoadTargets...)}

// StartupTaint is the taint node-cache removes once it serves.
const StartupTaint = "node-local-dns.kubernetes.io/not-ready"
