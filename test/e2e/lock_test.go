package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nodelocal/nodelocal/test/harness"
)

// lockErrors is node-cache's count of iptables calls that gave up waiting
// for the xtables lock.
func lockErrors(t *testing.T, node *harness.Node) float64 {
	t.Helper()
	body, err := node.Host.HTTPGet("http://" + harness.NodeCacheMetrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var lock strings.Builder
	for line := range strings.Lines(body) {
		if strings.Contains(line, `errortype="iptables_lock"`) {
			lock.WriteString(line)
		}
	}
	return harness.MetricSum(lock.String(), "coredns_nodecache_setup_errors_total")
}

// TestXtablesLockHeld: another process (kube-proxy does this) holds the
// xtables lock for 30 s on a legacy node. node-cache's checks wait for it and
// give up, counting iptables_lock errors, while the cache keeps answering on
// both IPs; once the lock is free, the next check finds everything in place.
func TestXtablesLockHeld(t *testing.T) {
	node := harness.NewNode(t, harness.Options{Backend: harness.BackendLegacy})
	if _, err := node.StartNodeCache("node-cache", mustTemplate(t, node, "")); err != nil {
		t.Fatal(err)
	}
	before := lockErrors(t, node)
	holder := exec.Command("flock", "--exclusive", "/run/xtables.lock", "sleep", "30")
	if err := holder.Start(); err != nil {
		t.Fatalf("flock: %v", err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	held := time.Now()
	for time.Since(held) < 28*time.Second {
		for _, ip := range []string{harness.LocalIP, harness.ClusterIP} {
			mustQuery(t, node, "udp", ip, harness.WebSvc)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if got := lockErrors(t, node) - before; got < 1 {
		t.Errorf("%v iptables_lock errors counted while the lock was held 30 s, want at least 1", got)
	}
	holder.Wait()
	deadline := time.Now().Add(15 * time.Second)
	for {
		active, err := node.NodeCacheMetric("coredns_nodelocal_interception_active")
		if err == nil && active == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("interception not active 15 s after the lock was released (%v, %v)", active, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	assertRules(t, node, rulesBoth)
}
