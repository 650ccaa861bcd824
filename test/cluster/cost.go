package cluster

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nodelocal/nodelocal/test/dnsload"
)

// LookupCost is what a pod's lookups through the kube-dns ClusterIP cost:
// their latency, the conntrack entries they left on the node, and the
// queries that reached kube-dns.
type LookupCost struct {
	UDP, TCP       *dnsload.Result
	Conntrack      int
	KubeDNSQueries float64
}

// Rates of MeasureLookups: UDP, and TCP with a connection per query.
const (
	CostUDPRate = 1000
	CostTCPRate = 300
	CostFor     = 10 * time.Second
)

// costMix is names a pod looks up again and again: a cache hits them all.
const costMix = "A:kubernetes.default.svc.cluster.local,A:web.default.svc.cluster.local,A:www." + ExternalDomain

// MeasureLookups sends costMix from client to the kube-dns ClusterIP, over
// UDP then TCP, at fixed rates, and counts what the lookups cost: the
// conntrack entries on the client's node, the queries kube-dns's pods saw.
func (c *Cluster) MeasureLookups(client string) (LookupCost, error) {
	var cost LookupCost
	clientIP, err := c.PodIP("default", "app="+client)
	if err != nil {
		return cost, err
	}
	node, err := c.nodeOf("default", client)
	if err != nil {
		return cost, err
	}
	node.InNode("conntrack", "-D", "-s", clientIP) // exits 1 when there was none
	before, err := c.KubeDNSRequests()
	if err != nil {
		return cost, err
	}
	run := func(tr dnsload.Transport, rate int) (*dnsload.Result, error) {
		out, err := c.Exec(client, "dnsload", "-json", "-target", KubeDNSIP+":53", "-transport", string(tr), "-queries", costMix,
			"-rate", strconv.Itoa(rate), "-duration", CostFor.String(), "-timeout", "2s", "-workers", "20")
		var res dnsload.Result
		if jerr := json.Unmarshal([]byte(out), &res); jerr != nil {
			return nil, fmt.Errorf("dnsload %s: %v %v: %s", tr, err, jerr, out)
		}
		return &res, nil
	}
	if cost.UDP, err = run(dnsload.UDP, CostUDPRate); err != nil {
		return cost, err
	}
	if cost.TCP, err = run(dnsload.TCPPerQuery, CostTCPRate); err != nil {
		return cost, err
	}
	after, err := c.KubeDNSRequests()
	if err != nil {
		return cost, err
	}
	for ip, n := range after {
		cost.KubeDNSQueries += n - before[ip]
	}
	for _, proto := range []string{"udp", "tcp"} {
		out, _ := node.InNode("conntrack", "-L", "-s", clientIP, "-p", proto, "--dport", "53")
		cost.Conntrack += strings.Count(out, "dport=53 ")
	}
	return cost, nil
}

// KubeDNSRequests are the requests each of kube-dns's pods counted
// (coredns_dns_requests_total), by pod IP.
func (c *Cluster) KubeDNSRequests() (map[string]float64, error) {
	out, err := c.KubectlOutput("-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns", "-o", "jsonpath={.items[*].status.podIP}")
	if err != nil {
		return nil, err
	}
	requests := map[string]float64{}
	for _, ip := range strings.Fields(out) {
		n, err := c.Metric("http://"+ip+":9153/metrics", "coredns_dns_requests_total")
		if err != nil {
			return nil, err
		}
		requests[ip] = n
	}
	return requests, nil
}

// nodeOf is the node a pod runs on.
func (c *Cluster) nodeOf(namespace, pod string) (*Node, error) {
	name, err := c.KubectlOutput("-n", namespace, "get", "pod", pod, "-o", "jsonpath={.spec.nodeName}")
	if err != nil {
		return nil, err
	}
	for _, n := range c.Nodes() {
		if n.Name == name {
			return n, nil
		}
	}
	return nil, fmt.Errorf("pod %s/%s runs on %q, not a node of this cluster", namespace, pod, name)
}

// PodIP is the address of the first pod selector matches in namespace.
func (c *Cluster) PodIP(namespace, selector string) (string, error) {
	out, err := c.KubectlOutput("-n", namespace, "get", "pods", "-l", selector, "-o", "jsonpath={.items[0].status.podIP}")
	if err == nil && out == "" {
		err = fmt.Errorf("no pod %s in %s", selector, namespace)
	}
	return out, err
}

// RateSample is the rate of queries kube-dns's pods counted over the
// second or so before At.
type RateSample struct {
	At        time.Time
	PerSecond float64
}

// SampleKubeDNSRate samples the queries kube-dns's pods (those running
// when it starts) count, about once a second, until the returned stop is
// called, which returns the samples.
func (c *Cluster) SampleKubeDNSRate() (stop func() []RateSample, err error) {
	out, err := c.KubectlOutput("-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns", "-o", "jsonpath={.items[*].status.podIP}")
	if err != nil {
		return nil, err
	}
	ips := strings.Fields(out)
	total := func() (float64, error) {
		var sum float64
		for _, ip := range ips {
			n, err := c.Metric("http://"+ip+":9153/metrics", "coredns_dns_requests_total")
			if err != nil {
				return 0, err
			}
			sum += n
		}
		return sum, nil
	}
	last, err := total()
	if err != nil {
		return nil, err
	}
	lastAt := time.Now()
	done := make(chan struct{})
	result := make(chan []RateSample, 1)
	go func() {
		var samples []RateSample
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				result <- samples
				return
			case <-tick.C:
			}
			if now, err := total(); err == nil {
				at := time.Now()
				samples = append(samples, RateSample{At: at, PerSecond: (now - last) / at.Sub(lastAt).Seconds()})
				last, lastAt = now, at
			}
		}
	}()
	return func() []RateSample {
		close(done)
		return <-result
	}, nil
}
