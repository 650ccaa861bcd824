package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nodelocal/nodelocal/test/dnsload"
)

// LoadTargets are the addresses pods reach node-cache on.
var LoadTargets = []string{KubeDNSIP, "169.254.20.10"}

// loadTransports are the kinds of client of a pod load.
var loadTransports = []dnsload.Transport{dnsload.UDP, dnsload.TCPPersistent, dnsload.TCPPerQuery}

// podLoadMix: cache hits and misses, cluster and external names.
const podLoadMix = "A:kubernetes.default.svc.cluster.local,A:web.default.svc.cluster.local,A:www.example.org," +
	"A:" + dnsload.UniqueToken + ".example.org,A:" + dnsload.UniqueToken + ".miss.default.svc.cluster.local"

// LoadRun is what one client of a pod load saw.
type LoadRun struct {
	Client    string // the pod it ran in
	Target    string
	Transport dnsload.Transport
	Result    *dnsload.Result
	Err       error
}

// PodLoad is a pod load's result: its dnsload runs, and the nslookup client
// (one lookup every 100 ms through the pod's resolver, 1 s timeout: busybox's
// nslookup has no timeout option, so timeout(1) ends it), as operators
// measured this problem.
type PodLoad struct {
	Runs                       []LoadRun
	NslookupSent, NslookupFail int
	NslookupFailures           []string // the pod, the second of the load, what nslookup said
	NslookupErr                error
}

// merge adds another client's load to l.
func (l *PodLoad) merge(o PodLoad) {
	l.Runs = append(l.Runs, o.Runs...)
	l.NslookupSent += o.NslookupSent
	l.NslookupFail += o.NslookupFail
	l.NslookupFailures = append(l.NslookupFailures, o.NslookupFailures...)
	l.NslookupErr = errors.Join(l.NslookupErr, o.NslookupErr)
}

// FailedFrom counts the failed queries of client's runs to target.
func (l PodLoad) FailedFrom(client, target string) (failed, sent int) {
	return PodLoad{Runs: slices.DeleteFunc(slices.Clone(l.Runs), func(r LoadRun) bool { return r.Client != client })}.Failed(target)
}

// Failed counts the failed queries to target (all targets if empty).
func (l PodLoad) Failed(target string) (failed, sent int) {
	for _, r := range l.Runs {
		if (target == "" || r.Target == target) && r.Result != nil {
			failed += r.Result.Failed()
			sent += r.Result.Sent
		}
	}
	return failed, sent
}

// StartPodLoad runs a load from pod for d: for each of targets and each
// transport a dnsload at rate queries/s, and the nslookup client.
func (c *Cluster) StartPodLoad(pod string, targets []string, rate int, d time.Duration) <-chan PodLoad {
	done := make(chan PodLoad, 1)
	go func() {
		var mu sync.Mutex
		var load PodLoad
		var wg sync.WaitGroup
		for _, target := range targets {
			for _, tr := range loadTransports {
				wg.Add(1)
				go func() {
					defer wg.Done()
					workers := "20"
					if tr == dnsload.TCPPerQuery {
						workers = "100" // many clients: some keep opening connections while others wait for a SYN retransmission
					}
					out, err := c.Exec(pod, "dnsload", "-json", "-target", target+":53", "-transport", string(tr), "-queries", podLoadMix,
						"-rate", strconv.Itoa(rate), "-duration", d.String(), "-timeout", "2s", "-workers", workers)
					run := LoadRun{Client: pod, Target: target, Transport: tr}
					var res dnsload.Result
					if jerr := json.Unmarshal([]byte(out), &res); jerr == nil {
						run.Result = &res // dnsload exits 1 when a query failed: the result says which
					} else {
						run.Err = fmt.Errorf("%v %v: %s", err, jerr, out)
					}
					mu.Lock()
					load.Runs = append(load.Runs, run)
					mu.Unlock()
				}()
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A failure prints its second and what nslookup said (a timeout
			// says nothing: timeout(1) killed it), the last line the counts.
			script := fmt.Sprintf(`start=$(date +%%s); end=$(( start + %d )); sent=0; failed=0
while [ $(date +%%s) -lt $end ]; do
  sent=$((sent+1))
  out=$(timeout 1 nslookup -type=A web.default.svc.cluster.local 2>&1) || {
    failed=$((failed+1))
    echo "second $(( $(date +%%s) - start )): $(echo "$out" | grep -v '^$' | tail -n 1)"
  }
  sleep 0.1
done
echo $sent $failed`, int(d.Seconds()))
			out, err := c.Exec(pod, "sh", "-c", script)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			mu.Lock()
			defer mu.Unlock()
			for _, failure := range lines[:len(lines)-1] {
				load.NslookupFailures = append(load.NslookupFailures, pod+" "+failure)
			}
			if _, serr := fmt.Sscan(lines[len(lines)-1], &load.NslookupSent, &load.NslookupFail); serr != nil {
				load.NslookupErr = fmt.Errorf("%v %v: %q", err, serr, out)
			}
		}()
		wg.Wait()
		done <- load
	}()
	return done
}
