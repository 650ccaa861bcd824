// Command cluster boots the real test node (test/cluster) and leaves it
// running, or removes it: `make cluster-up`, `make cluster-down`.
//
//	cluster up [-proxy-mode iptables|nftables] [-cluster-dns IP] [-workers N]   prints NAME=value lines to use it
//	cluster add-worker [-taint key:Effect]...  one more worker joins the running cluster; prints its NODE_NETNS_ line
//	cluster remove-worker NAME                   the worker ends as a terminated instance ends, its Node deleted
//	cluster down
//	cluster build                                builds what is missing (make test runs it first)
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nodelocal/nodelocal/test/cluster"
)

// The node of `make cluster-up`: one at a time, in a fixed place, so that
// cluster-down finds it from another process.
var (
	stateDir = filepath.Join(os.TempDir(), "nodelocal-cluster")
	name     = "nlc0"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: cluster up [-proxy-mode iptables|nftables] [-cluster-dns IP] [-workers N] | cluster add-worker [-taint key:Effect] | cluster remove-worker NAME | cluster down | cluster build")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	mode := fs.String("proxy-mode", "iptables", "kube-proxy's mode: iptables or nftables")
	clusterDNS := fs.String("cluster-dns", "", "kubelet's clusterDNS: the kube-dns ClusterIP (default), or 169.254.20.10 as kops, kubespray and IPVS clusters run")
	var taints taintList
	fs.Var(&taints, "taint", "add-worker: a taint the new worker registers with, such as node-local-dns.kubernetes.io/not-ready:NoSchedule (repeatable)")
	workers := fs.Int("workers", 0, "how many worker nodes join the control plane's node (kube-dns then runs on the control plane's node only)")
	fs.Parse(os.Args[2:])
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "cluster: the real node needs root (namespaces, cgroups, containerd): run as root")
		os.Exit(1)
	}
	switch os.Args[1] {
	case "up":
		opts := cluster.Options{ProxyMode: *mode, ClusterDNS: *clusterDNS, Workers: *workers, Dir: stateDir, Name: name,
			Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }}
		c, running := cluster.Running(stateDir, opts)
		var err error
		if !running {
			c, err = cluster.Up(opts)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "cluster up: %v\n", err)
			os.Exit(1)
		}
		fmt.Printf("KUBECONFIG=%s\nKUBECTL=%s\nNODE_NETNS=%s\nNODE_CACHE_IMAGE=%s\nCLIENT_IMAGE=%s\n",
			c.Kubeconfig, c.Kubectl, c.NodeNetns, cluster.NodeCacheImage, cluster.ClientImage)
		for _, n := range c.Nodes() {
			fmt.Printf("NODE_NETNS_%s=%s\n", n.Name, n.Netns)
		}
	case "add-worker":
		c, err := cluster.Attach(stateDir)
		if err == nil {
			var n *cluster.Node
			if n, err = c.AddWorker(taints...); err == nil {
				fmt.Printf("NODE_NETNS_%s=%s\n", n.Name, n.Netns)
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "cluster add-worker: %v\n", err)
			os.Exit(1)
		}
	case "remove-worker":
		err := fmt.Errorf("name the worker to remove")
		if c, aerr := cluster.Attach(stateDir); aerr != nil {
			err = aerr
		} else if fs.NArg() == 1 {
			var names []string
			for _, n := range c.Workers() {
				names = append(names, n.Name)
				if n.Name == fs.Arg(0) {
					err = c.RemoveWorker(n)
				}
			}
			if !slices.Contains(names, fs.Arg(0)) {
				err = fmt.Errorf("no worker %q: the workers are %s", fs.Arg(0), strings.Join(names, ", "))
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "cluster remove-worker: %v\n", err)
			os.Exit(1)
		}
	case "down":
		cluster.Down(stateDir)
	case "build":
		dir, err := cluster.Binaries(func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) })
		if err != nil {
			fmt.Fprintf(os.Stderr, "cluster build: %v\n", err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "the real node's programs are in %s\n", dir)
	default:
		fmt.Fprintf(os.Stderr, "cluster: unknown command %q: want up, add-worker, remove-worker, down or build\n", os.Args[1])
		os.Exit(2)
	}
}

// taintList collects repeated -taint flags.
type taintList []string

func (l *taintList) String() string     { return strings.Join(*l, ",") }
func (l *taintList) Set(s string) error { *l = append(*l, s); return nil }
