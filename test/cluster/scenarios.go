package cluster

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Scenario disturbs node-cache on the node while a pod load runs.
type Scenario struct {
	Name  string
	Goal  string
	Event func(c *Cluster) error
	// MinLoad is how long the load must run at least, when the event takes
	// longer than the usual load (a ConfigMap edit reaches the pod through
	// kubelet, then the reload plugin's next poll).
	MinLoad time.Duration
}

// Scenarios are what operators do to the DaemonSet of manifests/base
// (deployed through ApplyKustomize), in the order they run: each leaves the
// DaemonSet serving for the next, but the uninstall, which comes last.
var Scenarios = []Scenario{
	{Name: "kubectl rollout restart ds/node-local-dns (maxSurge 1, maxUnavailable 0)", Goal: "0 failed", Event: func(c *Cluster) error {
		if _, err := c.KubectlOutput("-n", "kube-system", "rollout", "restart", "ds/node-local-dns"); err != nil {
			return err
		}
		return c.rolledOut()
	}},
	{Name: "kubectl set image to another tag of the same archive", Goal: "0 failed", Event: func(c *Cluster) error {
		next := strings.TrimSuffix(NodeCacheImage, ":e2e") + ":e2e-next"
		if _, err := c.Ctr("images", "tag", "--force", NodeCacheImage, next); err != nil {
			return err
		}
		if _, err := c.KubectlOutput("-n", "kube-system", "set", "image", "ds/node-local-dns", "node-cache="+next); err != nil {
			return err
		}
		return c.rolledOut()
	}},
	{Name: "ConfigMap edit picked up by the reload plugin", Goal: "0 failed", MinLoad: 80 * time.Second, Event: func(c *Cluster) error {
		before := strings.Count(c.nodeCacheLog(), "Reloading complete")
		patch := `[{"op": "replace", "path": "/data/Corefile", "value": ` + jsonString(strings.Replace(c.corefileTemplate(), "success 9984 30", "success 9984 29", 1)) + `}]`
		if _, err := c.KubectlOutput("-n", "kube-system", "patch", "configmap", "node-local-dns", "--type=json", "-p", patch); err != nil {
			return err
		}
		return c.waitFor("node-cache reloading the edited ConfigMap", "kubelet", 75*time.Second, func() error {
			if n := strings.Count(c.nodeCacheLog(), "Reloading complete"); n <= before {
				return fmt.Errorf("%d reloads", n)
			}
			return nil
		})
	}},
	{Name: "kubectl delete pod (eviction, drain); the DaemonSet recreates it", Goal: "ClusterIP 0 failed; link-local only in the gap", Event: func(c *Cluster) error {
		if _, err := c.KubectlOutput("-n", "kube-system", "delete", "pod", "-l", "k8s-app=node-local-dns", "--wait=false"); err != nil {
			return err
		}
		time.Sleep(time.Second) // the DaemonSet controller sees the deletion
		return c.rolledOut()
	}},
	{Name: "kubectl delete -k (uninstall)", Goal: "ClusterIP 0 failed; node left as before", Event: func(c *Cluster) error {
		if _, err := c.KubectlOutput("delete", "-k", c.path("overlay"), "--wait=true"); err != nil {
			return err
		}
		return c.WaitGone("k8s-app=node-local-dns", 60*time.Second)
	}},
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

// RunScenario runs a pod load for d and s's event after eventAt; it returns
// the load and how long the event took (for a rollout: until it is done).
func (c *Cluster) RunScenario(s Scenario, pod string, rate int, d, eventAt time.Duration) (PodLoad, time.Duration, error) {
	results := c.StartPodLoad(pod, rate, max(d, s.MinLoad))
	time.Sleep(eventAt)
	start := time.Now()
	err := s.Event(c)
	took := time.Since(start)
	load := <-results
	if err != nil {
		return load, took, fmt.Errorf("%s: %w", s.Name, err)
	}
	return load, took, nil
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
	return b.String()
}
