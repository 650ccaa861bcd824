// Command cluster boots the real test node (test/cluster) and leaves it
// running, or removes it: `make cluster-up`, `make cluster-down`.
//
//	cluster up [-proxy-mode iptables|nftables]   prints NAME=value lines to use it
//	cluster down
//	cluster build                                builds what is missing (make test runs it first)
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

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
		fmt.Fprintln(os.Stderr, "usage: cluster up [-proxy-mode iptables|nftables] [-cluster-dns IP] | cluster down | cluster build")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	mode := fs.String("proxy-mode", "iptables", "kube-proxy's mode: iptables or nftables")
	clusterDNS := fs.String("cluster-dns", "", "kubelet's clusterDNS: the kube-dns ClusterIP (default), or 169.254.20.10 as kops, kubespray and IPVS clusters run")
	fs.Parse(os.Args[2:])
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "cluster: the real node needs root (namespaces, cgroups, containerd): run as root")
		os.Exit(1)
	}
	switch os.Args[1] {
	case "up":
		opts := cluster.Options{ProxyMode: *mode, ClusterDNS: *clusterDNS, Dir: stateDir, Name: name,
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
		fmt.Fprintf(os.Stderr, "cluster: unknown command %q: want up, down or build\n", os.Args[1])
		os.Exit(2)
	}
}
