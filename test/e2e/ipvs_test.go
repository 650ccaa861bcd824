package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/nodelocal/nodelocal/test/harness"
)

// TestIPVSAfterNodeCache: on a new IPVS node node-cache can start before
// kube-proxy has made kube-ipvs0. With -ipvs auto it then binds and
// intercepts the kube-dns ClusterIP; the moment kube-proxy puts the ClusterIP
// on kube-ipvs0, node-cache gives it back (address and interception, on the
// netlink event, without fighting for it), keeps serving the link-local IP,
// and its next render leaves the ClusterIP out of the Corefile.
func TestIPVSAfterNodeCache(t *testing.T) {
	node := harness.NewNode(t, harness.Options{})
	tmpl := strings.ReplaceAll(mustTemplate(t, node, ""), "    reload\n", "    reload 2s 1s\n")
	if _, err := node.StartNodeCache("node-cache", tmpl, "-ipvs", "auto"); err != nil {
		t.Fatal(err)
	}
	waitForRules(t, node, rulesBoth, 5*time.Second, "rules before kube-proxy IPVS")
	// kube-proxy's IPVS mode starts: the Service IPs go on kube-ipvs0.
	if err := node.Host.Run("ip", "link", "add", "kube-ipvs0", "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{harness.ClusterIP, harness.UpstreamIP} {
		if err := node.Host.Run("ip", "addr", "add", ip+"/32", "dev", "kube-ipvs0"); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	waitForRules(t, node, rulesLinkLocal, time.Second, "rules after kube-ipvs0 took the ClusterIP")
	t.Logf("ClusterIP given back %v after kube-ipvs0 appeared", time.Since(start).Round(time.Millisecond))
	out, err := node.Host.Output("ip", "-o", "addr", "show", "dev", "nodelocaldns")
	if err != nil || strings.Contains(out, harness.ClusterIP) {
		t.Fatalf("nodelocaldns still holds the ClusterIP: %s %v", out, err)
	}
	out, err = node.Host.Output("ip", "-o", "addr", "show", "dev", "kube-ipvs0")
	if err != nil || !strings.Contains(out, harness.ClusterIP+"/32") {
		t.Fatalf("kube-ipvs0 lost the ClusterIP: %s %v", out, err)
	}
	mustQuery(t, node, "udp", harness.LocalIP, harness.WebSvc)
	mustQuery(t, node, "tcp", harness.LocalIP, harness.WebSvc)
	mustQuery(t, node, "udp", harness.ClusterIP, harness.WebSvc) // kube-dns, through "IPVS"
	time.Sleep(3 * time.Second)                                  // the reload (2 s here) renders without the ClusterIP
	if n, _ := node.NodeCacheMetric(`coredns_nodelocal_repairs_total{kind="address"}`); n != 0 {
		t.Fatalf("%v address repairs: node-cache fought kube-proxy for the ClusterIP", n)
	}
	waitForRules(t, node, rulesLinkLocal, time.Second, "rules after the reload")
	mustQuery(t, node, "udp", harness.LocalIP, harness.WebSvc)
}
