package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nodelocal/nodelocal/test/harness"
)

// TestUpstreamConfigMapAndArgs: upstream's ConfigMap Corefile and DaemonSet
// args (-localip, -conf as the output path, -upstreamsvc through the Service
// variable) work unchanged; the flags configure the interception.
func TestUpstreamConfigMapAndArgs(t *testing.T) {
	node := harness.NewNode(t, harness.Options{})
	bin, err := harness.Binary("node-cache")
	if err != nil {
		t.Fatal(err)
	}
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	// Upstream's nodelocaldns.yaml ConfigMap Corefile after its deploy-time sed
	// (no nodelocal directive), with this node's addresses.
	base := filepath.Join(root, "plugin/nodelocal/pillar/testdata/upstream-configmap.Corefile")
	resolv := filepath.Join(node.Dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+harness.UpstreamIP+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(node.Dir, "Corefile")
	p, err := node.Start(node.Host, "node-cache", []string{bin,
		"-localip", harness.LocalIP + "," + harness.ClusterIP, "-conf", out, "-upstreamsvc", "kube-dns-upstream",
		"-basecorefile", base, "-resolvconf", resolv, "-kubednscm", filepath.Join(node.Dir, "none"), "-health-port", "8080"},
		"KUBE_DNS_UPSTREAM_SERVICE_HOST="+harness.UpstreamIP, "KUBE_DNS_SERVICE_HOST="+harness.ClusterIP)
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{harness.LocalIP, harness.ClusterIP} {
		if err := node.WaitForAnswer(node.Pods[0], ip, harness.WebSvc, 10*time.Second); err != nil {
			t.Fatalf("%v\n%s", err, p.Log())
		}
		mustQuery(t, node, "tcp", ip, "www.example.org")
	}
	rendered, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("rendered Corefile not written to -conf: %v", err)
	}
	if !strings.Contains(string(rendered), "forward . "+harness.UpstreamIP+" {") || !strings.Contains(string(rendered), "nodelocal {") {
		t.Fatalf("rendered Corefile:\n%s", rendered)
	}
	// Answers do not wait for the rules (without them, the ClusterIP goes to
	// kube-dns), and this Corefile has no ready plugin: poll.
	waitForRules(t, node, rulesBoth, 5*time.Second, "rules after the first answers")
}

// waitForLog waits until the process log contains s n times.
func waitForLog(t *testing.T, p *harness.Process, s string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for strings.Count(p.Log(), s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%q not logged %d times within %v:\n%s", s, n, timeout, p.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startReloadingNodeCache starts node-cache on its template with the reload
// plugin polling every 2 s, and returns how to edit the mounted template:
// the first from becomes to.
func startReloadingNodeCache(t *testing.T) (*harness.Node, *harness.Process, func(from, to string)) {
	t.Helper()
	node := harness.NewNode(t, harness.Options{})
	tmpl := strings.ReplaceAll(mustTemplate(t, node, ""), "    reload\n", "    reload 2s 1s\n")
	p, err := node.StartNodeCache("node-cache", tmpl)
	if err != nil {
		t.Fatal(err)
	}
	tmplPath := filepath.Join(node.Dir, "node-cache.Corefile.tmpl")
	edit := func(from, to string) {
		t.Helper()
		b, err := os.ReadFile(tmplPath)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), from) {
			t.Fatalf("template lacks %q", from)
		}
		if err := os.WriteFile(tmplPath, []byte(strings.Replace(string(b), from, to, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return node, p, edit
}

// TestTemplateEditsUnderLoad: edits of the mounted template are picked up by
// reload with zero failed queries under load, whatever the client; a template
// that does not render, and one CoreDNS rejects, leave the running config
// serving and are counted.
func TestTemplateEditsUnderLoad(t *testing.T) {
	waitsMostly(t)
	node, p, edit := startReloadingNodeCache(t)
	// Polled: a reload restarts the metrics listener, refusing for a moment.
	waitForConfigErrors := func(atLeast float64) {
		t.Helper()
		const metric = `coredns_nodecache_setup_errors_total{errortype="configmap"}`
		deadline := time.Now().Add(10 * time.Second)
		for {
			v, err := node.NodeCacheMetric(metric)
			if err == nil && v >= atLeast {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s = %v (%v), want at least %v", metric, v, err, atLeast)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	loadDone := startLoad(ctx, t, node, 150, 20*time.Second)

	time.Sleep(2 * time.Second)
	// Real changes: three reloads.
	for i, ttl := range [][2]string{{"30", "20"}, {"20", "30"}, {"30", "20"}} {
		edit("success 9984 "+ttl[0]+"\n", "success 9984 "+ttl[1]+"\n")
		waitForLog(t, p, "Reloading complete", i+1, 10*time.Second)
	}
	waitForLog(t, p, "new TCP connections waited", 3, 5*time.Second)
	for line := range strings.Lines(p.Log()) {
		if strings.Contains(line, "plugin/nodelocal: Reload:") {
			t.Log(strings.TrimSpace(line))
		}
	}

	edit("    loop\n", "    loop\n    bogus__PILLAR__THING__\n") // does not render
	waitForConfigErrors(1)
	edit("    bogus__PILLAR__THING__\n", "    cache notanumber\n") // renders; CoreDNS rejects it
	waitForLog(t, p, "previous configuration keeps serving", 1, 10*time.Second)
	waitForConfigErrors(2)
	results := <-loadDone
	if f, sent := results.Failed(anyTarget, allTransports...); f != 0 || sent < 17000 {
		t.Fatalf("%d of %d queries failed across three reloads and two broken edits, want 0 (and at least 17000 sent)", f, sent)
	}
	if n := strings.Count(p.Log(), "Reloading complete"); n != 3 {
		t.Fatalf("reloaded %d times, want exactly 3 (broken edits must not reload)", n)
	}
}

// TestReloadKeepsOpenConnections: a reload's old servers close the TCP
// connections they accepted; what clients send on them afterwards is still
// answered, by the new servers: a client slowed down between its handshake
// and its query, and one that keeps its connection open between queries.
func TestReloadKeepsOpenConnections(t *testing.T) {
	node, p, edit := startReloadingNodeCache(t)
	ask := func(c *dns.Conn) error {
		m := new(dns.Msg).SetQuestion("www.example.org.", dns.TypeA)
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if err := c.WriteMsg(m); err != nil {
			return err
		}
		_, err := c.ReadMsg()
		return err
	}
	type client struct {
		name string
		conn *dns.Conn
	}
	var clients []client
	for _, target := range []string{harness.LocalIP, harness.ClusterIP} {
		for _, kind := range []string{"silent until after the reload", "persistent, asked before the reload"} {
			c, err := node.Pods[0].DialContext(context.Background(), "tcp", target+":53")
			if err != nil {
				t.Fatal(err)
			}
			conn := &dns.Conn{Conn: c}
			defer conn.Close()
			if strings.HasPrefix(kind, "persistent") {
				if err := ask(conn); err != nil {
					t.Fatalf("%s, before the reload: %v", target, err)
				}
			}
			clients = append(clients, client{target + " " + kind, conn})
		}
	}
	edit("success 9984 30\n", "success 9984 20\n")
	waitForLog(t, p, "Reloading complete", 1, 10*time.Second)
	waitForLog(t, p, "open TCP connections carried over", 1, 5*time.Second)
	for _, c := range clients {
		if err := ask(c.conn); err != nil {
			t.Errorf("client %s: %v", c.name, err)
		}
	}
}
