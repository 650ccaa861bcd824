package e2e

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/nodelocal/nodelocal/test/dnsload"
	"github.com/nodelocal/nodelocal/test/harness"
)

// loadRun is one stream of the mixed load.
type loadRun struct {
	target    string
	transport dnsload.Transport
	result    *dnsload.Result
}

type loadResults []loadRun

const anyTarget = ""

// failed adds up the runs to target (anyTarget: both) over the given transports.
func (rs loadResults) failed(target string, transports ...dnsload.Transport) (failed, sent int) {
	for _, r := range rs {
		if (target == anyTarget || r.target == target) && slices.Contains(transports, r.transport) {
			failed += r.result.Failed()
			sent += r.result.Sent
		}
	}
	return failed, sent
}

var allTransports = []dnsload.Transport{dnsload.UDP, dnsload.TCPPersistent, dnsload.TCPPerQuery}

// startLoad sends, from the pod, UDP, persistent-TCP and per-query-TCP load
// to both the link-local IP and the ClusterIP, each stream at rate, with cache
// hits and misses. The results arrive on the channel when the run ends.
func startLoad(ctx context.Context, t *testing.T, node *harness.Node, rate int, d time.Duration) <-chan loadResults {
	t.Helper()
	queries := []dnsload.Query{
		{Name: harness.WebSvc, Type: dns.TypeA},
		{Name: "www.example.org.", Type: dns.TypeA},
		{Name: dnsload.UniqueToken + ".example.org.", Type: dns.TypeA}, // misses
	}
	done := make(chan loadResults, 1)
	go func() {
		var mu sync.Mutex
		var results loadResults
		var wg sync.WaitGroup
		for _, target := range []string{harness.LocalIP, harness.ClusterIP} {
			for _, tr := range allTransports {
				wg.Add(1)
				go func() {
					defer wg.Done()
					res, err := dnsload.Run(ctx, dnsload.Config{Target: target + ":53", Transport: tr, Queries: queries,
						Rate: rate, Duration: d, Workers: 8, Timeout: 2 * time.Second, Dial: node.Pods[0].DialContext})
					if err != nil {
						t.Error(err)
						return
					}
					t.Logf("%-13s %-14s %v", target, tr, res)
					mu.Lock()
					results = append(results, loadRun{target, tr, res})
					mu.Unlock()
				}()
			}
		}
		wg.Wait()
		done <- results
	}()
	return done
}
