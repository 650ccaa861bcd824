package e2e

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/nodelocal/nodelocal/test/harness"
)

// The hostile neighbours of TestHostileNeighbours, each a process in the
// node's network namespace, as any hostNetwork pod is.
const (
	// squatter holds the abstract unix socket that served as the instance
	// lock before the instance directory: any process could bind it first.
	squatter = "squatter"
	// foreignListener joins the SO_REUSEPORT groups on 169.254.20.10:53
	// (UDP and TCP), as a root hostNetwork pod can, and answers REFUSED.
	foreignListener = "foreign listener"
)

// startNeighbour runs TestHelperNeighbour in the node's network namespace
// and waits until it holds what kind names.
func startNeighbour(t *testing.T, node *harness.Node, kind string) {
	t.Helper()
	p, err := node.Start(node.Host, "neighbour", []string{os.Args[0], "-test.run=^TestHelperNeighbour$", "-test.v"}, "NODELOCAL_NEIGHBOUR="+kind)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.Log(), "neighbour in place") {
		if p.Exited() || time.Now().After(deadline) {
			t.Fatalf("the %s did not start:\n%s", kind, p.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHelperNeighbour is the neighbour process of TestHostileNeighbours.
func TestHelperNeighbour(t *testing.T) {
	kind := os.Getenv("NODELOCAL_NEIGHBOUR")
	if kind == "" {
		t.Skip("helper process only")
	}
	switch kind {
	case squatter:
		l, err := net.Listen("unix", "@nodelocal/instance")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
	case foreignListener:
		// Bound before the cache puts the address on its interface.
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			c.Control(func(fd uintptr) {
				serr = errors.Join(syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 0xf /* SO_REUSEPORT */, 1),
					syscall.SetsockoptInt(int(fd), syscall.SOL_IP, syscall.IP_FREEBIND, 1))
			})
			return serr
		}}
		addr := harness.LocalIP + ":53"
		pc, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		l, err := lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		go func() {
			buf := make([]byte, 1500)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				q := new(dns.Msg)
				if q.Unpack(buf[:n]) == nil {
					if out, err := new(dns.Msg).SetRcode(q, dns.RcodeRefused).Pack(); err == nil {
						pc.WriteTo(out, from)
					}
				}
			}
		}()
	}
	t.Log("neighbour in place")
	time.Sleep(2 * time.Minute)
}

// TestHostileNeighbours: node-cache instances recognise each other through
// the instance directory only the DaemonSet mounts, so a process that takes
// the old abstract lock, or joins the cache's SO_REUSEPORT group, neither
// delays a start or a stop nor counts as a peer: a start is ready in the usual
// time, a surge still leaves the node to the new instance, and a stop with
// no successor tears down within the grace period. A foreign listener is
// logged and exported.
func TestHostileNeighbours(t *testing.T) {
	waitsMostly(t)
	for _, kind := range []string{squatter, foreignListener} {
		t.Run(kind+", start and stop", func(t *testing.T) {
			node := harness.NewNode(t, harness.Options{})
			startNeighbour(t, node, kind)
			start := time.Now()
			p, err := node.StartNodeCache("node-cache", mustTemplate(t, node, ""))
			if err != nil {
				t.Fatalf("with a %s on the node: %v", kind, err)
			}
			t.Logf("ready %v after the start", time.Since(start).Round(time.Millisecond))
			mustQuery(t, node, "udp", harness.ClusterIP, harness.WebSvc)
			if kind == foreignListener {
				waitForLog(t, p, "2 sockets on", 1, 15*time.Second)
				if n, err := node.NodeCacheMetric("coredns_nodelocal_foreign_sockets"); err != nil || n != 2 {
					t.Fatalf("foreign_sockets %v (%v), want 2: the foreign UDP and TCP sockets", n, err)
				}
			}
			stop := time.Now()
			p.Signal(syscall.SIGTERM)
			if err := p.Wait(25 * time.Second); err != nil {
				t.Fatalf("stop: %v\n%s", err, p.Log())
			}
			t.Logf("stopped %v after SIGTERM", time.Since(stop).Round(time.Millisecond))
			if strings.Contains(p.Log(), "another instance serves") {
				t.Fatalf("the %s was taken for another instance:\n%s", kind, p.Log())
			}
			assertClean(t, node)
		})
		t.Run(kind+", surge", func(t *testing.T) {
			node := harness.NewNode(t, harness.Options{})
			startNeighbour(t, node, kind)
			tmpl := mustTemplate(t, node, "")
			old, err := node.StartNodeCache("node-cache-old", tmpl)
			if err != nil {
				t.Fatal(err)
			}
			next := startPeer(t, node, "node-cache-new", tmpl)
			old.Signal(syscall.SIGTERM)
			if err := old.Wait(25 * time.Second); err != nil {
				t.Fatalf("old instance: %v\n%s", err, old.Log())
			}
			if !strings.Contains(old.Log(), "new queries go to it") || !strings.Contains(old.Log(), "Teardown skipped: another instance serves here") {
				t.Fatalf("the old instance did not leave the node to the new one:\n%s", old.Log())
			}
			assertRules(t, node, rulesBoth)
			mustQuery(t, node, "udp", harness.ClusterIP, harness.WebSvc)
			next.Signal(syscall.SIGTERM)
			if err := next.Wait(25 * time.Second); err != nil {
				t.Fatalf("new instance: %v\n%s", err, next.Log())
			}
			assertClean(t, node)
		})
	}
}
