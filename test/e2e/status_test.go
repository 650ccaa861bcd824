package e2e

import (
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/nodelocal/nodelocal/test/harness"
)

// runStatus runs `node-cache status` against the node's instance directory
// and returns its output and exit status.
func runStatus(t *testing.T, node *harness.Node, args ...string) (string, int) {
	t.Helper()
	bin, err := harness.Binary("node-cache")
	if err != nil {
		t.Fatal(err)
	}
	out, err := node.Host.Command(bin, append([]string{"status", "-dir", node.StateDir()}, args...)...).CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return string(out), exit.ExitCode()
	}
	if err != nil {
		t.Fatalf("node-cache status: %v\n%s", err, out)
	}
	return string(out), 0
}

// TestStatusOnASimulatedNode: `node-cache status` asks the running instance
// over its socket in the instance directory; it exits 0 while everything is
// as desired, and 1, naming the rule, after a rule is deleted by hand (the
// check interval is long, so nothing repairs it meanwhile).
func TestStatusOnASimulatedNode(t *testing.T) {
	node := harness.NewNode(t, harness.Options{})
	if _, err := node.StartNodeCache("node-cache", mustTemplate(t, node, "check_interval 1h")); err != nil {
		t.Fatal(err)
	}
	out, code := runStatus(t, node)
	if code != 0 || !strings.Contains(out, "phase:       serving") || !strings.Contains(out, "rules:       36 of 36 in place") {
		t.Fatalf("exit %d, want 0 and every rule in place:\n%s", code, out)
	}
	t.Logf("node-cache status:\n%s", out)

	ipt := node.Opts.Backend.IPTables()
	rule := []string{"-t", "raw", "-D", "PREROUTING", "-d", harness.ClusterIP + "/32", "-p", "udp", "-m", "udp", "--dport", "53",
		"-m", "socket", "--nowildcard", "-m", "comment", "--comment", "NodeLocal DNS Cache: skip conntrack", "-j", "NOTRACK"}
	if err := node.Host.Run(ipt, append([]string{"-w", "5"}, rule...)...); err != nil {
		t.Fatal(err)
	}
	out, code = runStatus(t, node)
	if code != 1 || !strings.Contains(out, "missing: -t raw -A PREROUTING -d "+harness.ClusterIP+"/32 -p udp") || !strings.Contains(out, "PROBLEM: 1 of 36 rules missing") {
		t.Fatalf("exit %d after a rule was deleted, want 1 naming it:\n%s", code, out)
	}
	out, code = runStatus(t, node, "-o", "json")
	var got struct {
		Instances []struct {
			Phase string
			Rules []struct {
				Rule    string
				InPlace bool
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || code != 1 || len(got.Instances) != 1 || len(got.Instances[0].Rules) != rulesBoth {
		t.Fatalf("JSON status (exit %d, %v):\n%s", code, err, out)
	}
}
