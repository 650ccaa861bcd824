package cluster_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nodelocal/nodelocal/test/cluster"
	"github.com/nodelocal/nodelocal/test/harness"
)

var (
	seq    atomic.Int32
	bootMu sync.Mutex
)

func newCluster(t *testing.T, opts cluster.Options) *cluster.Cluster {
	t.Helper()
	harness.RequirePrivileges(t)
	n := int(seq.Add(1))
	opts.Dir, opts.Name, opts.Logf = cluster.TestDir(n), fmt.Sprintf("nlc%dx%d", os.Getpid(), n), t.Logf
	// Parallel tests' clusters boot one at a time: a boot takes both CPUs,
	// and the first one fills the caches the others read.
	bootMu.Lock()
	c, err := cluster.Up(opts)
	bootMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range []string{"kubelet", "containerd"} {
				log := c.Log(name)
				if len(log) > 3000 {
					log = log[len(log)-3000:]
				}
				t.Logf("--- %s.log (end):\n%s", name, log)
			}
			out, _ := c.KubectlOutput("get", "pods", "-A", "-o", "wide")
			t.Logf("--- pods:\n%s", out)
		}
		c.Down()
	})
	return c
}

// lookup is a name a pod resolves, and the address it must get.
type lookup struct {
	name, ip string
	viaIPs   bool // also asked of each of the cache's IPs directly (FQDNs only)
}

// lookups resolves names from the client pod through the pod's own resolver
// (its resolv.conf: 198.18.0.10 and the search list) and, for FQDNs, through
// the kube-dns ClusterIP and 169.254.20.10 directly. All of them run in one
// exec, within a second or so: a round asked again must find the search
// list's negative answers still cached (5 s), even on a busy machine.
func lookups(t *testing.T, c *cluster.Cluster, pod string, want []lookup) {
	t.Helper()
	type step struct{ what, ip string }
	var steps []step
	var script strings.Builder
	ask := func(what, ip, command string) {
		steps = append(steps, step{what, ip})
		fmt.Fprintf(&script, "%s 2>&1; printf '\\n%s%%s\\n' $?\n", command, stepEnd)
	}
	for _, l := range want {
		ask(l.name+" through the pod's resolver", l.ip, "dnsload -lookup "+l.name)
		if !l.viaIPs {
			continue
		}
		for _, server := range []string{cluster.KubeDNSIP, "169.254.20.10"} {
			ask(l.name+" through "+server, l.ip, "nslookup -type=A "+l.name+" "+server)
		}
	}
	out, err := c.Exec(pod, "sh", "-c", script.String())
	if err != nil {
		t.Fatalf("the lookups in pod %s: %v\n%s", pod, err, out)
	}
	// Each step's output, then its end line: the marker and its exit status.
	results := strings.Split(out, "\n"+stepEnd)
	for i, s := range steps {
		if i+1 >= len(results) {
			t.Fatalf("%s: no result in the exec's output:\n%s", s.what, out)
		}
		output := results[i]
		if i > 0 {
			_, output, _ = strings.Cut(output, "\n") // the previous step's exit status
		}
		if status, _, _ := strings.Cut(results[i+1], "\n"); status != "0" || !strings.Contains(output, s.ip) {
			t.Fatalf("%s: exit status %s, want 0 and %s:\n%s", s.what, status, s.ip, output)
		}
	}
}

// stepEnd marks the end of each lookup's output in lookups' one exec.
const stepEnd = "--- end of lookup, exit status "

// assertClean fails unless node-cache left no interface and no rule.
func assertClean(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	iface, rules, err := c.NodeLocalState()
	if err != nil {
		t.Fatal(err)
	}
	if iface != "" || len(rules) != 0 {
		t.Fatalf("node-cache left the interface %q and %d rules:\n%s", iface, len(rules), strings.Join(rules, "\n"))
	}
}

// TestOnARealNode deploys manifests/base with only the image set on a real
// node (kubelet, containerd, kube-proxy), in each kube-proxy mode: the
// DaemonSet becomes Ready through its own probe, a ClusterFirst pod resolves
// cluster and external names through node-cache on the kube-dns ClusterIP and
// on 169.254.20.10 with no conntrack entry, cache hits never reach kube-dns,
// and kubectl delete -k leaves the node as it was with DNS still working.
// Then upstream's own manifest, with our image, does the same.
func TestOnARealNode(t *testing.T) {
	for _, mode := range []string{"iptables", "nftables"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel() // a few lookups: two such nodes share the machine
			c := newCluster(t, cluster.Options{ProxyMode: mode})
			if _, err := c.KubectlOutput("create", "service", "clusterip", "web", "--tcp=80:80"); err != nil {
				t.Fatal(err)
			}
			webIP, err := c.KubectlOutput("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
			if err != nil {
				t.Fatal(err)
			}
			if err := c.StartClient("client"); err != nil {
				t.Fatal(err)
			}
			want := []lookup{
				{"kubernetes.default", cluster.APIServiceIP, false}, // the search list
				{"kubernetes.default.svc.cluster.local", cluster.APIServiceIP, true},
				{"web.default.svc.cluster.local", webIP, true},
				{"www." + cluster.ExternalDomain, cluster.ExternalIP, true},
			}
			stillResolves := []lookup{{"kubernetes.default", cluster.APIServiceIP, false}}

			overlay, err := c.ApplyKustomize()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.KubectlOutput("-n", "kube-system", "rollout", "status", "ds/node-local-dns", "--timeout=90s"); err != nil {
				t.Fatal(err)
			}
			assertConfined(t, c)
			// What an operator runs to ask the node's cache.
			status, err := c.KubectlOutput("-n", "kube-system", "exec", "ds/node-local-dns", "--", "/node-cache", "status")
			if err != nil || !strings.Contains(status, "phase:       serving") || !strings.Contains(status, "ready:       yes") {
				t.Fatalf("kubectl exec ds/node-local-dns -- /node-cache status: %v\n%s", err, status)
			}
			t.Logf("kubectl -n kube-system exec ds/node-local-dns -- /node-cache status:\n%s", status)
			const metrics = "http://169.254.20.10:9253/metrics"
			kubeDNSMetrics := "http://" + podIP(t, c, "kube-system", "k8s-app=kube-dns") + ":9153/metrics"
			before, err := c.Metric(metrics, "coredns_dns_requests_total")
			if err != nil {
				t.Fatal(err)
			}
			lookups(t, c, "client", want)
			after, err := c.Metric(metrics, "coredns_dns_requests_total")
			if err != nil {
				t.Fatal(err)
			}
			if after-before < float64(len(want)) {
				t.Fatalf("node-cache counted %v queries for the pod's lookups, want at least %d", after-before, len(want))
			}
			// Again: cache hits, which kube-dns never sees.
			kubeDNSBefore, err := c.Metric(kubeDNSMetrics, "coredns_dns_requests_total")
			if err != nil {
				t.Fatal(err)
			}
			lookups(t, c, "client", want)
			kubeDNSAfter, err := c.Metric(kubeDNSMetrics, "coredns_dns_requests_total")
			if err != nil {
				t.Fatal(err)
			}
			if kubeDNSAfter != kubeDNSBefore {
				t.Errorf("kube-dns saw %v queries for lookups the cache had answered", kubeDNSAfter-kubeDNSBefore)
			}
			clientIP := podIP(t, c, "default", "app=client")
			if out, _ := c.InNode("conntrack", "-L", "-s", clientIP, "-p", "udp", "--dport", "53"); strings.Contains(out, "dport=53") {
				t.Errorf("conntrack entries for the pod's DNS flows:\n%s", out)
			}

			if _, err := c.KubectlOutput("delete", "-k", overlay, "--wait=true"); err != nil {
				t.Fatal(err)
			}
			if err := c.WaitGone("k8s-app=node-local-dns", 60*time.Second); err != nil {
				t.Fatal(err)
			}
			assertClean(t, c)
			lookups(t, c, "client", stillResolves)

			// Upstream's manifest, after its documented sed, with our image.
			b, err := os.ReadFile("testdata/upstream-nodelocaldns.yaml")
			if err != nil {
				t.Fatal(err)
			}
			upstream := strings.ReplaceAll(string(b), "registry.k8s.io/dns/k8s-dns-node-cache:1.26.4", cluster.NodeCacheImage)
			if err := c.Apply(upstream); err != nil {
				t.Fatal(err)
			}
			if _, err := c.KubectlOutput("-n", "kube-system", "rollout", "status", "ds/node-local-dns", "--timeout=90s"); err != nil {
				t.Fatal(err)
			}
			waitInterception(t, c)
			lookups(t, c, "client", want)
			if _, err := c.KubectlOutput("delete", "-f", "testdata/upstream-nodelocaldns.yaml", "--wait=true"); err != nil {
				t.Fatal(err)
			}
			if err := c.WaitGone("k8s-app=node-local-dns", 60*time.Second); err != nil {
				t.Fatal(err)
			}
			assertClean(t, c)
			lookups(t, c, "client", stillResolves)
		})
	}
}

// assertConfined checks node-cache as kubelet and containerd run the base
// DaemonSet: under the runtime's default seccomp filter, without NET_RAW
// (an nf_tables node), and with no service account token in its filesystem.
func assertConfined(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	var nodeNet syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+c.NodeNetns, &nodeNet); err != nil {
		t.Fatal(err)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, proc := range procs {
		comm, _ := os.ReadFile(proc + "/comm")
		var net syscall.Stat_t
		if strings.TrimSpace(string(comm)) != "node-cache" || syscall.Stat(proc+"/ns/net", &net) != nil || net.Ino != nodeNet.Ino {
			continue
		}
		status, err := os.ReadFile(proc + "/status")
		if err != nil {
			t.Fatal(err)
		}
		fields := map[string]string{}
		for _, line := range strings.Split(string(status), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				fields[k] = strings.TrimSpace(v)
			}
		}
		if fields["Seccomp"] != "2" {
			t.Errorf("node-cache's seccomp mode %q, want 2 (the runtime's default filter)", fields["Seccomp"])
		}
		capEff, err := strconv.ParseUint(fields["CapEff"], 16, 64)
		if err != nil || capEff != 1<<12|1<<10 {
			t.Errorf("node-cache's effective capabilities %s, want NET_ADMIN and NET_BIND_SERVICE only", fields["CapEff"])
		}
		if _, err := os.Stat(proc + "/root/var/run/secrets/kubernetes.io/serviceaccount/token"); err == nil {
			t.Error("a service account token is mounted in node-cache's container")
		}
		return
	}
	t.Fatal("no node-cache process in the node's network namespace")
}

// waitInterception waits until node-cache's rules are in (upstream's
// manifest has no readiness probe to wait on).
func waitInterception(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := c.Metric("http://169.254.20.10:9253/metrics", "coredns_nodelocal_interception_active")
		if err == nil && v == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("interception not active 30 s after the rollout (%v, %v)", v, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// podIP is the address of the first pod selector matches in namespace.
func podIP(t *testing.T, c *cluster.Cluster, namespace, selector string) string {
	t.Helper()
	ip, err := c.PodIP(namespace, selector)
	if err != nil {
		t.Fatal(err)
	}
	return ip
}
