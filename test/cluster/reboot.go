package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Reboot restarts the node as a reboot does: kubelet and kube-proxy stop,
// shutdown runs (the pods' graceful stop the test wants, such as a SIGTERM
// to node-cache), every container is killed and containerd stops; the node's
// network loses what a reboot loses (the nodelocaldns interface, every
// iptables and nftables rule, conntrack); then containerd, kubelet and
// kube-proxy start again, and kubelet starts the pods anew.
func (n *Node) Reboot(shutdown func() error) error {
	for _, name := range []string{"kubelet", "kube-proxy"} {
		if err := n.stopProcess(name); err != nil {
			return err
		}
	}
	if err := shutdown(); err != nil {
		return err
	}
	if err := n.killContainers(); err != nil {
		return err
	}
	if err := n.stopProcess("containerd"); err != nil {
		return err
	}
	if err := n.clearNetwork(); err != nil {
		return err
	}
	if err := n.startContainerd(); err != nil {
		return err
	}
	return n.startKubelet()
}

// stopProcess kills the process group of the node's program name and waits
// for it to end.
func (n *Node) stopProcess(name string) error {
	bin := filepath.Join(n.c.Bin, name)
	n.c.mu.Lock()
	defer n.c.mu.Unlock()
	for i, pid := range n.Pids {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !slices.Contains(strings.Split(string(cmdline), "\x00"), bin) {
			continue
		}
		syscall.Kill(-pid, syscall.SIGKILL)
		n.Pids = slices.Delete(n.Pids, i, i+1)
		deadline := time.Now().Add(10 * time.Second)
		for syscall.Kill(pid, 0) == nil {
			if time.Now().After(deadline) {
				return fmt.Errorf("%s (pid %d) still runs 10 s after SIGKILL", name, pid)
			}
			time.Sleep(50 * time.Millisecond)
		}
		return n.c.saveStateLocked()
	}
	return fmt.Errorf("no %s among the processes of %s", name, n.Name)
}

// Tasks are the node's containers' tasks and their status (RUNNING,
// STOPPED, ...), by container ID.
func (n *Node) Tasks() (map[string]string, error) {
	out, err := n.Ctr("tasks", "ls")
	if err != nil {
		return nil, err
	}
	tasks := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] != "TASK" {
			tasks[f[0]] = f[2]
		}
	}
	return tasks, nil
}

// killContainers kills every container of the node and waits until none runs.
func (n *Node) killContainers() error {
	return n.waitFor("every container stopped", "containerd", 30*time.Second, func() error {
		tasks, err := n.Tasks()
		if err != nil {
			return err
		}
		var running []string
		for id, status := range tasks {
			if status != "STOPPED" {
				running = append(running, id+" "+status)
				n.Ctr("tasks", "kill", "--signal", "SIGKILL", id)
			}
		}
		if len(running) > 0 {
			return fmt.Errorf("still running: %s", strings.Join(running, ", "))
		}
		return nil
	})
}

// clearNetwork removes from the node's network namespace what a reboot
// does not bring back: node-cache's interface, every rule, conntrack.
func (n *Node) clearNetwork() error {
	if _, err := n.InNode("ip", "link", "show", "nodelocaldns"); err == nil {
		if _, err := n.InNode("ip", "link", "del", "nodelocaldns"); err != nil {
			return err
		}
	}
	// iptables-nft's tables too; the node keeps no legacy ones.
	if _, err := n.InNode("nft", "flush", "ruleset"); err != nil {
		return err
	}
	n.InNode("conntrack", "-F") // exits 1 when it deleted nothing
	return nil
}
