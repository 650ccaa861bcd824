package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/nodelocal/nodelocal/test/harness"
)

// ApplyKustomize applies manifests/base with only the image set, through an
// overlay of its own (kustomize images:), as an operator would; it returns
// the overlay's directory.
func (c *Cluster) ApplyKustomize() (string, error) { return c.ApplyKustomizeOf("base") }

// ApplyKustomizeOf is ApplyKustomize of another directory of manifests/,
// such as overlays/node-readiness.
func (c *Cluster) ApplyKustomizeOf(manifests string) (string, error) {
	root, err := harness.RepoRoot()
	if err != nil {
		return "", err
	}
	dir := c.path("overlay")
	base, err := filepath.Rel(dir, filepath.Join(root, "manifests", manifests))
	if err != nil {
		return "", err
	}
	name, tag, _ := strings.Cut(NodeCacheImage, ":")
	overlay := fmt.Sprintf("resources:\n  - %s\nimages:\n  - name: ghcr.io/nodelocal/node-cache\n    newName: %s\n    newTag: %s\n", base, name, tag)
	if err := writeFile(filepath.Join(dir, "kustomization.yaml"), overlay); err != nil {
		return "", err
	}
	_, err = c.KubectlOutput("apply", "-k", dir)
	return dir, err
}

// Exec runs argv in the client pod and returns its output.
func (c *Cluster) Exec(pod string, argv ...string) (string, error) {
	return c.KubectlOutput(append([]string{"exec", pod, "--"}, argv...)...)
}

// StartClient runs a client pod (ClusterFirst DNS) and waits until it runs.
func (c *Cluster) StartClient(name string) error { return c.startClient(name, "") }

// HostClient is the hostNetwork client pod of the scenarios that load from
// one (Scenario.HostClient).
const HostClient = "host-client"

// StartHostClient runs a hostNetwork client pod (ClusterFirstWithHostNet
// DNS, as ingress controllers and CNI agents run), as the node's own
// processes ask, and waits until it runs.
func (c *Cluster) StartHostClient(name string) error {
	return c.startClient(name, "  hostNetwork: true\n  dnsPolicy: ClusterFirstWithHostNet\n")
}

func (c *Cluster) startClient(name, spec string) error {
	pod := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: default, labels: {app: %[1]s}}
spec:
%[3]s  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: %[2]s
    imagePullPolicy: Never
    # A shell as PID 1 reaps the orphans it inherits: each busybox timeout(1)
    # leaves its watchdog process behind (the nslookup client's).
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]
`, name, ClientImage, spec)
	if err := c.Apply(pod); err != nil {
		return err
	}
	_, err := c.KubectlOutput("wait", "--for=condition=Ready", "pod/"+name, "--timeout=60s")
	return err
}

// Metric sums a metric's series in a Prometheus endpoint reached from the node.
func (c *Cluster) Metric(url, name string) (float64, error) {
	ns := &harness.Netns{Name: c.NodeNetns}
	body, err := ns.HTTPGet(url)
	if err != nil {
		return 0, err
	}
	return harness.MetricSum(body, name), nil
}

// NodeLocalState is what node-cache leaves on the node: its interface (if
// any), its rules and its chains in iptables, and its nf_tables tables' rules
// (each instance's own table under one name: it changes with every process).
func (c *Cluster) NodeLocalState() (iface string, rules []string, err error) {
	if out, err := c.InNode("ip", "-o", "link", "show", "nodelocaldns"); err == nil {
		iface = strings.TrimSpace(out)
	}
	for _, save := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		out, err := c.InNode(save)
		if err != nil {
			return iface, nil, err
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "NodeLocal DNS Cache") || strings.HasPrefix(l, ":NODELOCAL-") {
				rules = append(rules, l)
			}
		}
	}
	tables, err := harness.NodeLocalNFTables(&harness.Netns{Name: c.NodeNetns})
	if err != nil {
		return iface, nil, err
	}
	for table, lines := range tables {
		table = hostTableName.ReplaceAllString(table, "nodelocaldns-host-*")
		for _, l := range lines {
			rules = append(rules, "nft "+table+": "+l)
		}
	}
	return iface, rules, nil
}

var hostTableName = regexp.MustCompile(`^nodelocaldns-host-[0-9a-f]+$`)

// WaitGone waits until no pod matches selector in kube-system.
func (c *Cluster) WaitGone(selector string, d time.Duration) error {
	return c.waitFor("pods "+selector+" gone", "kubelet", d, func() error {
		out, err := c.KubectlOutput("-n", "kube-system", "get", "pods", "-l", selector, "-o", "name")
		if err == nil && strings.TrimSpace(out) != "" {
			err = fmt.Errorf("still there: %s", strings.TrimSpace(out))
		}
		return err
	})
}

// KubectlAs runs kubectl as the bearer of token (a ServiceAccount's) instead
// of the admin, and returns its standard output.
func (c *Cluster) KubectlAs(token string, args ...string) (string, error) {
	server, err := c.KubectlOutput("config", "view", "--raw", "-o", "jsonpath={.clusters[0].cluster.server}")
	if err != nil {
		return "", err
	}
	kubeconfig := c.path("token.kubeconfig")
	config := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: %q, certificate-authority: %q}\n"+
		"users:\n- name: u\n  user: {token: %q}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n",
		server, c.path("pki", "ca.crt"), token)
	if err := writeFile(kubeconfig, config); err != nil {
		return "", err
	}
	// The wrapper's --kubeconfig comes first; the last one counts.
	return c.KubectlOutput(append([]string{"--kubeconfig", kubeconfig}, args...)...)
}

// SignalAPIServer sends sig to the node's kube-apiserver: SIGSTOP hangs it
// (connections open, no answer: an API server that is down or overloaded),
// SIGCONT resumes it.
func (c *Cluster) SignalAPIServer(sig syscall.Signal) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, pid := range c.Node.Pids {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && strings.Contains(string(cmdline), filepath.Join(c.Bin, "kube-apiserver")) {
			return syscall.Kill(pid, sig)
		}
	}
	return fmt.Errorf("no kube-apiserver among the control plane node's processes %v", c.Node.Pids)
}
