package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Node is one machine of the cluster: its network and mount namespaces, and
// its containerd, kubelet and kube-proxy. Node 0 also runs the control plane
// and the fake upstream; workers join it over the LAN bridge.
type Node struct {
	Name      string   `json:"name"`  // in the API
	Index     int      `json:"index"` // 0: the control plane's node
	Netns     string   `json:"netns"`
	HolderPid int      `json:"holderPid"`        // holds the mount namespace
	Pids      []int    `json:"pids"`             // process group leaders
	Taints    []string `json:"taints,omitempty"` // kubelet registers the node with them
	c         *Cluster
}

// IP is the node's InternalIP, on the LAN.
func (n *Node) IP() string {
	if n.Index == 0 {
		return NodeIP
	}
	return fmt.Sprintf("198.19.255.%d", 10+n.Index)
}

// PodCIDR is the range of the node's CNI bridge.
func (n *Node) PodCIDR() string { return fmt.Sprintf("198.19.%d.0/24", n.Index) }

func (n *Node) podGateway() string { return fmt.Sprintf("198.19.%d.1", n.Index) }

// cgroupRoot is the node's cgroup (kubelet's cgroupRoot) in every hierarchy.
func cgroupRoot(cluster string, index int) string {
	if index == 0 {
		return cluster
	}
	return fmt.Sprintf("%s-w%d", cluster, index)
}

// path is a file of the node: node 0's are in the cluster's directory,
// as they were before there were workers.
func (n *Node) path(parts ...string) string {
	if n.Index == 0 {
		return n.c.path(parts...)
	}
	return n.c.path(append([]string{"nodes", n.Name}, parts...)...)
}

func (n *Node) socket() string { return n.path("containerd", "containerd.sock") }

// command is argv run in the node's network and mount namespaces.
func (n *Node) command(argv ...string) *exec.Cmd {
	args := append([]string{fmt.Sprintf("--mount=/proc/%d/ns/mnt", n.HolderPid), "--net=/var/run/netns/" + n.Netns, "--"}, argv...)
	cmd := exec.Command("nsenter", args...)
	cmd.Env = append(os.Environ(), "PATH="+n.c.Bin+":/usr/sbin:/usr/bin:/sbin:/bin")
	return cmd
}

// InNode runs a command in the node's network namespace and returns its output.
func (n *Node) InNode(argv ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.Netns}, argv...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s on %s: %v: %s", strings.Join(argv, " "), n.Name, err, out)
	}
	return string(out), nil
}

// spawn starts cmd in a process group of its own, logging to name.log in
// the node's directory; the process outlives this one (cluster-up) until
// Down or RemoveWorker.
func (n *Node) spawn(name string, cmd *exec.Cmd) (int, error) {
	log, err := os.OpenFile(n.path(name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s on %s: %w", name, n.Name, err)
	}
	pid := cmd.Process.Pid
	go cmd.Wait() // reap it if it ends while this process runs
	n.c.mu.Lock()
	defer n.c.mu.Unlock()
	n.Pids = append(n.Pids, pid)
	return pid, n.c.saveStateLocked()
}

func (n *Node) logTail(name string) string {
	b, _ := os.ReadFile(n.path(name + ".log"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return "\n--- " + n.Name + " " + name + ".log:\n" + strings.Join(lines, "\n")
}

// Log is a component's log (name.log in the node's directory).
func (n *Node) Log(name string) string {
	b, _ := os.ReadFile(n.path(name + ".log"))
	return string(b)
}

// waitFor polls check until it succeeds, for at most d; the error shows the
// end of the node's log logName.
func (n *Node) waitFor(what, logName string, d time.Duration, check func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not within %v: %v%s", what, d, err, n.logTail(logName))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// nodeCacheStateDir is the DaemonSet's hostPath for node-cache's instances.
const nodeCacheStateDir = "/run/node-local-dns"

// startHolder starts the process that holds the node's mount namespace:
// mounts propagate between kubelet and the containers (rshared), and the
// machine's resolver and /var/log stay out of reach. node-cache's instance
// directory (a hostPath under /run, a tmpfs on a real machine) is the
// node's own, as its instance lock and its record of hot names are.
func (n *Node) startHolder() error {
	script := fmt.Sprintf("mount --make-rshared / && mount --bind %s /etc/resolv.conf && mount -t tmpfs tmpfs /var/log && "+
		"mkdir -p %s && mount -t tmpfs -o mode=0700 tmpfs %[2]s && exec sleep infinity",
		n.c.path("resolv.conf"), nodeCacheStateDir)
	pid, err := n.spawn("holder", exec.Command("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script))
	if err != nil {
		return err
	}
	n.c.mu.Lock()
	n.HolderPid = pid
	err = n.c.saveStateLocked()
	n.c.mu.Unlock()
	if err != nil {
		return err
	}
	// The namespace is ready once its resolv.conf is ours.
	return n.waitFor("the mount namespace", "holder", 5*time.Second, func() error {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/etc/resolv.conf", pid))
		if err == nil && !strings.Contains(string(b), UpstreamIP) {
			err = fmt.Errorf("resolv.conf is not the node's yet")
		}
		return err
	})
}

// start brings the node's programs up: its mount namespace, containerd with
// the images, kubelet and kube-proxy; it returns once the node is Ready.
func (n *Node) start() error {
	if err := n.writeConfigs(); err != nil {
		return err
	}
	if err := n.issueKubeletCertificate(); err != nil {
		return err
	}
	if n.HolderPid == 0 { // the control plane's node has one already
		if err := n.startHolder(); err != nil {
			return err
		}
	}
	if err := n.startContainerd(); err != nil {
		return err
	}
	return n.startKubelet()
}

// issueKubeletCertificate writes the node's kubelet identity,
// system:node:<name>, also its serving certificate, and its kubeconfig.
func (n *Node) issueKubeletCertificate() error {
	name := "kubelet-" + n.Name
	if err := n.c.pki.issue(name, "system:node:"+n.Name, []string{"system:nodes"}, []string{n.IP()}, nil); err != nil {
		return err
	}
	return n.c.pki.kubeconfig(n.path("kubelet.kubeconfig"), name, "https://"+NodeIP+":6443")
}

// killTree ends the node's processes, every process in its network
// namespace and its pods (through its cgroups).
func (n *Node) killTree(clusterName string) {
	for _, pid := range n.Pids {
		syscall.Kill(-pid, syscall.SIGKILL)
	}
	killNetns(n.Netns)
	removeCgroups(cgroupRoot(clusterName, n.Index))
}
