package harness

import (
	"fmt"
	"sync"

	"github.com/miekg/dns"
)

// IdenticalMisses has clients pod clients ask server at once for the same
// name the server has never seen, for each of names names (under
// example.org, tagged with tag so that each run is new), and returns how
// many queries per name reached kube-dns.
func (n *Node) IdenticalMisses(server string, names, clients int, tag string) (float64, error) {
	before, err := n.KubeDNSQueries()
	if err != nil {
		return 0, err
	}
	var failed int
	var mu sync.Mutex
	for i := range names {
		name := fmt.Sprintf("%s-%d.example.org.", tag, i)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if m, err := Query(n.Pods[0], "udp", server, name, dns.TypeA); err != nil || m.Rcode != dns.RcodeSuccess {
					mu.Lock()
					failed++
					mu.Unlock()
				}
			}()
		}
		close(start)
		wg.Wait()
	}
	after, err := n.KubeDNSQueries()
	if err != nil {
		return 0, err
	}
	if failed > 0 {
		return 0, fmt.Errorf("%d of %d lookups failed", failed, names*clients)
	}
	return float64(after-before) / float64(names), nil
}
