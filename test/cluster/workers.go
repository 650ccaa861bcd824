package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// maxWorkers bounds Options.Workers: each node costs about 300 MB and a
// share of two cores here.
const maxWorkers = 6

// maxNodeIndex bounds node indexes, which name the pod range (198.19.<index>.0/24)
// and the InternalIP (198.19.255.<10+index>); indexes are not reused.
const maxNodeIndex = 200

func (c *Cluster) lanNetns() string { return c.state.Name + "-lan" }

// makeLAN makes the bridge the nodes are joined by, in a namespace of its
// own, and links the control plane's node to it.
func (c *Cluster) makeLAN() error {
	lan := c.lanNetns()
	if err := run([][]string{
		{"ip", "netns", "add", lan},
		{"ip", "-n", lan, "link", "set", "lo", "up"},
		{"ip", "-n", lan, "link", "add", "lan0", "type", "bridge"},
		{"ip", "-n", lan, "link", "set", "lan0", "up"},
	}); err != nil {
		return err
	}
	return c.Node.joinLAN()
}

// joinLAN links the node's eth0 to the LAN bridge. A worker has its
// InternalIP there and reaches the fake upstream through the control
// plane's node, which keeps its own IP on node0 and routes the LAN.
func (n *Node) joinLAN() error {
	lan, port := n.c.lanNetns(), fmt.Sprintf("n%d", n.Index)
	cmds := [][]string{
		{"ip", "-n", n.Netns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", lan},
		{"ip", "-n", lan, "link", "set", port, "master", "lan0", "up"},
		{"ip", "-n", n.Netns, "link", "set", "eth0", "up"},
	}
	if n.Index == 0 {
		cmds = append(cmds, []string{"ip", "-n", n.Netns, "route", "add", lanCIDR, "dev", "eth0", "src", NodeIP})
	} else {
		cmds = append(cmds,
			[]string{"ip", "-n", n.Netns, "addr", "add", n.IP() + "/24", "dev", "eth0"},
			[]string{"ip", "-n", n.Netns, "route", "add", "default", "dev", "node0", "src", n.IP()},
			[]string{"ip", "-n", n.Netns, "route", "add", upstreamCIDR, "via", NodeIP})
	}
	return run(cmds)
}

// makeWorkerNetns makes a worker's network namespace, as makeNamespaces
// does the control plane node's: Service IPs need a route before
// kube-proxy's DNAT picks their endpoint, and unknown destinations (a
// Service IP before kube-proxy's first sync) end on a port-less bridge,
// not on another node that would translate them.
func (n *Node) makeWorkerNetns() error {
	return run([][]string{
		{"ip", "netns", "add", n.Netns},
		{"ip", "-n", n.Netns, "link", "set", "lo", "up"},
		{"ip", "-n", n.Netns, "link", "add", "node0", "type", "bridge"},
		{"ip", "-n", n.Netns, "link", "set", "node0", "up"},
		{"ip", "netns", "exec", n.Netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"ip", "netns", "exec", n.Netns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"},
	})
}

// routePodRanges routes each node's pod range to it from every other node,
// as a cloud's route table or a CNI's routes do.
func (c *Cluster) routePodRanges() error {
	var cmds [][]string
	for _, from := range c.Nodes() {
		for _, to := range c.Nodes() {
			if from != to {
				cmds = append(cmds, []string{"ip", "-n", from.Netns, "route", "replace", to.PodCIDR(), "via", to.IP()})
			}
		}
	}
	return run(cmds)
}

// Nodes are the cluster's nodes, the control plane's first.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.state.Nodes)
}

// addWorkers boots count workers side by side.
func (c *Cluster) addWorkers(count int) error {
	var wg sync.WaitGroup
	errs := make([]error, count)
	for i := range count {
		wg.Go(func() { _, errs[i] = c.AddWorker(c.Opts.WorkerTaints...) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// AddWorker boots a new worker (its namespaces, containerd with the images,
// kubelet as system:node:<name>, registered with taints such as
// "key:NoSchedule", and kube-proxy), joins it to the LAN and the pod routes,
// and returns once it is Ready; pods can be scheduled on it at once, as on a
// node that joins a fleet.
func (c *Cluster) AddWorker(taints ...string) (*Node, error) {
	c.mu.Lock()
	index := c.state.Nodes[len(c.state.Nodes)-1].Index + 1
	if index > maxNodeIndex {
		c.mu.Unlock()
		return nil, fmt.Errorf("no node index left (the last is %d)", maxNodeIndex)
	}
	n := &Node{Name: fmt.Sprintf("%s-w%d", NodeName, index), Index: index, Netns: fmt.Sprintf("%s-w%d", c.state.Name, index), Taints: taints, c: c}
	c.state.Nodes = append(c.state.Nodes, n)
	err := c.saveStateLocked()
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	for _, step := range []func() error{n.makeWorkerNetns, n.joinLAN, c.routePodRanges, n.start} {
		if err = step(); err != nil {
			return n, fmt.Errorf("worker %s: %w", n.Name, err)
		}
	}
	return n, nil
}

// RemoveWorker ends the worker as a terminated instance ends (its
// processes and pods killed, its network gone), then deletes its Node, as
// the cloud's node controller does.
func (c *Cluster) RemoveWorker(n *Node) error {
	if n.Index == 0 {
		return errors.New("the control plane's node cannot be removed")
	}
	n.killTree(c.state.Name)
	var errs []error
	errs = append(errs, run([][]string{{"ip", "netns", "del", n.Netns}}))
	c.mu.Lock()
	c.state.Nodes = slices.DeleteFunc(c.state.Nodes, func(o *Node) bool { return o == n })
	errs = append(errs, c.saveStateLocked())
	c.mu.Unlock()
	for _, o := range c.Nodes() {
		exec.Command("ip", "-n", o.Netns, "route", "del", n.PodCIDR()).Run() // gone with a node that was removed before
	}
	if _, err := c.KubectlOutput("delete", "node", n.Name, "--wait=true"); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, os.RemoveAll(n.path()))
	return errors.Join(errs...)
}

// raiseMachineLimits raises the machine-wide limits that several nodes on
// one kernel share: every kubelet, containerd and kube-proxy opens inotify
// instances (cAdvisor, certificate and config watches); the default of 128
// per user lasts to about 12 nodes.
func raiseMachineLimits(nodes int, logf func(string, ...any)) error {
	const path = "/proc/sys/fs/inotify/max_user_instances"
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	have, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("%s: %q", path, b)
	}
	want := inotifyInstancesPerNode*nodes + inotifyInstancesOfTheMachine
	if have >= want {
		return nil
	}
	logf("fs.inotify.max_user_instances %d -> %d for %d nodes", have, want, nodes)
	if err := os.WriteFile(path, []byte(strconv.Itoa(want)), 0o644); err != nil {
		return fmt.Errorf("raise fs.inotify.max_user_instances to %d for %d nodes: %w", want, nodes, err)
	}
	return nil
}

// What one node opened here (9: kubelet 6, containerd 2, kube-proxy 1),
// with room, and what the machine's own processes may hold.
const (
	inotifyInstancesPerNode      = 16
	inotifyInstancesOfTheMachine = 64
)
