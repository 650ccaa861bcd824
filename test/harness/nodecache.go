package harness

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Where node-cache serves its HTTP endpoints inside the node netns (on an
// IPv4 node; Node.NodeCacheEndpoint on any).
const (
	NodeCacheMetrics = LocalIP + ":9253"
	NodeCacheHealth  = LocalIP + ":8080"
	NodeCacheReady   = LocalIP + ":8181"
)

// NodeCacheEndpoint is where node-cache serves HTTP on port inside the
// node netns: its own address, in the node's family.
func (n *Node) NodeCacheEndpoint(port string) string {
	return net.JoinHostPort(n.Family().Local, port)
}

// NodeCacheTemplate is the repository's corefile.tmpl; nodelocalOptions, if
// any, become the block of every nodelocal directive.
func (n *Node) NodeCacheTemplate(nodelocalOptions string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	tmpl, err := os.ReadFile(filepath.Join(root, "corefile.tmpl"))
	if err != nil {
		return "", err
	}
	corefile := string(tmpl)
	if nodelocalOptions != "" {
		corefile = strings.ReplaceAll(corefile, "    nodelocal {\n", "    nodelocal {\n        "+strings.ReplaceAll(strings.TrimSpace(nodelocalOptions), "\n", "\n        ")+"\n")
	}
	return corefile, nil
}

// WithoutNodeLocal is a Corefile made from corefile.tmpl without its
// nodelocal directives, rendered or not.
func WithoutNodeLocal(corefile string) string {
	return nodeLocalDirective.ReplaceAllString(corefile, "")
}

var nodeLocalDirective = regexp.MustCompile(`(?m)^    nodelocal( \{\n(        .*\n)*    \})?\n`)

// NodeCacheArgs are the flags that fit node-cache to this node, as the
// DaemonSet's would: its IPs, the Service IPs, and a resolv.conf that names
// the simulated kube-dns (never the machine's).
func (n *Node) NodeCacheArgs() ([]string, error) {
	resolv, err := n.ResolvConf()
	if err != nil {
		return nil, err
	}
	f := n.Family()
	return []string{
		"-localip", f.Local + "," + f.Cluster,
		"-dnssvc", f.Cluster,
		"-upstreamsvc", f.Upstream,
		"-resolvconf", resolv,
		"-kubednscm", filepath.Join(n.Dir, "kube-dns-configmap"),
		"-ipvs", fmt.Sprint(n.Opts.Mode == ModeIPVS),
	}, nil
}

// ResolvConf is the node's resolv.conf: it names the simulated kube-dns
// (through the kube-dns-upstream Service IP), never the machine's resolver.
func (n *Node) ResolvConf() (string, error) {
	resolv := filepath.Join(n.Dir, "resolv.conf")
	return resolv, os.WriteFile(resolv, []byte("nameserver "+n.Family().Upstream+"\n"), 0o644)
}

// StartNodeCache runs node-cache in the node netns with template as its
// -basecorefile and the node's args (then args). It returns once the cache
// reports ready, or an error with its log.
func (n *Node) StartNodeCache(name, template string, args ...string) (*Process, error) {
	p, err := n.StartNodeCacheProcess(name, template, nil, args...)
	if err != nil {
		return nil, err
	}
	if err := n.WaitReady(p, 10*time.Second); err != nil {
		return p, fmt.Errorf("%w\n--- %s log:\n%s", err, name, tail(p.Log(), 40))
	}
	return p, nil
}

// StartNodeCacheProcess starts node-cache without waiting, with wrapper (for
// example setpriv and its arguments) in front of it.
func (n *Node) StartNodeCacheProcess(name, template string, wrapper []string, args ...string) (*Process, error) {
	bin, err := Binary("node-cache")
	if err != nil {
		return nil, err
	}
	tmpl := filepath.Join(n.Dir, name+".Corefile.tmpl")
	if err := os.WriteFile(tmpl, []byte(template), 0o644); err != nil {
		return nil, err
	}
	nodeArgs, err := n.NodeCacheArgs()
	if err != nil {
		return nil, err
	}
	argv := append(append(append(wrapper, bin, "-basecorefile", tmpl), nodeArgs...), args...)
	return n.Start(n.Host, name, argv)
}

// WaitReady polls node-cache's /ready until it answers 200.
func (n *Node) WaitReady(p *Process, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		if p.Exited() {
			return fmt.Errorf("%s exited: %v", p.Name, p.Wait(0))
		}
		_, lastErr = n.Host.HTTPGet("http://" + n.NodeCacheEndpoint("8181") + "/ready")
		if lastErr == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %v: %v", p.Name, timeout, lastErr)
}

// NodeCacheMetric sums a metric of node-cache.
func (n *Node) NodeCacheMetric(name string) (float64, error) {
	body, err := n.Host.HTTPGet("http://" + n.NodeCacheEndpoint("9253") + "/metrics")
	if err != nil {
		return 0, err
	}
	return MetricSum(body, name), nil
}

// NodeLocalRules lists the rules carrying node-cache's comments in the node
// netns, for the backend of the node (both families on an IPv6 node), as `iptables -S` prints them, and the
// declarations of node-cache's chains (-N NODELOCAL-...).
func (n *Node) NodeLocalRules() ([]string, error) {
	var rules []string
	commands := []string{n.Opts.Backend.IPTables()}
	if n.Opts.IPv6 {
		commands = append(commands, n.Opts.Backend.IP6Tables())
	}
	for _, ipt := range commands {
		for _, table := range []string{"raw", "filter"} {
			out, err := n.Host.Output(ipt, "-w", "5", "-t", table, "-S")
			if err != nil {
				return nil, err
			}
			for _, line := range strings.Split(out, "\n") {
				if strings.Contains(line, "NodeLocal DNS Cache") || strings.HasPrefix(line, "-N NODELOCAL-") {
					rules = append(rules, "-t "+table+" "+line)
				}
			}
		}
	}
	tables, err := NodeLocalNFTables(n.Host)
	if err != nil {
		return nil, err
	}
	for table, lines := range tables {
		for _, line := range lines {
			rules = append(rules, table+": "+line)
		}
	}
	return rules, nil
}

// NodeLocalNFTables are node-cache's nf_tables tables (inet nodelocaldns*)
// in ns, each with its rules as `nft list` prints them, after their chain's
// name ("output: ip daddr ...").
func NodeLocalNFTables(ns *Netns) (map[string][]string, error) {
	out, err := ns.Output("nft", "list", "tables", "inet")
	if err != nil {
		return nil, err
	}
	tables := map[string][]string{}
	for _, line := range strings.Split(out, "\n") {
		name, ok := strings.CutPrefix(strings.TrimSpace(line), "table inet ")
		if !ok || !strings.HasPrefix(name, "nodelocaldns") {
			continue
		}
		listing, err := ns.Output("nft", "list", "table", "inet", name)
		if err != nil {
			return nil, err
		}
		tables[name] = []string{}
		chain := ""
		for _, l := range strings.Split(listing, "\n") {
			l = strings.TrimSpace(l)
			switch {
			case strings.HasPrefix(l, "chain "):
				chain = strings.Fields(l)[1]
			case l == "" || l == "}" || l == "flags owner" || strings.HasPrefix(l, "table ") || strings.HasPrefix(l, "type "):
			default:
				tables[name] = append(tables[name], chain+": "+l)
			}
		}
	}
	return tables, nil
}
