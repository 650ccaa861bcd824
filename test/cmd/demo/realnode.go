package main

import (
	"fmt"
	"os"
	"time"

	"github.com/nodelocal/nodelocal/test/cluster"
)

// runRealNode shows node-cache on the real node: the DaemonSet of
// manifests/base under kubelet, a pod's lookups through it, and the node as
// it was after kubectl delete.
func runRealNode(mode string) error {
	step("Booting a real node: etcd, kube-apiserver, controller manager, scheduler, containerd, kubelet, kube-proxy (%s mode), kube-dns", mode)
	c, err := cluster.Up(cluster.Options{ProxyMode: mode, Dir: cluster.TestDir(0), Name: fmt.Sprintf("nlc%dx0", os.Getpid()),
		Logf: func(f string, a ...any) { show(f, a...) }})
	if err != nil {
		return err
	}
	defer c.Down()
	onInterrupt(c.Down)

	step("kubectl apply -k manifests/base (the image set to the one built here), and a client pod")
	overlay, err := c.ApplyKustomize()
	if err != nil {
		return err
	}
	if _, err := c.KubectlOutput("-n", "kube-system", "rollout", "status", "ds/node-local-dns", "--timeout=90s"); err != nil {
		return err
	}
	if err := c.StartClient("client"); err != nil {
		return err
	}
	pods, err := c.KubectlOutput("get", "pods", "-A", "-o", "wide")
	if err != nil {
		return err
	}
	fmt.Println(indent(pods))

	step("Lookups from the pod: through its resolver (the kube-dns ClusterIP, intercepted), and through 169.254.20.10")
	for _, argv := range [][]string{
		{"dnsload", "-lookup", "kubernetes.default"},
		{"nslookup", "-type=A", "www." + cluster.ExternalDomain},
		{"nslookup", "-type=A", "kubernetes.default.svc.cluster.local", "169.254.20.10"},
	} {
		out, err := c.Exec("client", argv...)
		if err != nil {
			return err
		}
		show("$ %v", argv)
		fmt.Println(indent(out))
	}
	_, rules, err := c.NodeLocalState()
	if err != nil {
		return err
	}
	show("node-cache's iptables rules on the node: %d", len(rules))

	step("kubectl delete -k: node-cache hands DNS back and leaves the node as it was")
	if _, err := c.KubectlOutput("delete", "-k", overlay, "--wait=true"); err != nil {
		return err
	}
	if err := c.WaitGone("k8s-app=node-local-dns", 60*time.Second); err != nil {
		return err
	}
	iface, rules, err := c.NodeLocalState()
	if err != nil {
		return err
	}
	show("interface left: %q, rules left: %d", iface, len(rules))
	out, err := c.Exec("client", "dnsload", "-lookup", "kubernetes.default")
	if err != nil {
		return err
	}
	show("the pod still resolves kubernetes.default through kube-dns: %s", out)
	step("Removing the node")
	return nil
}
