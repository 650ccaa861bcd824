// Package harness builds a simulated Kubernetes node out of network
// namespaces: a "node" netns where node-cache runs (hostNetwork), a "kdns"
// netns with a stock CoreDNS as kube-dns, one or more "pod" netns, and
// kube-proxy emulated with DNAT in iptables, IPVS or nftables mode. Only
// 169.254.0.0/16 and 198.18.0.0/15 are used; everything is removed on Close.
package harness

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Addresses of the simulated node.
const (
	LocalIP        = "169.254.20.10" // node-local cache (link-local)
	ClusterIP      = "198.18.0.10"   // kube-dns Service
	UpstreamIP     = "198.18.0.11"   // kube-dns-upstream Service
	KubeDNSPodIP   = "198.18.2.2"    // where kube-dns runs
	nodeToKubeDNS  = "198.18.2.1"
	ServiceCIDR    = "198.18.0.0/24"
	podSubnetFmt   = "198.18.%d.%s" // pod i: 198.18.(10+i).2, its gateway .1
	podSubnetFirst = 10
)

// Options configure a simulated node.
type Options struct {
	Mode    ProxyMode // default ModeIPTables
	Backend Backend   // default BackendNFT
	Pods    int       // default 1
	// IPv6: the cluster is IPv6: node-cache serves, and kube-proxy
	// translates, the IPv6 addresses (harness.IPv6). The node's network is
	// dual-stack, so the harness's own endpoints stay on IPv4.
	IPv6 bool
	Logf func(format string, args ...any)
}

// Node is one simulated Kubernetes node.
type Node struct {
	Opts    Options
	Dir     string // configs and logs
	Host    *Netns // the node's network namespace (hostNetwork pods run here)
	KubeDNS *Netns
	Pods    []*Netns

	kubeDNSProc *Process
	procs       []*Process
	containers  []*Container
	netnsNames  []string
	prefix      string // of its namespaces' and containers' names
	zoneSerial  int    // changes of the cluster zone (SetFillAddress)
}

var nodeSeq atomic.Int64

// namePrefix makes namespace names unique per process and per node, and lets
// a later run find and remove what a killed run left behind.
const namePrefix = "nlt"

var stalePrefix = regexp.MustCompile(`^` + namePrefix + `(\d+)x\d+-`)

// New builds a simulated node and starts kube-dns in it. On error, whatever
// was created is removed.
func New(opts Options) (n *Node, err error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the simulated node needs root (network namespaces, iptables): run as root")
	}
	if opts.Mode == "" {
		opts.Mode = ModeIPTables
	}
	if opts.Backend == "" {
		opts.Backend = BackendNFT
	}
	if opts.Pods <= 0 {
		opts.Pods = 1
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if err := checkTools(opts); err != nil {
		return nil, err
	}
	removeStaleContainers()
	removeStaleNamespaces()

	dir, err := os.MkdirTemp("", "nodelocal-node-")
	if err != nil {
		return nil, err
	}
	n = &Node{Opts: opts, Dir: dir}
	if err := os.Mkdir(n.StateDir(), 0o755); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			n.Close()
			n = nil
		}
	}()
	prefix := fmt.Sprintf("%s%dx%d-", namePrefix, os.Getpid(), nodeSeq.Add(1))
	n.prefix = prefix
	if n.Host, err = n.addNetns(prefix + "node"); err != nil {
		return n, err
	}
	if n.KubeDNS, err = n.addNetns(prefix + "kdns"); err != nil {
		return n, err
	}
	if err = n.Host.Run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
		return n, err
	}
	if err = n.link(n.Host, "kdns0", nodeToKubeDNS, nodeToKubeDNSv6, n.KubeDNS, "eth0", KubeDNSPodIP, KubeDNSPodIPv6); err != nil {
		return n, err
	}
	if err = n.routes(n.KubeDNS, nodeToKubeDNS, []string{"198.18.0.0/15"}, nodeToKubeDNSv6, []string{"2001:2::/48"}); err != nil {
		return n, err
	}
	// The node's own route for Service IPs (a real node's default route); the
	// DNAT picks the endpoint.
	if err = n.routes(n.Host, KubeDNSPodIP, []string{ServiceCIDR}, KubeDNSPodIPv6, []string{ServiceCIDRv6}); err != nil {
		return n, err
	}
	for i := 0; i < opts.Pods; i++ {
		pod, err := n.addNetns(fmt.Sprintf("%spod%d", prefix, i))
		if err != nil {
			return n, err
		}
		gw, gw6 := podAddr(i, "1"), podAddrv6(i, "1")
		if err := n.link(n.Host, fmt.Sprintf("pod%d", i), gw, gw6, pod, "eth0", podAddr(i, "2"), podAddrv6(i, "2")); err != nil {
			return n, err
		}
		if err := n.routes(pod, gw, []string{ServiceCIDR, LocalIP + "/32"}, gw6, []string{ServiceCIDRv6, LocalIPv6 + "/128"}); err != nil {
			return n, err
		}
		n.Pods = append(n.Pods, pod)
	}
	if err = n.installKubeProxy(); err != nil {
		return n, fmt.Errorf("emulate kube-proxy (%s mode, %s backend): %w", opts.Mode, opts.Backend, err)
	}
	if err = n.startKubeDNS(); err != nil {
		return n, err
	}
	opts.Logf("simulated node ready: %s mode, iptables-%s, namespaces %s*", opts.Mode, opts.Backend, prefix)
	return n, nil
}

func podAddr(i int, host string) string { return fmt.Sprintf(podSubnetFmt, podSubnetFirst+i, host) }

func podAddrv6(i int, host string) string { return fmt.Sprintf(podSubnetFmtv6, podSubnetFirst+i, host) }

// PodIP is the address of pod i.
func PodIP(i int) string { return podAddr(i, "2") }

func checkTools(opts Options) error {
	tools := []string{"ip", "sysctl", opts.Backend.IPTables(), "conntrack"}
	if opts.IPv6 {
		tools = append(tools, opts.Backend.IP6Tables())
	}
	if opts.Mode == ModeNFTables {
		tools = append(tools, "nft")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("the simulated node needs %s: apt-get install -y iproute2 procps iptables nftables conntrack", tool)
		}
	}
	return nil
}

func (n *Node) addNetns(name string) (*Netns, error) {
	ns, err := createNetns(name)
	if ns != nil || err == nil {
		n.netnsNames = append(n.netnsNames, name)
	}
	if err == nil && n.Opts.IPv6 {
		// no duplicate address detection: an address is usable at once
		err = ns.Run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}
	return ns, err
}

// link connects two namespaces with a veth pair, addresses in a /24, and
// with IPv6 in a /64.
func (n *Node) link(a *Netns, aName, aIP, aIPv6 string, b *Netns, bName, bIP, bIPv6 string) error {
	if err := a.Run("ip", "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name); err != nil {
		return err
	}
	for _, side := range []struct {
		ns            *Netns
		dev, ip, ipv6 string
	}{{a, aName, aIP, aIPv6}, {b, bName, bIP, bIPv6}} {
		if err := side.ns.Run("ip", "addr", "add", side.ip+"/24", "dev", side.dev); err != nil {
			return err
		}
		if n.Opts.IPv6 {
			if err := side.ns.Run("ip", "addr", "add", side.ipv6+"/64", "dev", side.dev, "nodad"); err != nil {
				return err
			}
		}
		if err := side.ns.Run("ip", "link", "set", side.dev, "up"); err != nil {
			return err
		}
	}
	return nil
}

// routes sends dsts through gw in ns, and with IPv6 dstsv6 through gwv6.
func (n *Node) routes(ns *Netns, gw string, dsts []string, gwv6 string, dstsv6 []string) error {
	for _, dst := range dsts {
		if err := ns.Run("ip", "route", "add", dst, "via", gw); err != nil {
			return err
		}
	}
	if !n.Opts.IPv6 {
		return nil
	}
	for _, dst := range dstsv6 {
		if err := ns.Run("ip", "-6", "route", "add", dst, "via", gwv6); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) startKubeDNS() error {
	bin, err := Binary("coredns")
	if err != nil {
		return err
	}
	ips := []string{KubeDNSPodIP}
	if n.Opts.IPv6 {
		ips = append(ips, KubeDNSPodIPv6)
	}
	conf, err := writeKubeDNSConfig(n.Dir, ips...)
	if err != nil {
		return err
	}
	n.kubeDNSProc, err = n.Start(n.KubeDNS, "kube-dns", []string{bin, "-conf", conf})
	if err != nil {
		return err
	}
	return n.WaitForAnswer(n.KubeDNS, KubeDNSPodIP, KubernetesSvc, 10*time.Second)
}

// AddServerIPs puts ips on a bridge of their own in the node netns and routes
// every pod to them, so that servers other than node-cache can listen on the
// node beside it (the bench runs its references there).
func (n *Node) AddServerIPs(ips ...string) error {
	const bridge = "servers0"
	if err := n.Host.Run("ip", "link", "add", bridge, "type", "bridge"); err != nil {
		return err
	}
	if err := n.Host.Run("ip", "link", "set", bridge, "up"); err != nil {
		return err
	}
	for _, ip := range ips {
		if err := n.Host.Run("ip", "addr", "add", ip+"/32", "dev", bridge); err != nil {
			return err
		}
		for i, pod := range n.Pods {
			if err := pod.Run("ip", "route", "add", ip+"/32", "via", podAddr(i, "1")); err != nil {
				return err
			}
		}
	}
	return nil
}

// StateDir is the node's instance directory, which the DaemonSet mounts
// from the node at /run/node-local-dns: node-cache instances of this node
// recognise each other through it.
func (n *Node) StateDir() string { return filepath.Join(n.Dir, "node-local-dns") }

// Start runs a program inside ns, with the node's instance directory; Close
// stops it.
func (n *Node) Start(ns *Netns, name string, argv []string, env ...string) (*Process, error) {
	p, err := StartProcess(ns, n.Dir, name, argv, append([]string{"NODELOCAL_STATE_DIR=" + n.StateDir()}, env...)...)
	if err != nil {
		return nil, err
	}
	n.procs = append(n.procs, p)
	return p, nil
}

// Close stops every process and removes every namespace of the node.
func (n *Node) Close() {
	for _, c := range n.containers {
		c.Remove()
	}
	for _, p := range n.procs {
		p.Kill()
	}
	for _, name := range n.netnsNames {
		deleteNetns(name)
	}
	if n.Dir != "" && os.Getenv("NODELOCAL_KEEP_LOGS") == "" {
		os.RemoveAll(n.Dir)
	}
}

// removeStaleNamespaces deletes namespaces left by harness processes that died
// without cleaning up (SIGKILL, a crashed test binary).
func removeStaleNamespaces() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		m := stalePrefix.FindStringSubmatch(fields[0])
		if m == nil {
			continue
		}
		if ownerAlive(m[1]) {
			continue
		}
		deleteNetns(fields[0])
	}
}

// KubeDNSQueries is how many client queries kube-dns has answered so far.
// Queries CoreDNS sends on its own are left out, as they come at their own
// times: the loop plugin's HINFO probes after a start (retried every second
// until the listeners are up), and the NS queries of forward's health checks
// and of node-cache's readiness probe.
func (n *Node) KubeDNSQueries() (int, error) {
	body, err := n.KubeDNS.HTTPGet("http://" + KubeDNSMetrics + "/metrics")
	if err != nil {
		return 0, fmt.Errorf("kube-dns metrics: %w", err)
	}
	var clients strings.Builder
	for line := range strings.Lines(body) {
		if !strings.Contains(line, `type="HINFO"`) && !strings.Contains(line, `type="NS"`) {
			clients.WriteString(line)
		}
	}
	return int(MetricSum(clients.String(), "coredns_dns_requests_total")), nil
}

// MetricSum adds up every sample of a metric in Prometheus text format.
func MetricSum(body, name string) float64 {
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		fields := strings.Fields(line)
		if v, err := strconv.ParseFloat(fields[len(fields)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// ConntrackEntries counts conntrack entries in the node netns from src to dst:port.
func (n *Node) ConntrackEntries(src, dst string, port int) (int, error) {
	count := 0
	for _, proto := range []string{"udp", "tcp"} {
		out, err := n.Host.Output("conntrack", "-L", "-p", proto, "--orig-src", src, "--orig-dst", dst, "--orig-port-dst", strconv.Itoa(port))
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.TrimSpace(line) != "" {
				count++
			}
		}
	}
	return count, nil
}
