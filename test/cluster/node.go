package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Options configure a node.
type Options struct {
	ProxyMode string // kube-proxy's mode: iptables (default) or nftables
	// ClusterDNS is kubelet's clusterDNS, where pods' resolvers ask: the
	// kube-dns ClusterIP (default, as kubeadm sets it), or node-cache's
	// link-local IP, as kops, kubespray and IPVS clusters run.
	ClusterDNS string
	Dir        string // where the node keeps its state; default a new temporary directory
	Name       string // prefix of its namespaces and cgroups; default one derived from the process id
	Logf       func(string, ...any)
}

// Cluster is one running node with its control plane.
type Cluster struct {
	Opts       Options
	Dir        string
	Bin        string // the node's programs
	Kubeconfig string // the admin's, for use inside NodeNetns
	Kubectl    string // a script running kubectl as the admin inside NodeNetns
	NodeNetns  string // the node's network namespace: hostNetwork pods live here
	pki        *pki
	state      state
}

// state is what Down needs to remove everything, also from another process.
type state struct {
	Name       string   `json:"name"`
	ProxyMode  string   `json:"proxyMode"`
	ClusterDNS string   `json:"clusterDNS"`
	Netns      []string `json:"netns"`
	Pids       []int    `json:"pids"` // process group leaders
	HolderPid  int      `json:"holderPid"`
}

func (c *Cluster) socket() string { return c.path("containerd", "containerd.sock") }

// clusterDNS is kubelet's clusterDNS.
func (c *Cluster) clusterDNS() string {
	if c.Opts.ClusterDNS == "" {
		return KubeDNSIP
	}
	return c.Opts.ClusterDNS
}
func (c *Cluster) cgroupRoot() string { return c.state.Name }

// Up builds what is missing, boots a node and waits until it is Ready with
// kube-dns serving. On error everything it made is removed.
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
	c = &Cluster{Opts: opts, Dir: opts.Dir, Bin: bin, state: state{Name: opts.Name, ProxyMode: opts.ProxyMode, ClusterDNS: opts.ClusterDNS}}
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
		{"configuration", c.writeConfigs},
		{"mount namespace", c.startHolder},
		{"fake upstream", c.startUpstream},
		{"control plane", c.startControlPlane},
		{"containerd and images", c.startContainerd},
		{"kubelet and kube-proxy", c.startKubelet},
		{"kube-dns", c.deployKubeDNS},
	}
	for _, s := range steps {
		t := time.Now()
		if err := s.do(); err != nil {
			return c, fmt.Errorf("%s: %w", s.what, err)
		}
		opts.Logf("node %s: %s ready in %v", opts.Name, s.what, time.Since(t).Round(100*time.Millisecond))
	}
	opts.Logf("node %s Ready (kube-proxy %s mode, clusterDNS %s) in %v", opts.Name, opts.ProxyMode, c.clusterDNS(), time.Since(start).Round(time.Second))
	return c, nil
}

// saveState records what Down removes.
func (c *Cluster) saveState() error {
	b, err := json.Marshal(c.state)
	if err != nil {
		return err
	}
	return os.WriteFile(c.path("state.json"), b, 0o644)
}

func (c *Cluster) makeNamespaces() error {
	node, up := c.state.Name+"-node", c.state.Name+"-up"
	c.NodeNetns = node
	c.state.Netns = []string{node, up}
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
		{"kubelet", "system:node:" + NodeName, "system:nodes"},
	}
	server := "https://" + NodeIP + ":6443"
	for _, cl := range clients {
		var groups []string
		if cl.group != "" {
			groups = []string{cl.group}
		}
		ips := []string(nil)
		if cl.name == "kubelet" {
			ips = []string{NodeIP} // also kubelet's serving certificate
		}
		if err := p.issue(cl.name, cl.cn, groups, ips, nil); err != nil {
			return err
		}
		if err := p.kubeconfig(c.path(cl.name+".kubeconfig"), cl.name, server); err != nil {
			return err
		}
	}
	c.Kubeconfig = c.path("admin.kubeconfig")
	c.Kubectl = c.path("kubectl")
	script := fmt.Sprintf("#!/bin/sh\n# kubectl as the node's admin, inside its network namespace.\nexec ip netns exec %s %s --kubeconfig %s \"$@\"\n",
		c.NodeNetns, filepath.Join(c.Bin, "kubectl"), c.Kubeconfig)
	return os.WriteFile(c.Kubectl, []byte(script), 0o755)
}

// startHolder starts the process that holds the node's mount namespace:
// mounts propagate between kubelet and the containers (rshared), and the
// machine's resolver and /var/log stay out of reach.
func (c *Cluster) startHolder() error {
	script := fmt.Sprintf("mount --make-rshared / && mount --bind %s /etc/resolv.conf && mount -t tmpfs tmpfs /var/log && exec sleep infinity",
		c.path("resolv.conf"))
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script)
	pid, err := c.spawn("holder", cmd)
	if err != nil {
		return err
	}
	c.state.HolderPid = pid
	if err := c.saveState(); err != nil {
		return err
	}
	// The namespace is ready once its resolv.conf is ours.
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/etc/resolv.conf", pid))
		if err == nil && strings.Contains(string(b), UpstreamIP) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("mount namespace not ready: %v %s", err, c.logTail("holder"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// inNode is cmd's argv run in the node's network and mount namespaces.
func (c *Cluster) inNode(argv ...string) *exec.Cmd {
	args := append([]string{fmt.Sprintf("--mount=/proc/%d/ns/mnt", c.state.HolderPid), "--net=/var/run/netns/" + c.NodeNetns, "--"}, argv...)
	cmd := exec.Command("nsenter", args...)
	cmd.Env = append(os.Environ(), "PATH="+c.Bin+":/usr/sbin:/usr/bin:/sbin:/bin")
	return cmd
}

// spawn starts cmd in a process group of its own, logging to name.log; the
// process outlives this one (cluster-up) until Down.
func (c *Cluster) spawn(name string, cmd *exec.Cmd) (int, error) {
	log, err := os.OpenFile(c.path(name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", name, err)
	}
	pid := cmd.Process.Pid
	go cmd.Wait() // reap it if it ends while this process runs
	c.state.Pids = append(c.state.Pids, pid)
	return pid, c.saveState()
}

func (c *Cluster) logTail(name string) string {
	b, _ := os.ReadFile(c.path(name + ".log"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return "\n--- " + name + ".log:\n" + strings.Join(lines, "\n")
}

// waitFor polls check until it succeeds, for at most d.
func (c *Cluster) waitFor(what, logName string, d time.Duration, check func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not within %v: %v%s", what, d, err, c.logTail(logName))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

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

// Down stops the node and removes everything it made.
func (c *Cluster) Down() { Down(c.Dir) }

// Down removes the node whose state is in dir: its processes and every
// container (through its cgroups), its namespaces and its files. It does what
// it can and is safe to run again, or on a directory with no node.
func Down(dir string) {
	var s state
	if b, err := os.ReadFile(filepath.Join(dir, "state.json")); err == nil {
		json.Unmarshal(b, &s)
	}
	for _, pid := range s.Pids {
		syscall.Kill(-pid, syscall.SIGKILL)
	}
	for _, ns := range s.Netns {
		if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
			for _, f := range strings.Fields(string(out)) {
				if pid, err := strconv.Atoi(f); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	}
	if s.Name != "" {
		removeCgroups(s.Name)
	}
	for _, ns := range s.Netns {
		exec.Command("ip", "netns", "del", ns).Run()
	}
	if s.Name != "" || dirLooksOurs(dir) {
		os.RemoveAll(dir)
	}
}

// staleDirs are the directories of test nodes; the number after the
// prefix is the test process's id.
const staleDirs = "nodelocal-cluster-test-"

// TestDir is a directory for a test's node: removeStale removes it once
// this process is gone, should the test not have.
func TestDir(seq int) string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("%s%d-%d", staleDirs, os.Getpid(), seq))
}

// removeStale removes the nodes of test processes that died without
// removing theirs.
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), staleDirs+"*"))
	for _, dir := range dirs {
		pidText, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(dir), staleDirs), "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		Down(dir)
	}
}

func dirLooksOurs(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "pki", "ca.crt"))
	return err == nil
}

// removeCgroups kills every process in the node's cgroups (its pods) and
// removes them, in every cgroup v1 controller.
func removeCgroups(root string) {
	controllers, _ := filepath.Glob("/sys/fs/cgroup/*/" + root)
	for range 3 { // processes can take a moment to leave after SIGKILL
		for _, c := range controllers {
			filepath.WalkDir(c, func(path string, d os.DirEntry, err error) error {
				if err == nil && d.Name() == "cgroup.procs" {
					if b, err := os.ReadFile(path); err == nil {
						for _, f := range strings.Fields(string(b)) {
							if pid, err := strconv.Atoi(f); err == nil {
								syscall.Kill(pid, syscall.SIGKILL)
							}
						}
					}
				}
				return nil
			})
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, c := range controllers {
		var dirs []string
		filepath.WalkDir(c, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- { // children first
			os.Remove(dirs[i])
		}
	}
}

// Running returns the node whose state is in dir if it runs in proxyMode and
// its API server answers, for cluster-up to reuse.
func Running(dir string, opts Options) (*Cluster, bool) {
	var s state
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil || json.Unmarshal(b, &s) != nil || s.ProxyMode != opts.ProxyMode || s.ClusterDNS != opts.ClusterDNS || len(s.Netns) == 0 {
		return nil, false
	}
	bin, err := Binaries(func(string, ...any) {})
	if err != nil {
		return nil, false
	}
	c := &Cluster{Opts: Options{ProxyMode: opts.ProxyMode, ClusterDNS: opts.ClusterDNS, Dir: dir, Name: s.Name}, Dir: dir, Bin: bin, NodeNetns: s.Netns[0], state: s,
		Kubeconfig: filepath.Join(dir, "admin.kubeconfig"), Kubectl: filepath.Join(dir, "kubectl")}
	if _, err := c.KubectlOutput("get", "--raw", "/readyz"); err != nil {
		return nil, false
	}
	return c, true
}
