package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Where node-cache serves its HTTP endpoints inside the node netns.
const (
	NodeCacheMetrics = LocalIP + ":9253"
	NodeCacheHealth  = LocalIP + ":8080"
	NodeCacheReady   = LocalIP + ":8181"
)

// NodeCacheCorefile renders the repository's corefile.tmpl for this node:
// the cache forwards to the simulated kube-dns, and in IPVS mode it listens on
// the link-local IP only, as upstream documents. nodelocalOptions, if any,
// become the block of every nodelocal directive.
func (n *Node) NodeCacheCorefile(nodelocalOptions string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	tmpl, err := os.ReadFile(filepath.Join(root, "corefile.tmpl"))
	if err != nil {
		return "", err
	}
	dnsServer := ClusterIP
	if n.Opts.Mode == ModeIPVS {
		dnsServer = ""
	}
	corefile := strings.NewReplacer(
		"__PILLAR__DNS__DOMAIN__", "cluster.local",
		"__PILLAR__LOCAL__DNS__", LocalIP,
		"__PILLAR__DNS__SERVER__", dnsServer,
		"__PILLAR__CLUSTER__DNS__", UpstreamIP,
		"__PILLAR__UPSTREAM__SERVERS__", UpstreamIP,
		"__PILLAR__PROMETHEUS__ENDPOINT__", NodeCacheMetrics,
	).Replace(string(tmpl))
	if nodelocalOptions != "" {
		block := "    nodelocal {\n        " + strings.ReplaceAll(strings.TrimSpace(nodelocalOptions), "\n", "\n        ") + "\n    }\n"
		corefile = strings.ReplaceAll(corefile, "    nodelocal\n", block)
	}
	return corefile, nil
}

// StartNodeCache writes corefile and runs node-cache with it in the node netns.
// It returns once the cache reports ready, or an error with its log.
func (n *Node) StartNodeCache(name, corefile string, args ...string) (*Process, error) {
	bin, err := Binary("node-cache")
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(n.Dir, name+".Corefile")
	if err := os.WriteFile(conf, []byte(corefile), 0o644); err != nil {
		return nil, err
	}
	p, err := n.Start(n.Host, name, append([]string{bin, "-conf", conf}, args...))
	if err != nil {
		return nil, err
	}
	if err := n.WaitReady(p, 10*time.Second); err != nil {
		return p, fmt.Errorf("%w\n--- %s log:\n%s", err, name, tail(p.Log(), 40))
	}
	return p, nil
}

// WaitReady polls node-cache's /ready until it answers 200.
func (n *Node) WaitReady(p *Process, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		if p.Exited() {
			return fmt.Errorf("%s exited: %v", p.Name, p.Wait(0))
		}
		_, lastErr = n.Host.HTTPGet("http://" + NodeCacheReady + "/ready")
		if lastErr == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %v: %v", p.Name, timeout, lastErr)
}

// NodeCacheMetric sums a metric of node-cache.
func (n *Node) NodeCacheMetric(name string) (float64, error) {
	body, err := n.Host.HTTPGet("http://" + NodeCacheMetrics + "/metrics")
	if err != nil {
		return 0, err
	}
	return MetricSum(body, name), nil
}

// NodeLocalRules lists the rules carrying node-cache's comments in the node
// netns, for the backend of the node, as `iptables -S` prints them.
func (n *Node) NodeLocalRules() ([]string, error) {
	var rules []string
	for _, table := range []string{"raw", "filter"} {
		out, err := n.Host.Output(n.Opts.Backend.IPTables(), "-w", "5", "-t", table, "-S")
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "NodeLocal DNS Cache") {
				rules = append(rules, "-t "+table+" "+line)
			}
		}
	}
	return rules, nil
}
