package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/nodelocal/nodelocal/test/harness"
)

// TestKubeDNSClusterIPChanges: the kube-dns Service is recreated with another
// ClusterIP under a running node-cache. Pods that still use the old IP keep
// being answered by the cache; the new IP reaches kube-dns through
// kube-proxy; a restart with the Service's new variable intercepts the new
// IP and leaves nothing of the old one.
func TestKubeDNSClusterIPChanges(t *testing.T) {
	const newIP = "198.18.0.12"
	node := harness.NewNode(t, harness.Options{})
	p, err := node.StartNodeCache("node-cache", mustTemplate(t, node, ""))
	if err != nil {
		t.Fatal(err)
	}
	if err := node.MoveClusterIP(newIP); err != nil {
		t.Fatal(err)
	}
	// kube-proxy no longer knows the old IP: only the cache answers there.
	mustQuery(t, node, "udp", harness.ClusterIP, harness.KubernetesSvc)
	mustQuery(t, node, "tcp", harness.ClusterIP, harness.KubernetesSvc)
	mustQuery(t, node, "udp", newIP, harness.WebSvc)
	mustQuery(t, node, "tcp", newIP, harness.WebSvc)

	if err := p.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := node.StartNodeCache("node-cache-restarted", mustTemplate(t, node, ""),
		"-dnssvc", newIP, "-localip", harness.LocalIP+","+newIP); err != nil {
		t.Fatal(err)
	}
	rules, err := node.NodeLocalRules()
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(rules, "\n")
	if !strings.Contains(joined, newIP+"/32") || strings.Contains(joined, harness.ClusterIP+"/32") {
		t.Fatalf("after the restart the rules are not the new ClusterIP's only:\n%s", joined)
	}
	mustQuery(t, node, "udp", newIP, harness.WebSvc)
}
