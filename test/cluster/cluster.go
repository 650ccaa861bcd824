package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Options configure a cluster.
type Options struct {
	ProxyMode string // kube-proxy's mode: iptables (default) or nftables
	// ClusterDNS is kubelet's clusterDNS, where pods' resolvers ask: the
	// kube-dns ClusterIP (default, as kubeadm sets it), or node-cache's
	// link-local IP, as kops, kubespray and IPVS clusters run.
	ClusterDNS string
	// Workers is how many nodes join the control plane's node. With none,
	// kube-dns runs one replica beside the clients; with workers, two
	// replicas on the control plane's node, so that every worker's misses
	// cross the LAN.
	Workers int
	// WorkerTaints are the taints workers register with, such as
	// node-cache's startup taint.
	WorkerTaints []string
	Dir          string // where the cluster keeps its state; default a new temporary directory
	Name         string // prefix of its namespaces and cgroups; default one derived from the process id
	Logf         func(string, ...any)
}

// Cluster is the control plane's node (embedded: its methods act on it)
// and the workers that joined it.
type Cluster struct {
	*Node
	Opts       Options
	Dir        string
	Bin        string // the nodes' programs
	Kubeconfig string // the admin's, for use inside NodeNetns
	Kubectl    string // a script running kubectl as the admin inside NodeNetns
	NodeNetns  string // the control plane node's network namespace: its hostNetwork pods live here
	pki        *pki
	mu         sync.Mutex // guards state
	state      state
}

// state is what Down needs to remove everything, also from another process.
type state struct {
	Name       string   `json:"name"`
	ProxyMode  string   `json:"proxyMode"`
	ClusterDNS string   `json:"clusterDNS"`
	Workers    int      `json:"workers"` // asked for at Up
	Netns      []string `json:"netns"`   // the fake upstream's and the LAN's
	Nodes      []*Node  `json:"nodes"`   // [0] is the control plane's
}

// clusterDNS is kubelet's clusterDNS.
func (c *Cluster) clusterDNS() string {
	if c.Opts.ClusterDNS == "" {
		return KubeDNSIP
	}
	return c.Opts.ClusterDNS
}

// Workers are the nodes that joined the control plane's node, in order.
func (c *Cluster) Workers() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.state.Nodes[1:])
}

// Up builds what is missing, boots the control plane's node and the
// workers, and waits until every node is Ready with kube-dns serving. On
// error everything it made is removed.
func Up(opts Options) (c *Cluster, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the real node needs root (network and mount namespaces, cgroups, containerd): run as root")
	}
	if opts.ProxyMode == "" {
		opts.ProxyMode = "iptables"
	}
	if opts.ProxyMode != "iptables" && opts.ProxyMode != "nftables" {
		return nil, fmt.Errorf("proxy mode %q: want iptables or nftables (this kernel has no IPVS)", opts.ProxyMode)
	}
	if opts.Workers < 0 || opts.Workers > maxWorkers {
		return nil, fmt.Errorf("%d workers: want 0 to %d", opts.Workers, maxWorkers)
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.Name == "" {
		opts.Name = fmt.Sprintf("nlc%d", os.Getpid())
	}
	for _, tool := range []string{"runc", "nsenter", "unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found: install runc, util-linux and iproute2 (make deps)", tool)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		return nil, errors.New("/usr/lib/cni/bridge not found: install containernetworking-plugins (make deps)")
	}
	bin, err := Binaries(opts.Logf)
	if err != nil {
		return nil, err
	}
	if opts.Dir == "" {
		if opts.Dir, err = os.MkdirTemp("", "nodelocal-cluster-"); err != nil {
			return nil, err
		}
	}
	removeStale()
	Down(opts.Dir) // what an interrupted run left there
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := raiseMachineLimits(1+opts.Workers, opts.Logf); err != nil {
		return nil, err
	}
	c = &Cluster{Opts: opts, Dir: opts.Dir, Bin: bin,
		state: state{Name: opts.Name, ProxyMode: opts.ProxyMode, ClusterDNS: opts.ClusterDNS, Workers: opts.Workers}}
	c.Node = &Node{Name: NodeName, Netns: opts.Name + "-node", c: c}
	c.NodeNetns = c.Node.Netns
	c.state.Nodes = []*Node{c.Node}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w (logs in %s)", err, c.Dir)
			c.Down()
		}
	}()
	start := time.Now()
	steps := []struct {
		what string
		do   func() error
	}{
		{"namespaces", c.makeNamespaces},
		{"certificates", c.makeCertificates},
		{"configuration and images", c.writeConfigsAndImages},
		{"mount namespace", c.startHolder},
		{"fake upstream", c.startUpstream},
		{"control plane", c.startControlPlane},
		{"the node's containerd, kubelet and kube-proxy", c.Node.start},
		{"workers", func() error { return c.addWorkers(opts.Workers) }},
		{"kube-dns", c.deployKubeDNS},
	}
	for _, s := range steps {
		t := time.Now()
		if err := s.do(); err != nil {
			return c, fmt.Errorf("%s: %w", s.what, err)
		}
		opts.Logf("cluster %s: %s ready in %v", opts.Name, s.what, time.Since(t).Round(100*time.Millisecond))
	}
	opts.Logf("cluster %s Ready: %d nodes, kube-proxy %s mode, clusterDNS %s, in %v", opts.Name, 1+opts.Workers, opts.ProxyMode, c.clusterDNS(),
		time.Since(start).Round(time.Second))
	return c, nil
}

// saveState records what Down removes.
func (c *Cluster) saveState() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.saveStateLocked()
}

func (c *Cluster) saveStateLocked() error {
	b, err := json.Marshal(c.state)
	if err != nil {
		return err
	}
	return os.WriteFile(c.path("state.json"), b, 0o644)
}

// makeNamespaces makes the control plane's node, the fake upstream, and
// the LAN the workers join.
func (c *Cluster) makeNamespaces() error {
	node, up, lan := c.NodeNetns, c.state.Name+"-up", c.lanNetns()
	c.state.Netns = []string{up, lan}
	if err := c.saveState(); err != nil {
		return err
	}
	cmds := [][]string{
		{"ip", "netns", "add", node},
		{"ip", "netns", "add", up},
		{"ip", "-n", node, "link", "set", "lo", "up"},
		{"ip", "-n", up, "link", "set", "lo", "up"},
		// The node's own address, on a link of its own (no dummy link type here).
		{"ip", "-n", node, "link", "add", "node0", "type", "bridge"},
		{"ip", "-n", node, "addr", "add", NodeIP + "/32", "dev", "node0"},
		{"ip", "-n", node, "link", "set", "node0", "up"},
		// A default route, as every node has: Service IPs need a route
		// before kube-proxy's DNAT picks their endpoint. Unknown
		// destinations end on this port-less bridge, inside the namespace.
		{"ip", "-n", node, "route", "add", "default", "dev", "node0", "src", NodeIP},
		{"ip", "-n", node, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", up},
		{"ip", "-n", node, "addr", "add", upstreamGW + "/24", "dev", "up0"},
		{"ip", "-n", node, "link", "set", "up0", "up"},
		{"ip", "-n", up, "addr", "add", UpstreamIP + "/24", "dev", "eth0"},
		{"ip", "-n", up, "link", "set", "eth0", "up"},
		{"ip", "-n", up, "route", "add", "default", "via", upstreamGW},
		{"ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"ip", "netns", "exec", node, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"},
	}
	if err := run(cmds); err != nil {
		return err
	}
	return c.makeLAN()
}

// run runs each command, stopping at the first that fails.
func run(cmds [][]string) error {
	for _, args := range cmds {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

func (c *Cluster) makeCertificates() error {
	p, err := newPKI(c.path("pki"))
	if err != nil {
		return err
	}
	c.pki = p
	if err := p.serviceAccountKey(); err != nil {
		return err
	}
	if err := p.issue("apiserver", "kube-apiserver", nil, []string{NodeIP, APIServiceIP, "127.0.0.1"},
		[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"}); err != nil {
		return err
	}
	clients := []struct{ name, cn, group string }{
		{"admin", "nodelocal-admin", "system:masters"},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"},
		{"kube-controller-manager", "system:kube-controller-manager", ""},
		{"kube-scheduler", "system:kube-scheduler", ""},
		{"kube-proxy", "system:kube-proxy", ""},
	}
	server := "https://" + NodeIP + ":6443"
	for _, cl := range clients {
		var groups []string
		if cl.group != "" {
			groups = []string{cl.group}
		}
		if err := p.issue(cl.name, cl.cn, groups, nil, nil); err != nil {
			return err
		}
		if err := p.kubeconfig(c.path(cl.name+".kubeconfig"), cl.name, server); err != nil {
			return err
		}
	}
	c.Kubeconfig = c.path("admin.kubeconfig")
	c.Kubectl = c.path("kubectl")
	script := fmt.Sprintf("#!/bin/sh\n# kubectl as the cluster's admin, inside the control plane node's network namespace.\nexec ip netns exec %s %s --kubeconfig %s \"$@\"\n",
		c.NodeNetns, filepath.Join(c.Bin, "kubectl"), c.Kubeconfig)
	return os.WriteFile(c.Kubectl, []byte(script), 0o755)
}

// inNode is argv run in the control plane node's namespaces.
func (c *Cluster) inNode(argv ...string) *exec.Cmd { return c.Node.command(argv...) }

// KubectlOutput runs kubectl as the admin and returns its standard output.
func (c *Cluster) KubectlOutput(args ...string) (string, error) {
	var stderr strings.Builder
	cmd := exec.Command(c.Kubectl, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Apply runs kubectl apply with manifest on standard input.
func (c *Cluster) Apply(manifest string) error {
	cmd := exec.Command(c.Kubectl, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(manifest)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kubectl apply: %v: %s", err, out)
	}
	return nil
}
