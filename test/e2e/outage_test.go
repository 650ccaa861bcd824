package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/nodelocal/nodelocal/test/harness"
)

// TestKubeDNSDownKeepsAnswering: with kube-dns silent for longer than the
// cache's 30 s TTLs, the shipped Corefile keeps answering every name clients
// had been asking (serve_stale), and after kube-dns returns the cluster names
// are fresh again within seconds (verify, 5 s recheck).
func TestKubeDNSDownKeepsAnswering(t *testing.T) {
	waitsMostly(t)
	node := harness.NewNode(t, harness.Options{})
	if _, err := node.StartNodeCache("node-cache", mustTemplate(t, node, "")); err != nil {
		t.Fatal(err)
	}
	results, err := node.MeasureOutage(context.Background(), []string{harness.LocalIP}, 5*time.Second, 40*time.Second, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r := results[0]
	t.Logf("kube-dns silent 40 s: %d of %d lookups answered (%.1f%%); fresh %v after its return", r.Answered, r.Asked, 100*r.Share(), r.FreshAfterReturn)
	if r.Share() < 0.99 {
		t.Errorf("only %.1f%% of the lookups of names the cache had answered were answered during the outage, want at least 99%%", 100*r.Share())
	}
	if r.FreshAfterReturn < 0 || r.FreshAfterReturn > 10*time.Second {
		t.Errorf("cluster names fresh %v after kube-dns returned, want within 10 s", r.FreshAfterReturn)
	}
}
