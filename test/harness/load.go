package harness

import (
	"context"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/nodelocal/nodelocal/test/dnsload"
)

// LoadRun is one stream of a mixed load.
type LoadRun struct {
	Target    string
	Transport dnsload.Transport
	Client    string // ClientPod or ClientHost
	Result    *dnsload.Result
	Err       error
}

// LoadResults are the streams of a mixed load.
type LoadResults []LoadRun

// AnyTarget selects both targets in LoadResults.Failed.
const AnyTarget = ""

// AllTransports are the kinds of client of a mixed load.
var AllTransports = []dnsload.Transport{dnsload.UDP, dnsload.TCPPersistent, dnsload.TCPPerQuery}

// Failed adds up the runs to target (AnyTarget: both) over the given transports.
func (rs LoadResults) Failed(target string, transports ...dnsload.Transport) (failed, sent int) {
	for _, r := range rs {
		if r.Result != nil && (target == AnyTarget || r.Target == target) && slices.Contains(transports, r.Transport) {
			failed += r.Result.Failed()
			sent += r.Result.Sent
		}
	}
	return failed, sent
}

// StartMixedLoad sends, from pod 0, UDP, persistent-TCP and per-query-TCP
// load to both the cache's own IP and the ClusterIP (of the node's family), each stream at rate, with
// cache hits and misses. The results arrive on the channel when the run ends.
func (n *Node) StartMixedLoad(ctx context.Context, rate int, d time.Duration) <-chan LoadResults {
	return n.startLoad(ctx, n.Pods[0], ClientPod, rate, d)
}

// StartHostLoad is StartMixedLoad from the node's own network namespace:
// hostNetwork pods and the node's processes.
func (n *Node) StartHostLoad(ctx context.Context, rate int, d time.Duration) <-chan LoadResults {
	return n.startLoad(ctx, n.Host, ClientHost, rate, d)
}

// The kinds of client a load run comes from.
const (
	ClientPod  = "pod"
	ClientHost = "host"
)

func (n *Node) startLoad(ctx context.Context, from *Netns, client string, rate int, d time.Duration) <-chan LoadResults {
	queries := []dnsload.Query{
		{Name: WebSvc, Type: dns.TypeA},
		{Name: "www.example.org.", Type: dns.TypeA},
		{Name: dnsload.UniqueToken + ".example.org.", Type: dns.TypeA}, // misses
	}
	done := make(chan LoadResults, 1)
	go func() {
		var mu sync.Mutex
		var results LoadResults
		var wg sync.WaitGroup
		for _, target := range []string{n.Family().Local, n.Family().Cluster} {
			for _, tr := range AllTransports {
				// Connection-per-query clients are many, as a node's pods are:
				// those whose SYN an instance holds for 1 s leave others free to
				// open connections through every step of a start or a stop.
				workers := 8
				if tr == dnsload.TCPPerQuery {
					workers = 200
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					res, err := dnsload.Run(ctx, dnsload.Config{Target: net.JoinHostPort(target, "53"), Transport: tr, Queries: queries,
						Rate: rate, Duration: d, Workers: workers, Timeout: 2 * time.Second, Dial: from.DialContext})
					mu.Lock()
					results = append(results, LoadRun{target, tr, client, res, err})
					mu.Unlock()
				}()
			}
		}
		wg.Wait()
		done <- results
	}()
	return done
}
