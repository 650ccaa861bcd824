package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/nodelocal/nodelocal/test/harness"
)

// TestIdenticalMissesGoUpstreamOnce: 50 clients asking for the same new name
// at once make node-cache ask kube-dns about once (coalesce), not once each.
func TestIdenticalMissesGoUpstreamOnce(t *testing.T) {
	node := harness.NewNode(t, harness.Options{})
	if _, err := node.StartNodeCache("node-cache", mustTemplate(t, node, "")); err != nil {
		t.Fatal(err)
	}
	const names, clients = 20, 50
	per, err := node.IdenticalMisses(harness.LocalIP, names, clients, fmt.Sprintf("t%d", time.Now().UnixNano()))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d concurrent identical misses of %d names: %.2f kube-dns queries per name", clients, names, per)
	if per > 1.1 {
		t.Errorf("%.2f kube-dns queries per name, want at most 1.1", per)
	}
}
