package e2e

import (
	"errors"
	"os/exec"
	"syscall"
	"testing"

	"github.com/nodelocal/nodelocal/test/harness"
)

func errAsWaitStatus(err error) (syscall.WaitStatus, bool) {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		ws, ok := ee.Sys().(syscall.WaitStatus)
		return ws, ok
	}
	return 0, false
}

func mustTemplate(t *testing.T, node *harness.Node, nodelocalOptions string) string {
	t.Helper()
	corefile, err := node.NodeCacheTemplate(nodelocalOptions)
	if err != nil {
		t.Fatal(err)
	}
	return corefile
}

// The rules node-cache writes for the link-local IP and the ClusterIP:
// upstream's 12 per address in iptables but the 2 NOTRACKs of the node's own
// queries (20), those in its own nf_tables table (4), and the fallback table
// (12: the link-local IP's rewrite for pods and for the node, IPVS's answers
// to both, and the masquerade of both addresses' queries from the node).
const rulesBoth = 36

// rulesLinkLocal are the rules for the link-local IP alone, as in kube-proxy's
// IPVS mode: 10 in iptables, 2 in its own table, 10 in the fallback table.
const rulesLinkLocal = 22

// waitsMostly marks a test whose time goes mostly to waiting (TTLs expiring,
// lameducks, the warm record's save, rule checks every 5 s) under a light
// load, and whose goals count failed queries rather than milliseconds: it
// runs beside the other such tests once the sequential ones are done (go
// test's -parallel, the CPUs by default). Tests that hold the machine's
// xtables lock, measure memory or bound a time closely stay sequential.
func waitsMostly(t *testing.T) {
	t.Helper()
	t.Parallel()
}
