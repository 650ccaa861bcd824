package harness

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// OutageResult is what clients of one server saw while kube-dns was silent.
type OutageResult struct {
	Server           string
	Asked, Answered  int           // lookups during the outage, and those answered with records
	FreshAfterReturn time.Duration // from kube-dns's return until every cluster name had its new address; -1 if not within the wait
}

// Share is the answered fraction of the lookups during the outage.
func (r OutageResult) Share() float64 {
	if r.Asked == 0 {
		return 0
	}
	return float64(r.Answered) / float64(r.Asked)
}

// OutageNames are the names clients keep asking: cluster names (whose
// address SetFillAddress changes) and external names.
var OutageNames = func() []string {
	var names []string
	for i := range 10 {
		names = append(names, fmt.Sprintf("n%d.fill.svc.cluster.local.", i), fmt.Sprintf("n%d.example.org.", i))
	}
	return names
}()

// MeasureOutage has a pod ask every server for each of OutageNames twice a
// second (UDP, 2 s timeout, no retry): for warm, then with kube-dns silent for
// outage, then after kube-dns returns, with the cluster names' address
// changed meanwhile, until every server answers the new address for each of
// them (at most wait). Servers are measured side by side, in one outage.
func (n *Node) MeasureOutage(ctx context.Context, servers []string, warm, outage, wait time.Duration) ([]OutageResult, error) {
	const interval = 500 * time.Millisecond
	newFill := "198.18.4.98"
	results := make([]OutageResult, len(servers))
	var phase atomic.Int32 // 0 warm, 1 outage, 2 after
	var returned time.Time
	var mu sync.Mutex
	fresh := make([]map[string]bool, len(servers))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for si, server := range servers {
		results[si].Server = server
		fresh[si] = map[string]bool{}
		for _, name := range OutageNames {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tick := time.NewTicker(interval)
				defer tick.Stop()
				for {
					p := phase.Load()
					m, err := QueryTimeout(n.Pods[0], "udp", server, name, dns.TypeA, 2*time.Second)
					answered := err == nil && m.Rcode == dns.RcodeSuccess && len(m.Answer) > 0
					mu.Lock()
					switch p {
					case 1:
						results[si].Asked++
						if answered {
							results[si].Answered++
						}
					case 2:
						if answered && !fresh[si][name] {
							if a, ok := m.Answer[0].(*dns.A); ok && (a.A.String() == newFill || !isFillName(name)) {
								fresh[si][name] = true
							}
						}
					}
					mu.Unlock()
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
					}
				}
			}()
		}
	}
	step := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	}
	err := func() error {
		if err := step(warm); err != nil {
			return err
		}
		if err := n.SilenceKubeDNS(true); err != nil {
			return err
		}
		silent := true
		defer func() {
			if silent {
				n.SilenceKubeDNS(false)
			}
		}()
		phase.Store(1)
		if err := n.SetFillAddress(newFill); err != nil {
			return err
		}
		if err := step(outage); err != nil {
			return err
		}
		phase.Store(2)
		mu.Lock()
		returned = time.Now()
		mu.Unlock()
		if err := n.SilenceKubeDNS(false); err != nil {
			return err
		}
		silent = false
		for deadline := time.Now().Add(wait); time.Now().Before(deadline); {
			if err := step(100 * time.Millisecond); err != nil {
				return err
			}
			mu.Lock()
			done := true
			for si := range servers {
				if results[si].FreshAfterReturn == 0 && len(fresh[si]) == len(OutageNames) {
					results[si].FreshAfterReturn = time.Since(returned)
				}
				done = done && results[si].FreshAfterReturn != 0
			}
			mu.Unlock()
			if done {
				return nil
			}
		}
		return nil
	}()
	cancel()
	wg.Wait()
	for si := range results {
		if results[si].FreshAfterReturn == 0 {
			results[si].FreshAfterReturn = -1
		}
	}
	return results, err
}

func isFillName(name string) bool { return strings.HasSuffix(name, ".fill.svc.cluster.local.") }
