package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/nodelocal/nodelocal/test/dnsload"
	"github.com/nodelocal/nodelocal/test/harness"
)

// TestSilentUpstreamBoundsMemory: with kube-dns silent and clients asking
// for new names as fast as they get answers, each forward keeps at most
// max_concurrent queries waiting (sized from GOMEMLIMIT), the others get a
// fast REFUSED instead of piling up, memory stays under the limit, and new
// names resolve again within seconds of kube-dns's return.
func TestSilentUpstreamBoundsMemory(t *testing.T) {
	const limitMiB = 64 // max_concurrent 256 per forward
	node := harness.NewNode(t, harness.Options{})
	p, err := node.StartNodeCacheProcess("node-cache", mustTemplate(t, node, ""), []string{"env", fmt.Sprintf("GOMEMLIMIT=%dMiB", limitMiB)})
	if err != nil {
		t.Fatal(err)
	}
	if err := node.WaitReady(p, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := node.SilenceKubeDNS(true); err != nil {
		t.Fatal(err)
	}
	logBefore := errorLines(p.Log())
	res, err := dnsload.Run(context.Background(), dnsload.Config{Target: harness.LocalIP + ":53",
		Queries:  []dnsload.Query{{Name: dnsload.UniqueToken + ".example.org.", Type: dns.TypeA}},
		Duration: 10 * time.Second, Workers: 1000, Timeout: 2 * time.Second, Dial: node.Pods[0].DialContext})
	if err != nil {
		t.Fatal(err)
	}
	peak, err := harness.MemoryKiB(p.Pid(), "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	rejects, _ := node.NodeCacheMetric("coredns_forward_max_concurrent_rejects_total")
	fast := res.Outcomes[dnsload.Refused] + res.Outcomes[dnsload.ServFail]
	t.Logf("silent upstream, 10 s: %d lookups, %d REFUSED or SERVFAIL, %d timeouts; %.0f rejects; peak RSS %.1f MiB (limit %d MiB)",
		res.Sent, fast, res.Outcomes[dnsload.Timeout], rejects, float64(peak)/1024, limitMiB)
	if float64(fast) < 0.9*float64(res.Sent) {
		t.Errorf("only %d of %d lookups got a fast REFUSED or SERVFAIL: queries pile up", fast, res.Sent)
	}
	if peak >= limitMiB<<10 {
		t.Errorf("peak RSS %.1f MiB, over the %d MiB limit", float64(peak)/1024, limitMiB)
	}
	// Each kind of error is logged once per 30 s and block, then counted:
	// 4 blocks, 3 kinds, a first line and a count each.
	if lines := errorLines(p.Log()) - logBefore; lines > 4*3*2 {
		t.Errorf("%d error lines for %d failed lookups in 10 s: the log floods exactly when the node is in trouble", lines, fast+res.Outcomes[dnsload.Timeout])
	} else {
		t.Logf("%d error lines logged for them", lines)
	}
	if err := node.SilenceKubeDNS(false); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	for i := 0; ; i++ {
		m, err := harness.Query(node.Pods[0], "udp", harness.LocalIP, fmt.Sprintf("back-%d.example.org.", i), dns.TypeA)
		if err == nil && m.Rcode == dns.RcodeSuccess {
			break
		}
		if time.Since(back) > 5*time.Second {
			t.Fatalf("new names do not resolve 5 s after kube-dns returned: %v %v", m, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("new names resolve %v after kube-dns returned", time.Since(back).Round(time.Millisecond))
}

// errorLines counts the errors plugin's lines in a node-cache log.
func errorLines(log string) int { return strings.Count(log, "plugin/errors: ") }
