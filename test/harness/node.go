// Package harness builds a simulated Kubernetes node out of network
// namespaces: a "node" netns where node-cache runs (hostNetwork), a "kdns"
// netns with a stock CoreDNS as kube-dns, one or more "pod" netns, and
// kube-proxy emulated with DNAT in iptables, IPVS or nftables mode. Only
// 169.254.0.0/16 and 198.18.0.0/15 are used; everything is removed on Close.
package harness

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
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

// ProxyMode is the kube-proxy flavour being emulated.
type ProxyMode string

const (
	ModeIPTables ProxyMode = "iptables"
	ModeIPVS     ProxyMode = "ipvs"
	ModeNFTables ProxyMode = "nftables"
)

// Backend is the iptables backend the node's kube-proxy rules live in.
type Backend string

const (
	BackendLegacy Backend = "legacy"
	BackendNFT    Backend = "nft"
)

// Modes and Backends list every flavour, for table-driven tests.
var (
	Modes    = []ProxyMode{ModeIPTables, ModeIPVS, ModeNFTables}
	Backends = []Backend{BackendLegacy, BackendNFT}
)

// IPTables is the iptables command of the backend.
func (b Backend) IPTables() string { return "iptables-" + string(b) }

// Options configure a simulated node.
type Options struct {
	Mode    ProxyMode // default ModeIPTables
	Backend Backend   // default BackendNFT
	Pods    int       // default 1
	Logf    func(format string, args ...any)
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
	if err = n.Host.Run("sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return n, err
	}
	if err = link(n.Host, "kdns0", nodeToKubeDNS, n.KubeDNS, "eth0", KubeDNSPodIP); err != nil {
		return n, err
	}
	if err = n.KubeDNS.Run("ip", "route", "add", "198.18.0.0/15", "via", nodeToKubeDNS); err != nil {
		return n, err
	}
	// The node's own route for Service IPs (a real node's default route); the
	// DNAT picks the endpoint.
	if err = n.Host.Run("ip", "route", "add", ServiceCIDR, "via", KubeDNSPodIP); err != nil {
		return n, err
	}
	for i := 0; i < opts.Pods; i++ {
		pod, err := n.addNetns(fmt.Sprintf("%spod%d", prefix, i))
		if err != nil {
			return n, err
		}
		gw, ip := podAddr(i, "1"), podAddr(i, "2")
		if err := link(n.Host, fmt.Sprintf("pod%d", i), gw, pod, "eth0", ip); err != nil {
			return n, err
		}
		for _, dst := range []string{ServiceCIDR, LocalIP + "/32"} {
			if err := pod.Run("ip", "route", "add", dst, "via", gw); err != nil {
				return n, err
			}
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

// PodIP is the address of pod i.
func PodIP(i int) string { return podAddr(i, "2") }

func checkTools(opts Options) error {
	tools := []string{"ip", "sysctl", opts.Backend.IPTables(), "conntrack"}
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
	return ns, err
}

// link connects two namespaces with a veth pair, addresses in a /24.
func link(a *Netns, aName, aIP string, b *Netns, bName, bIP string) error {
	if err := a.Run("ip", "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name); err != nil {
		return err
	}
	for _, side := range []struct {
		ns      *Netns
		dev, ip string
	}{{a, aName, aIP}, {b, bName, bIP}} {
		if err := side.ns.Run("ip", "addr", "add", side.ip+"/24", "dev", side.dev); err != nil {
			return err
		}
		if err := side.ns.Run("ip", "link", "set", side.dev, "up"); err != nil {
			return err
		}
	}
	return nil
}

// installKubeProxy DNATs both kube-dns Service IPs to the kube-dns pod, the
// way the emulated kube-proxy mode does it.
func (n *Node) installKubeProxy() error {
	switch n.Opts.Mode {
	case ModeNFTables:
		rules := nftServiceRules(ClusterIP, UpstreamIP)
		script := "table ip kube-proxy {\n" +
			"  chain nat-prerouting {\n    type nat hook prerouting priority dstnat;\n" + rules + "  }\n" +
			"  chain nat-output {\n    type nat hook output priority -100;\n" + rules + "  }\n}\n"
		return n.nft(script)
	case ModeIPVS:
		// kube-proxy IPVS puts every ClusterIP on kube-ipvs0 (a dummy link; a
		// port-less bridge here, where dummy is missing). The DNAT below stands
		// in for the IPVS virtual server.
		if err := n.Host.Run("ip", "link", "add", "kube-ipvs0", "type", "bridge"); err != nil {
			return err
		}
		for _, svc := range []string{ClusterIP, UpstreamIP} {
			if err := n.Host.Run("ip", "addr", "add", svc+"/32", "dev", "kube-ipvs0"); err != nil {
				return err
			}
		}
	}
	cmds := [][]string{
		{"-t", "mangle", "-N", "KUBE-IPTABLES-HINT"},
		{"-t", "mangle", "-N", "KUBE-KUBELET-CANARY"},
		{"-t", "nat", "-N", "KUBE-SERVICES"},
		{"-t", "nat", "-A", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"},
		{"-t", "nat", "-A", "OUTPUT", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"},
	}
	for _, svc := range []string{ClusterIP, UpstreamIP} {
		cmds = append(cmds, iptablesServiceRules("-A", svc)...)
	}
	return n.iptables(cmds...)
}

// DeleteUpstreamService does what kube-proxy does when the kube-dns-upstream
// Service is deleted (an uninstall): its rules go, and so do its UDP
// conntrack entries.
func (n *Node) DeleteUpstreamService() error {
	var err error
	switch n.Opts.Mode {
	case ModeNFTables:
		rules := nftServiceRules(ClusterIP)
		err = n.nft("flush chain ip kube-proxy nat-prerouting\nflush chain ip kube-proxy nat-output\n" +
			"table ip kube-proxy {\n  chain nat-prerouting {\n" + rules + "  }\n  chain nat-output {\n" + rules + "  }\n}\n")
	case ModeIPVS:
		if err = n.Host.Run("ip", "addr", "del", UpstreamIP+"/32", "dev", "kube-ipvs0"); err == nil {
			err = n.iptables(iptablesServiceRules("-D", UpstreamIP)...)
		}
	default:
		err = n.iptables(iptablesServiceRules("-D", UpstreamIP)...)
	}
	if err != nil {
		return err
	}
	// conntrack -D exits 1 when it deleted nothing
	_ = n.Host.Run("conntrack", "-D", "-p", "udp", "--orig-dst", UpstreamIP)
	return nil
}

// iptablesServiceRules are the commands that add (op -A) or delete (-D) a
// Service's DNAT rules.
func iptablesServiceRules(op, svc string) [][]string {
	var cmds [][]string
	for _, proto := range []string{"udp", "tcp"} {
		cmds = append(cmds, []string{"-t", "nat", op, "KUBE-SERVICES", "-d", svc + "/32", "-p", proto, "--dport", "53",
			"-m", "comment", "--comment", "kube-system/kube-dns:dns", "-j", "DNAT", "--to-destination", KubeDNSPodIP + ":53"})
	}
	return cmds
}

// nftServiceRules are the services' DNAT rules in a kube-proxy nft chain.
func nftServiceRules(services ...string) string {
	var rules strings.Builder
	for _, svc := range services {
		for _, proto := range []string{"udp", "tcp"} {
			fmt.Fprintf(&rules, "    ip daddr %s %s dport 53 dnat to %s:53\n", svc, proto, KubeDNSPodIP)
		}
	}
	return rules.String()
}

func (n *Node) nft(script string) error {
	cmd := n.Host.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %v: %s", err, out)
	}
	return nil
}

func (n *Node) iptables(cmds ...[]string) error {
	ipt := n.Opts.Backend.IPTables()
	for _, args := range cmds {
		if err := n.Host.Run(ipt, append([]string{"-w", "5"}, args...)...); err != nil {
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
	conf, err := writeKubeDNSConfig(n.Dir)
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

// Query sends one query from ns to server (an IP; port 53) over udp or tcp.
func Query(ns *Netns, network, server, name string, qtype uint16) (*dns.Msg, error) {
	return QueryTimeout(ns, network, server, name, qtype, 2*time.Second)
}

// QueryTimeout is Query with its own timeout.
func QueryTimeout(ns *Netns, network, server, name string, qtype uint16, timeout time.Duration) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := ns.DialContext(ctx, network, server+":53")
	if err != nil {
		return nil, err
	}
	c := &dns.Conn{Conn: conn}
	defer c.Close()
	return Exchange(c, name, qtype, timeout)
}

// Exchange asks name on an open connection and reads the reply.
func Exchange(c *dns.Conn, name string, qtype uint16, timeout time.Duration) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c.SetDeadline(time.Now().Add(timeout))
	if err := c.WriteMsg(m); err != nil {
		return nil, err
	}
	return c.ReadMsg()
}

// WaitForAnswer polls until server answers name (NOERROR) from ns over UDP.
// Each attempt waits 100 ms at most: a query sent before the server could
// answer is lost, and must not use up the whole timeout.
func (n *Node) WaitForAnswer(ns *Netns, server, name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		r, err := QueryTimeout(ns, "udp", server, name, dns.TypeA, min(100*time.Millisecond, time.Until(deadline)))
		if err == nil && r.Rcode == dns.RcodeSuccess {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("rcode %s", dns.RcodeToString[r.Rcode])
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no answer for %s from %s within %v: %v", name, server, timeout, lastErr)
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
