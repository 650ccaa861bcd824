package cluster_test

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodelocal/nodelocal/test/cluster"
	"github.com/nodelocal/nodelocal/test/harness"
)

// TestNodeReadinessOnARealNode deploys manifests/overlays/node-readiness on a
// node whose kubelet points pods at 169.254.20.10 and that carries the
// startup taint (as one registered with it): a Deployment's pods stay
// Pending until node-cache serves, then run and resolve through
// 169.254.20.10 at their first lookup; the node's NodeLocalDNSReady condition
// is True, and stays True across a rollout and a restart while the API
// server hangs; a reboot makes it False, then True; the real API server's admission policies refuse node-local-dns's
// token any other change of a Node (another condition, taint, field, or
// node); when node-cache leaves the node with no successor, the condition is
// False.
func TestNodeReadinessOnARealNode(t *testing.T) {
	c := newCluster(t, cluster.Options{ProxyMode: "iptables", ClusterDNS: "169.254.20.10"})
	if _, err := c.KubectlOutput("taint", "node", cluster.NodeName, cluster.StartupTaint+":NoSchedule"); err != nil {
		t.Fatal(err)
	}
	deployment := `apiVersion: apps/v1
kind: Deployment
metadata: {name: early, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: early}}
  template:
    metadata: {labels: {app: early}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: client
        image: ` + cluster.ClientImage + `
        imagePullPolicy: Never
        # The first lookup, as the pod starts: its result is the log.
        command: ["/bin/sh", "-c", "timeout 2 nslookup kubernetes.default.svc.cluster.local; trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]
`
	if err := c.Apply(deployment); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if phases := podPhases(t, c, "app=early"); phases != "Pending Pending" {
		t.Fatalf("the Deployment's pods are %q on a node with the startup taint, want Pending", phases)
	}
	overlay, err := c.ApplyKustomizeOf("overlays/node-readiness")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.KubectlOutput("rollout", "status", "deploy/early", "--timeout=90s"); err != nil {
		t.Fatal(err)
	}
	if taints, _ := c.KubectlOutput("get", "node", cluster.NodeName, "-o", "jsonpath={.spec.taints}"); strings.Contains(taints, cluster.StartupTaint) {
		t.Fatalf("the startup taint is still there: %s", taints)
	}
	waitForNodeCondition(t, c, "True", 30*time.Second)
	pods, err := c.KubectlOutput("get", "pods", "-l", "app=early", "-o", "jsonpath={.items[*].metadata.name}")
	if err != nil {
		t.Fatal(err)
	}
	for _, pod := range strings.Fields(pods) {
		log, err := c.KubectlOutput("logs", pod)
		if err != nil || !strings.Contains(log, "169.254.20.10") || !strings.Contains(log, cluster.APIServiceIP) {
			t.Fatalf("%s's first lookup: %v\n%s", pod, err, log)
		}
	}

	token := podBoundToken(t, c)
	// Another node, for the policies to refuse.
	if err := c.Apply("apiVersion: v1\nkind: Node\nmetadata: {name: other-node}\nspec:\n  taints: [{key: " + cluster.StartupTaint + ", effect: NoSchedule}]\n"); err != nil {
		t.Fatal(err)
	}
	const ours = `{"status":{"conditions":[{"type":"NodeLocalDNSReady","status":"True","reason":"Test","message":"patched by the test"}]}}`
	if _, err := c.KubectlAs(token, "patch", "node", cluster.NodeName, "--subresource=status", "--type=strategic", "-p", ours); err != nil {
		t.Fatalf("node-local-dns's token could not patch its own condition: %v", err)
	}
	for _, refused := range []struct{ what, node, subresource, patch, message string }{
		{"its condition on another node", "other-node", "status", ours, "the node its pod runs on only"},
		{"kubelet's Ready condition", cluster.NodeName, "status",
			`{"status":{"conditions":[{"type":"Ready","status":"False","reason":"Test","message":"patched by the test"}]}}`, "NodeLocalDNSReady condition only"},
		{"another status field", cluster.NodeName, "status", `{"status":{"capacity":{"pods":"1"}}}`, "NodeLocalDNSReady condition only"},
		{"the startup taint of another node", "other-node", "", `{"spec":{"taints":null}}`, "the node its pod runs on only"},
		{"another taint", cluster.NodeName, "", `{"spec":{"taints":[{"key":"example.com/other","effect":"NoSchedule"}]}}`, "not-ready taint only"},
		{"the node's labels", cluster.NodeName, "", `{"metadata":{"labels":{"example.com/by":"node-local-dns"}}}`, "not-ready taint only"},
		{"the node's spec", cluster.NodeName, "", `{"spec":{"unschedulable":true}}`, "not-ready taint only"},
	} {
		args := []string{"patch", "node", refused.node, "--type=strategic", "-p", refused.patch}
		if refused.subresource != "" {
			args = append(args, "--subresource="+refused.subresource)
		}
		_, err := c.KubectlAs(token, args...)
		if err == nil || !strings.Contains(err.Error(), "ValidatingAdmissionPolicy") || !strings.Contains(err.Error(), refused.message) {
			t.Errorf("patch of %s: %v, want a refusal by a policy saying %q", refused.what, err, refused.message)
		}
	}
	if ready := nodeCondition(t, c, "Ready"); ready != "True" {
		t.Fatalf("kubelet's Ready condition is %q after the refused patches", ready)
	}
	// The DaemonSet would wait for a pod on it.
	if _, err := c.KubectlOutput("delete", "node", "other-node"); err != nil {
		t.Fatal(err)
	}

	// A rollout (surge): the successor takes over, the condition never
	// says False in between.
	sawFalse := make(chan bool, 1)
	stopWatching := make(chan struct{})
	go func() {
		saw := false
		for {
			select {
			case <-stopWatching:
				sawFalse <- saw
				return
			case <-time.After(100 * time.Millisecond):
			}
			out, _ := c.KubectlOutput("get", "node", cluster.NodeName, "-o", `jsonpath={.status.conditions[?(@.type=="NodeLocalDNSReady")].status}`)
			saw = saw || out == "False"
		}
	}()
	if _, err := c.KubectlOutput("-n", "kube-system", "rollout", "restart", "ds/node-local-dns"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.KubectlOutput("-n", "kube-system", "rollout", "status", "ds/node-local-dns", "--timeout=90s"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(8 * time.Second) // the old instance's lameduck and exit
	close(stopWatching)
	if <-sawFalse || nodeCondition(t, c, "NodeLocalDNSReady") != "True" {
		t.Fatalf("across a rollout the condition said False, or ends %q", nodeCondition(t, c, "NodeLocalDNSReady"))
	}

	// The API server hangs while node-cache is killed and kubelet starts it
	// again: it serves at once, and writes once the API server answers.
	status, err := c.NodeCacheStatus()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SignalAPIServer(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			c.SignalAPIServer(syscall.SIGCONT)
		}
	}()
	if _, err := c.Ctr("tasks", "kill", "--signal", "SIGKILL", strings.TrimPrefix(status.ContainerID, "containerd://")); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	time.Sleep(time.Second) // the old process gone
	node := &harness.Netns{Name: c.NodeNetns}
	for {
		if _, err := node.HTTPGet("http://169.254.20.10:8181/ready"); err == nil {
			break
		}
		if time.Since(killed) > 60*time.Second {
			t.Fatalf("node-cache not ready within 60 s of its restart while the API server hangs:\n%s", c.Log("kubelet"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("with the API server hung, node-cache was ready again %v after the kill", time.Since(killed).Round(100*time.Millisecond))
	if err := c.SignalAPIServer(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed = true
	waitForNodeCondition(t, c, "True", 60*time.Second)

	// A reboot: node-cache stops with the node, kubelet already gone, so no
	// successor: the condition goes False. The node comes back without the
	// interface and the rules; node-cache makes them again, and it is True.
	status, err = c.NodeCacheStatus()
	if err != nil {
		t.Fatal(err)
	}
	err = c.Reboot(func() error {
		id := strings.TrimPrefix(status.ContainerID, "containerd://")
		if _, err := c.Ctr("tasks", "kill", "--signal", "SIGTERM", id); err != nil {
			return err
		}
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			if tasks, err := c.Tasks(); err == nil && tasks[id] != "RUNNING" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("node-cache did not exit within 30 s of its SIGTERM")
			}
		}
		if got := nodeCondition(t, c, "NodeLocalDNSReady"); got != "False" {
			t.Errorf("node-cache stopped with the node: the condition is %q, want False", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	up := time.Now() // the node Ready again
	waitForNodeCondition(t, c, "True", 120*time.Second)
	t.Logf("after the reboot, the condition was True again %v after the node was Ready", time.Since(up).Round(100*time.Millisecond))
	if iface, rules, err := c.NodeLocalState(); err != nil || iface == "" || len(rules) == 0 {
		t.Fatalf("after the reboot: interface %q, %d rules (%v)", iface, len(rules), err)
	}

	// The DaemonSet leaves the node (as when its nodeSelector no longer
	// matches): node-cache stops with no successor.
	if _, err := c.KubectlOutput("-n", "kube-system", "patch", "ds", "node-local-dns", "--type=merge",
		"-p", `{"spec":{"template":{"spec":{"nodeSelector":{"example.com/no-such-label":"x"}}}}}`); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitGone("k8s-app=node-local-dns", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := nodeCondition(t, c, "NodeLocalDNSReady"); got != "False" {
		t.Fatalf("after node-cache left the node the condition is %q, want False", got)
	}
	if _, err := c.KubectlOutput("delete", "-k", overlay, "--wait=true"); err != nil {
		t.Fatal(err)
	}
	assertClean(t, c)
}

// podBoundToken is a token of node-local-dns's ServiceAccount bound to its
// pod, and so naming its node, as kubelet mounts it.
func podBoundToken(t *testing.T, c *cluster.Cluster) string {
	t.Helper()
	out, err := c.KubectlOutput("-n", "kube-system", "get", "pods", "-l", "k8s-app=node-local-dns", "-o", "jsonpath={.items[0].metadata.name} {.items[0].metadata.uid}")
	if err != nil {
		t.Fatal(err)
	}
	pod, uid, _ := strings.Cut(out, " ")
	token, err := c.KubectlOutput("-n", "kube-system", "create", "token", "node-local-dns",
		"--bound-object-kind", "Pod", "--bound-object-name", pod, "--bound-object-uid", uid)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(token)
}

func podPhases(t *testing.T, c *cluster.Cluster, selector string) string {
	t.Helper()
	out, err := c.KubectlOutput("get", "pods", "-l", selector, "-o", "jsonpath={.items[*].status.phase}")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func nodeCondition(t *testing.T, c *cluster.Cluster, kind string) string {
	t.Helper()
	out, err := c.KubectlOutput("get", "node", cluster.NodeName, "-o", `jsonpath={.status.conditions[?(@.type=="`+kind+`")].status}`)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func waitForNodeCondition(t *testing.T, c *cluster.Cluster, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := nodeCondition(t, c, "NodeLocalDNSReady")
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			out, _ := c.KubectlOutput("-n", "kube-system", "logs", "ds/node-local-dns", "--tail=30")
			t.Fatalf("NodeLocalDNSReady is %q after %v, want %q; node-cache's log:\n%s", got, timeout, want, out)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
