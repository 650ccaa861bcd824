package cluster

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/nodelocal/nodelocal/test/harness"
)

// startUpstream runs the fake internet's resolver (stock CoreDNS) in its
// namespace.
func (c *Cluster) startUpstream() error {
	coredns, err := harness.Binary("coredns")
	if err != nil {
		return err
	}
	if err := writeFile(c.path("upstream.Corefile"), upstreamCorefile); err != nil {
		return err
	}
	_, err = c.spawn("upstream", exec.Command("ip", "netns", "exec", c.state.Name+"-up", coredns, "-conf", c.path("upstream.Corefile")))
	if err != nil {
		return err
	}
	return c.waitFor("the fake upstream", "upstream", 10*time.Second, func() error { return c.tcpInNode(UpstreamIP + ":53") })
}

// tcpInNode checks that address accepts a connection from the node's namespace.
func (c *Cluster) tcpInNode(address string) error {
	ns := &harness.Netns{Name: c.NodeNetns}
	var conn net.Conn
	err := ns.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", address, time.Second)
		return err
	})
	if err == nil {
		conn.Close()
	}
	return err
}

func (c *Cluster) startControlPlane() error {
	b := func(name string) string { return filepath.Join(c.Bin, name) }
	p := c.pki.path
	if _, err := c.spawn("etcd", c.inNode(b("etcd"), "-data-dir", c.path("etcd"))); err != nil {
		return err
	}
	if err := c.waitFor("etcd", "etcd", 30*time.Second, func() error { return c.tcpInNode("127.0.0.1:2379") }); err != nil {
		return err
	}
	if _, err := c.spawn("kube-apiserver", c.inNode(b("kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379", "--advertise-address="+NodeIP, "--bind-address=0.0.0.0", "--secure-port=6443",
		"--service-cluster-ip-range="+ServiceCIDR, "--tls-cert-file="+p("apiserver.crt"), "--tls-private-key-file="+p("apiserver.key"),
		"--client-ca-file="+p("ca.crt"), "--kubelet-client-certificate="+p("apiserver-kubelet-client.crt"),
		"--kubelet-client-key="+p("apiserver-kubelet-client.key"), "--kubelet-certificate-authority="+p("ca.crt"),
		// Reaching kubelet by name would ask the machine's resolver.
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local", "--service-account-key-file="+p("sa.pub"),
		"--service-account-signing-key-file="+p("sa.key"), "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true", "--profiling=false", "--cert-dir="+c.path("apiserver-certs"))); err != nil {
		return err
	}
	if err := c.waitFor("the API server", "kube-apiserver", 90*time.Second, func() error {
		_, err := c.KubectlOutput("get", "--raw", "/readyz")
		return err
	}); err != nil {
		return err
	}
	if _, err := c.spawn("kube-controller-manager", c.inNode(b("kube-controller-manager"),
		"--kubeconfig="+c.path("kube-controller-manager.kubeconfig"), "--authentication-kubeconfig="+c.path("kube-controller-manager.kubeconfig"),
		"--authorization-kubeconfig="+c.path("kube-controller-manager.kubeconfig"), "--bind-address=127.0.0.1",
		"--service-account-private-key-file="+p("sa.key"), "--root-ca-file="+p("ca.crt"),
		"--cluster-signing-cert-file="+p("ca.crt"), "--cluster-signing-key-file="+p("ca.key"),
		"--use-service-account-credentials=true", "--leader-elect=false", "--controllers=*,-nodeipam",
		"--cert-dir="+c.path("kcm-certs"))); err != nil {
		return err
	}
	_, err := c.spawn("kube-scheduler", c.inNode(b("kube-scheduler"), "--kubeconfig="+c.path("kube-scheduler.kubeconfig"),
		"--authentication-kubeconfig="+c.path("kube-scheduler.kubeconfig"), "--authorization-kubeconfig="+c.path("kube-scheduler.kubeconfig"),
		"--bind-address=127.0.0.1", "--leader-elect=false"))
	return err
}

func (n *Node) startContainerd() error {
	if _, err := n.spawn("containerd", n.command(filepath.Join(n.c.Bin, "containerd"), "--config", n.path("containerd", "config.toml"))); err != nil {
		return err
	}
	// Answering, not only its socket there: a restarted containerd's socket
	// file is the old one until it listens again.
	if err := n.waitFor("containerd", "containerd", 30*time.Second, func() error {
		_, err := n.Ctr("version")
		return err
	}); err != nil {
		return err
	}
	return n.importImages()
}

// Ctr runs ctr in the node's k8s.io namespace.
func (n *Node) Ctr(args ...string) (string, error) {
	out, err := n.ctr(args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s on %s: %v: %s", strings.Join(args, " "), n.Name, err, out)
	}
	return string(out), nil
}

// ctr is a ctr command in the node's k8s.io namespace.
func (n *Node) ctr(args ...string) *exec.Cmd {
	return n.command(append([]string{filepath.Join(n.c.Bin, "ctr"), "--address", n.socket(), "-n", "k8s.io"}, args...)...)
}

// makeCgroupRoot creates the node's cgroup (kubelet's cgroupRoot) in every
// cgroup v1 hierarchy; its pods' cgroups go under it.
func (n *Node) makeCgroupRoot() error {
	hierarchies, err := filepath.Glob("/sys/fs/cgroup/*/cgroup.procs")
	if err != nil {
		return err
	}
	for _, procs := range hierarchies {
		parent := filepath.Dir(procs)
		dir := filepath.Join(parent, cgroupRoot(n.c.state.Name, n.Index))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		// A new cpuset has no CPUs or memory nodes until given its parent's.
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(parent, f)); err == nil {
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (n *Node) startKubelet() error {
	if err := n.makeCgroupRoot(); err != nil {
		return err
	}
	cert := n.c.pki.path("kubelet-" + n.Name)
	args := []string{filepath.Join(n.c.Bin, "kubelet"), "--config=" + n.path("kubelet", "config.yaml"),
		"--kubeconfig=" + n.path("kubelet.kubeconfig"), "--node-ip=" + n.IP(), "--hostname-override=" + n.Name,
		"--root-dir=" + n.path("kubelet", "root"), "--cert-dir=" + n.path("kubelet", "pki"),
		"--tls-cert-file=" + cert + ".crt", "--tls-private-key-file=" + cert + ".key"}
	if len(n.Taints) > 0 {
		args = append(args, "--register-with-taints="+strings.Join(n.Taints, ","))
	}
	if _, err := n.spawn("kubelet", n.command(args...)); err != nil {
		return err
	}
	if _, err := n.spawn("kube-proxy", n.command(filepath.Join(n.c.Bin, "kube-proxy"), "--config="+n.path("kube-proxy", "config.yaml"))); err != nil {
		return err
	}
	return n.waitFor("the node Ready", "kubelet", 120*time.Second, func() error {
		out, err := n.c.KubectlOutput("get", "node", n.Name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err == nil && out != "True" {
			err = fmt.Errorf("Ready=%q", out)
		}
		return err
	})
}

// deployKubeDNS runs kube-dns: one replica beside the clients on a single
// node; with workers, two on the control plane's node, which runs no
// client, so that every miss crosses the LAN as it does in a fleet.
func (c *Cluster) deployKubeDNS() error {
	replicas, node := 1, ""
	if len(c.Workers()) > 0 {
		replicas, node = 2, NodeName
	}
	if err := c.Apply(kubeDNSManifest(replicas, node)); err != nil {
		return err
	}
	_, err := c.KubectlOutput("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=120s")
	if err != nil {
		return fmt.Errorf("%w%s", err, c.logTail("kubelet"))
	}
	return nil
}
