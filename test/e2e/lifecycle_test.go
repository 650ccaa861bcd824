package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/nodelocal/nodelocal/test/harness"
)

// startPeer starts a second node-cache next to a running one and waits until
// it serves: /ready is shared through SO_REUSEPORT, so its log tells.
func startPeer(t *testing.T, node *harness.Node, name, tmpl string) *harness.Process {
	t.Helper()
	p, err := node.StartNodeCacheProcess(name, tmpl, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitForLog(t, p, "IPv4 iptables rules", 1, 15*time.Second)
	return p
}

func assertClean(t *testing.T, node *harness.Node) {
	t.Helper()
	if rules, err := node.NodeLocalRules(); err != nil || len(rules) != 0 {
		t.Fatalf("rules left: %v %v", rules, err)
	}
	if out, err := node.Host.Output("ip", "link", "show", "nodelocaldns"); err == nil {
		t.Fatalf("interface left: %s", out)
	}
	if out, err := node.Host.Output(node.Opts.Backend.IPTables(), "-w", "5", "-t", "nat", "-S", "OUTPUT"); err != nil || strings.Contains(out, "NodeLocal") {
		t.Fatalf("upstream pins left (%v):\n%s", err, out)
	}
}

func assertRules(t *testing.T, node *harness.Node, want int) {
	t.Helper()
	rules, err := node.NodeLocalRules()
	if err != nil || len(rules) != want {
		t.Fatalf("%d rules (%v), want %d:\n%s", len(rules), err, want, strings.Join(rules, "\n"))
	}
}

// waitForRules polls until node-cache's rules number want, and fails the
// test, saying what was awaited, if they do not within timeout.
func waitForRules(t *testing.T, node *harness.Node, want int, timeout time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		rules, err := node.NodeLocalRules()
		if err == nil && len(rules) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d rules (%v) after %v, want %d:\n%s", what, len(rules), err, timeout, want, strings.Join(rules, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCrashFailsOpen: after SIGKILL nothing tears down, yet both addresses
// fall back to kube-dns by themselves, for pods and for clients on the node
// itself, in every kube-proxy mode and iptables backend: the pods'
// interception needs a live socket, the node's own clients' lives in a table
// the kernel deletes with the process, and the link-local IP's queries that
// nothing intercepted go to the kube-dns Service. The next instance takes
// over from kube-dns and adopts what the dead one left.
func TestCrashFailsOpen(t *testing.T) {
	waitsMostly(t)
	for _, mode := range harness.Modes {
		for _, backend := range harness.Backends {
			for _, ipv6 := range []bool{false, true} {
				name := string(mode) + "/" + string(backend) + "/ipv4"
				if ipv6 {
					name = string(mode) + "/" + string(backend) + "/ipv6"
				}
				t.Run(name, func(t *testing.T) {
					waitsMostly(t)
					crashFailsOpen(t, harness.Options{Mode: mode, Backend: backend, IPv6: ipv6})
				})
			}
		}
	}
}

func crashFailsOpen(t *testing.T, opts harness.Options) {
	node := harness.NewNode(t, opts)
	tmpl := mustTemplate(t, node, "")
	p, err := node.StartNodeCache("node-cache", tmpl)
	if err != nil {
		t.Fatal(err)
	}
	rules, err := node.NodeLocalRules()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pods, hosts := startLoad(ctx, t, node, 100, 6*time.Second), startHostLoad(ctx, t, node, 100, 6*time.Second)
	time.Sleep(2 * time.Second)
	p.Kill()
	killed := time.Now()
	before := kubeDNSCount(t, node)
	for _, client := range []*harness.Netns{node.Pods[0], node.Host} {
		for _, target := range []string{node.Family().Local, node.Family().Cluster} {
			for _, network := range []string{"udp", "tcp"} {
				if _, err := harness.QueryTimeout(client, network, target, harness.WebSvc, dns.TypeA, time.Second); err != nil {
					t.Errorf("after SIGKILL, %s query from %s to %s: %v", network, client.Name, target, err)
				}
			}
		}
	}
	if got := kubeDNSCount(t, node) - before; got < 8 {
		t.Errorf("after SIGKILL, kube-dns answered %d of the 8 queries", got)
	}
	time.Sleep(2*time.Second - time.Since(killed))
	if _, err := node.StartNodeCache("node-cache-2", tmpl); err != nil {
		t.Fatal(err)
	}
	// Only queries under way at the kill may fail: none sent after it, on
	// either address, from either kind of client, also on the connections
	// kube-dns serves when the new instance takes over.
	for _, results := range []harness.LoadResults{<-pods, <-hosts} {
		for _, r := range results {
			if r.Result == nil {
				continue
			}
			t.Logf("%s to %s over %s: %d of %d failed", r.Client, r.Target, r.Transport, r.Result.Failed(), r.Result.Sent)
			for _, at := range r.Result.FailedAt() {
				if at.After(killed) {
					t.Errorf("%s to %s over %s: a query sent %v after the kill failed", r.Client, r.Target, r.Transport, at.Sub(killed).Round(time.Millisecond))
				}
			}
		}
	}
	waitForRules(t, node, len(rules), 10*time.Second, "the rules of the connections left to kube-dns removed once the load closed them")
}

// assertNoClusterIPLoss: across a stop, no ClusterIP query fails, whatever
// the kind of client.
func assertNoClusterIPLoss(t *testing.T, results harness.LoadResults) {
	t.Helper()
	if f, sent := results.Failed(harness.ClusterIP, allTransports...); f != 0 {
		t.Fatalf("ClusterIP: %d of %d queries failed across the stop, want 0", f, sent)
	}
}

// TestStopWithoutSuccessor is an uninstall: the kube-dns-upstream Service's
// rules go (kubectl deletes the Service with the DaemonSet), then SIGTERM,
// and no replacement within 3 s. The instance pins the upstream to the
// endpoints its flows reach, hands the ClusterIP back to kube-dns before its
// sockets close, serves the link-local IP through lameduck, then leaves the
// node as it was. Zero ClusterIP queries fail, cache misses included, and
// none to the link-local IP before lameduck ends. Here the root zone's misses
// go to the upstream Service too (never to the machine's resolver), so they
// get force_tcp, as the cluster domain's have: in a cluster those are the
// misses that take this path, over TCP (kube-proxy's flush of a deleted
// Service's UDP conntrack entries would lose a UDP query in flight, whoever
// sent it).
func TestStopWithoutSuccessor(t *testing.T) {
	waitsMostly(t)
	for _, mode := range []harness.ProxyMode{harness.ModeIPTables, harness.ModeNFTables} {
		t.Run(string(mode), func(t *testing.T) {
			node := harness.NewNode(t, harness.Options{Mode: mode})
			tmpl := strings.Replace(mustTemplate(t, node, ""), "forward . __PILLAR__UPSTREAM__SERVERS__ {\n",
				"forward . __PILLAR__UPSTREAM__SERVERS__ {\n        force_tcp\n", 1)
			p, err := node.StartNodeCache("node-cache", tmpl)
			if err != nil {
				t.Fatal(err)
			}
			load := startLoad(context.Background(), t, node, 150, 12*time.Second)
			time.Sleep(2 * time.Second)
			if err := node.DeleteUpstreamService(); err != nil {
				t.Fatal(err)
			}
			stopped := time.Now()
			p.Signal(syscall.SIGTERM)
			// Misses that need new upstream connections, during the
			// replacement wait: a steady load reuses the pooled ones, whose
			// conntrack entries keep their translation.
			time.Sleep(time.Second)
			if failed := missBurst(node, mode, 40); failed > 0 {
				t.Errorf("%d of 40 simultaneous misses to the ClusterIP failed after the upstream Service went", failed)
			}
			if err := p.Wait(15 * time.Second); err != nil {
				t.Fatalf("exit: %v\n%s", err, p.Log())
			}
			t.Logf("exited %v after SIGTERM (replacement wait 3s, lameduck 5s)", time.Since(stopped).Round(time.Millisecond))
			results := <-load
			assertNoClusterIPLoss(t, results)
			if !strings.Contains(p.Log(), "new flows to "+harness.UpstreamIP+":53 go to ["+harness.KubeDNSPodIP+":53]") {
				t.Fatalf("the upstream was not pinned to kube-dns's pod:\n%s", p.Log())
			}
			for _, r := range results {
				if r.Target == harness.LocalIP {
					// SIGTERM at second 2, the replacement wait 3s and lameduck
					// 5s: the link-local IP serves until second 10; a query sent
					// in second 9 may still be in flight then.
					if fs := r.Result.FailedSeconds(); len(fs) > 0 && fs[0] < 9 {
						t.Fatalf("link-local %s failed in second %d, before lameduck ended (about second 10)", r.Transport, fs[0])
					}
				}
			}
			assertClean(t, node)
		})
	}
}

// missBurst asks the ClusterIP n names the cache has never seen, all at once
// over UDP, and returns how many failed.
func missBurst(node *harness.Node, tag harness.ProxyMode, n int) int {
	var failed atomic.Int32
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("burst-%s-%d.example.org.", tag, i)
			if m, err := harness.Query(node.Pods[0], "udp", harness.ClusterIP, name, dns.TypeA); err != nil || m.Rcode != dns.RcodeSuccess {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	return int(failed.Load())
}

// TestHandOffToAnotherInstance: the old instance leaves everything to a new
// one on the same IPs (SO_REUSEPORT), which gets every flow; no query fails
// on either IP. In the DaemonSet's maxSurge rollout the new one starts
// before the old one's SIGTERM; a deleted pod's replacement starts a second
// after it, and the old instance waits for it instead of handing the
// ClusterIP back to kube-proxy, so the replacement too starts as in a surge,
// with no takeover from kube-dns.
func TestHandOffToAnotherInstance(t *testing.T) {
	waitsMostly(t)
	for _, tc := range []struct {
		name        string
		beforeStop  bool // the new instance starts before the old one's SIGTERM
		wantOldLogs []string
	}{
		{"surge", true, []string{"new queries go to it", "Teardown skipped: another instance serves here"}},
		{"replacement during the stop", false, []string{"a replacement opened its sockets", "new queries go to it", "Teardown skipped: another instance serves here"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := harness.NewNode(t, harness.Options{})
			tmpl := mustTemplate(t, node, "")
			old, err := node.StartNodeCache("node-cache-old", tmpl)
			if err != nil {
				t.Fatal(err)
			}
			load := startLoad(context.Background(), t, node, 150, 12*time.Second)
			var next *harness.Process
			if tc.beforeStop {
				time.Sleep(time.Second)
				next = startPeer(t, node, "node-cache-new", tmpl)
				time.Sleep(time.Second)
				old.Signal(syscall.SIGTERM)
			} else {
				time.Sleep(2 * time.Second)
				old.Signal(syscall.SIGTERM)
				time.Sleep(time.Second)
				next = startPeer(t, node, "node-cache-new", tmpl)
			}
			if err := old.Wait(20 * time.Second); err != nil {
				t.Fatalf("old instance: %v\n%s", err, old.Log())
			}
			for _, want := range tc.wantOldLogs {
				if !strings.Contains(old.Log(), want) {
					t.Fatalf("the old instance did not leave the node to the new one (no %q):\n%s", want, old.Log())
				}
			}
			if strings.Contains(next.Log(), "over from kube-dns") {
				t.Fatalf("the new instance took TCP over from kube-dns, want a surge start:\n%s", next.Log())
			}
			assertRules(t, node, rulesBoth)
			results := <-load
			if f, sent := results.Failed(anyTarget, allTransports...); f != 0 {
				t.Errorf("%d of %d queries failed across the handoff, want 0", f, sent)
			}
			mustQuery(t, node, "udp", harness.ClusterIP, harness.WebSvc)
			next.Signal(syscall.SIGTERM)
			if err := next.Wait(20 * time.Second); err != nil {
				t.Fatal(err)
			}
			assertClean(t, node)
		})
	}
}

// TestTwoStopAtOnce: two instances stopping together clean up exactly once.
func TestTwoStopAtOnce(t *testing.T) {
	node := harness.NewNode(t, harness.Options{})
	tmpl := mustTemplate(t, node, "")
	a, err := node.StartNodeCache("node-cache-a", tmpl)
	if err != nil {
		t.Fatal(err)
	}
	b := startPeer(t, node, "node-cache-b", tmpl)
	a.Signal(syscall.SIGTERM)
	b.Signal(syscall.SIGTERM)
	for _, p := range []*harness.Process{a, b} {
		if err := p.Wait(20 * time.Second); err != nil {
			t.Fatalf("%s: %v\n%s", p.Name, err, p.Log())
		}
	}
	torn := strings.Count(a.Log()+b.Log(), "Torn down")
	if torn != 1 {
		t.Fatalf("torn down %d times, want exactly once", torn)
	}
	assertClean(t, node)
	r, err := harness.Query(node.Pods[0], "udp", harness.ClusterIP, harness.WebSvc, dns.TypeA)
	if err != nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("ClusterIP after both stopped: %v %v", r, err)
	}
}

// TestRestartWithoutSurge: SIGTERM, then a new instance 2s after the old one
// exits. No ClusterIP query fails: not at the handoff, and not when the new
// instance intercepts again flows that kube-dns served in between (their
// replies would clash with those flows' conntrack entries if the interception
// went in before the rules that keep replies out of conntrack).
func TestRestartWithoutSurge(t *testing.T) {
	waitsMostly(t)
	node := harness.NewNode(t, harness.Options{})
	tmpl := mustTemplate(t, node, "")
	p, err := node.StartNodeCache("node-cache", tmpl)
	if err != nil {
		t.Fatal(err)
	}
	load := startLoad(context.Background(), t, node, 150, 12*time.Second)
	time.Sleep(2 * time.Second)
	if err := p.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if _, err := node.StartNodeCache("node-cache-next", tmpl); err != nil {
		t.Fatal(err)
	}
	results := <-load
	assertNoClusterIPLoss(t, results)
	f, sent := results.Failed(harness.LocalIP, allTransports...)
	t.Logf("link-local: %d of %d failed (the 2s gap)", f, sent)
	assertRules(t, node, rulesBoth)
}

// TestStartLetsKubeDNSConnectionsFinish: a TCP connection that kube-dns
// serves (through kube-proxy's DNAT) when node-cache starts is not reset by
// the new interception while the takeover lets it finish: a query sent on it
// once node-cache's rules are in is still answered by kube-dns. A connection
// opened meanwhile waits for its SYN's retransmission and reaches the cache.
func TestStartLetsKubeDNSConnectionsFinish(t *testing.T) {
	node := harness.NewNode(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func() *dns.Conn {
		c, err := node.Pods[0].DialContext(ctx, "tcp", harness.ClusterIP+":53")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return &dns.Conn{Conn: c}
	}
	exchange := func(c *dns.Conn) error {
		r, err := harness.Exchange(c, harness.WebSvc, dns.TypeA, 3*time.Second)
		if err == nil && r.Rcode != dns.RcodeSuccess {
			err = errors.New(dns.RcodeToString[r.Rcode])
		}
		return err
	}
	open := dial()
	if err := exchange(open); err != nil {
		t.Fatalf("kube-dns over TCP before the start: %v", err)
	}
	p, err := node.StartNodeCacheProcess("node-cache", mustTemplate(t, node, ""), nil)
	if err != nil {
		t.Fatal(err)
	}
	waitForLog(t, p, "IPv4 iptables rules", 1, 10*time.Second)
	// The cache forwards its misses to kube-dns, so its own request count tells who served.
	served := func() float64 {
		n, err := node.NodeCacheMetric("coredns_dns_requests_total")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := served()
	if err := exchange(open); err != nil {
		t.Fatalf("a connection kube-dns served was cut by the start: %v\n%s", err, p.Log())
	}
	if served() != before {
		t.Fatal("the query on the connection opened before the start reached the cache, not kube-dns")
	}
	start := time.Now()
	if err := exchange(dial()); err != nil {
		t.Fatalf("a connection opened during the takeover: %v", err)
	}
	t.Logf("a connection opened during the takeover was answered after %v", time.Since(start).Round(time.Millisecond))
	if served() == before {
		t.Fatal("a connection opened during the takeover was served by kube-dns, not the cache")
	}
	if err := node.WaitReady(p, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitForLog(t, p, "Took TCP on", 1, time.Second)
	// A connection kube-dns still serves once the takeover is done (a client
	// keeping it, a slow answer) stays with kube-dns until it closes.
	before = served()
	if err := exchange(open); err != nil {
		t.Fatalf("a connection kube-dns served past the takeover was cut: %v\n%s", err, p.Log())
	}
	if served() != before {
		t.Fatal("the query on the connection kube-dns serves reached the cache")
	}
	open.Close()
	waitForRules(t, node, rulesBoth, 10*time.Second, "the exception for kube-dns's connection removed once it closed")
}
