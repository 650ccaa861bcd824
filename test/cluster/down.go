package cluster

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Down stops the cluster and removes everything it made.
func (c *Cluster) Down() { Down(c.Dir) }

// Down removes the cluster whose state is in dir: its processes and every
// container (through its cgroups), its namespaces and its files. It does what
// it can and is safe to run again, or on a directory with no cluster.
func Down(dir string) {
	var s state
	if b, err := os.ReadFile(filepath.Join(dir, "state.json")); err == nil {
		json.Unmarshal(b, &s)
	}
	for _, n := range s.Nodes {
		n.killTree(s.Name)
	}
	for _, ns := range s.Netns {
		killNetns(ns)
	}
	for _, n := range s.Nodes {
		exec.Command("ip", "netns", "del", n.Netns).Run()
	}
	for _, ns := range s.Netns {
		exec.Command("ip", "netns", "del", ns).Run()
	}
	if s.Name != "" || dirLooksOurs(dir) {
		os.RemoveAll(dir)
	}
}

// killNetns kills every process in the network namespace ns.
func killNetns(ns string) {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
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

// Running returns the cluster whose state is in dir if it was made with
// opts and its API server answers, for cluster-up to reuse.
func Running(dir string, opts Options) (*Cluster, bool) {
	c, err := Attach(dir)
	if err != nil || c.state.ProxyMode != opts.ProxyMode || c.state.ClusterDNS != opts.ClusterDNS || c.state.Workers != opts.Workers {
		return nil, false
	}
	return c, true
}

// Attach returns the running cluster whose state is in dir, booted by
// another process (cluster-up), to add or remove workers.
func Attach(dir string) (*Cluster, error) {
	var s state
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, fmt.Errorf("no cluster in %s: %w", dir, err)
	}
	if err := json.Unmarshal(b, &s); err != nil || len(s.Nodes) == 0 {
		return nil, fmt.Errorf("%s: not a cluster's state (%v)", filepath.Join(dir, "state.json"), err)
	}
	bin, err := Binaries(func(string, ...any) {})
	if err != nil {
		return nil, err
	}
	opts := Options{ProxyMode: s.ProxyMode, ClusterDNS: s.ClusterDNS, Workers: s.Workers, Dir: dir, Name: s.Name, Logf: func(string, ...any) {}}
	c := &Cluster{Node: s.Nodes[0], Opts: opts, Dir: dir, Bin: bin, NodeNetns: s.Nodes[0].Netns, state: s,
		Kubeconfig: filepath.Join(dir, "admin.kubeconfig"), Kubectl: filepath.Join(dir, "kubectl")}
	for _, n := range s.Nodes {
		n.c = c
	}
	if c.pki, err = loadPKI(filepath.Join(dir, "pki")); err != nil {
		return nil, err
	}
	if _, err := c.KubectlOutput("get", "--raw", "/readyz"); err != nil {
		return nil, fmt.Errorf("the cluster in %s does not answer: %w", dir, err)
	}
	return c, nil
}
