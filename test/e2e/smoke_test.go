package e2e

import (
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/nodelocal/nodelocal/test/harness"
)

// TestKubeProxyEmulation: without a node cache, a pod's query to the kube-dns
// ClusterIP reaches kube-dns through the emulated kube-proxy, in every mode
// and with either iptables backend.
func TestKubeProxyEmulation(t *testing.T) {
	for _, mode := range harness.Modes {
		for _, backend := range harness.Backends {
			t.Run(string(mode)+"/"+string(backend), func(t *testing.T) {
				node := harness.NewNode(t, harness.Options{Mode: mode, Backend: backend})
				before, err := node.KubeDNSQueries()
				if err != nil {
					t.Fatal(err)
				}
				for _, network := range []string{"udp", "tcp"} {
					for _, svc := range []string{harness.ClusterIP, harness.UpstreamIP} {
						r, err := harness.Query(node.Pods[0], network, svc, harness.WebSvc, dns.TypeA)
						if err != nil {
							t.Fatalf("%s query to %s: %v", network, svc, err)
						}
						if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != harness.WebIP {
							t.Fatalf("%s query to %s: answer %v, want %s", network, svc, r.Answer, harness.WebIP)
						}
					}
				}
				// CoreDNS counts a query after it has written the answer: the
				// count may trail the client by a moment.
				var after int
				for deadline := time.Now().Add(2 * time.Second); ; {
					if after, err = node.KubeDNSQueries(); err != nil {
						t.Fatal(err)
					}
					if after-before >= 4 || time.Now().After(deadline) {
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
				// At least: a UDP query the client resent after a slow answer counts twice.
				if after-before < 4 {
					t.Fatalf("kube-dns counted %d queries, want the 4 sent through the ClusterIPs", after-before)
				}
				// Without a node cache these flows are tracked: the check that
				// interception leaves none can see them.
				if n, err := node.ConntrackEntries(harness.PodIP(0), harness.ClusterIP, 53); err != nil || n == 0 {
					t.Fatalf("conntrack entries for the pod's ClusterIP queries: %d (%v), want some", n, err)
				}
				// Forwarded names resolve too (the fake internet).
				r, err := harness.Query(node.Pods[0], "udp", harness.ClusterIP, "anything.example.org", dns.TypeA)
				if err != nil || len(r.Answer) != 1 {
					t.Fatalf("example.org via ClusterIP: %v %v", r, err)
				}
			})
		}
	}
}
