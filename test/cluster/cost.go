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
// UDP then TCP, at fixed rates, and counts what the lookups cost.
func (c *Cluster) MeasureLookups(client string) (LookupCost, error) {
	var cost LookupCost
	clientIP, err := c.PodIP("default", "app="+client)
	if err != nil {
		return cost, err
	}
	kubeDNSIP, err := c.PodIP("kube-system", "k8s-app=kube-dns")
	if err != nil {
		return cost, err
	}
	kubeDNSMetrics := "http://" + kubeDNSIP + ":9153/metrics"
	c.InNode("conntrack", "-D", "-s", clientIP) // exits 1 when there was none
	before, err := c.Metric(kubeDNSMetrics, "coredns_dns_requests_total")
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
	after, err := c.Metric(kubeDNSMetrics, "coredns_dns_requests_total")
	if err != nil {
		return cost, err
	}
	cost.KubeDNSQueries = after - before
	for _, proto := range []string{"udp", "tcp"} {
		out, _ := c.InNode("conntrack", "-L", "-s", clientIP, "-p", proto, "--dport", "53")
		cost.Conntrack += strings.Count(out, "dport=53 ")
	}
	return cost, nil
}

// PodIP is the address of the first pod selector matches in namespace.
func (c *Cluster) PodIP(namespace, selector string) (string, error) {
	out, err := c.KubectlOutput("-n", namespace, "get", "pods", "-l", selector, "-o", "jsonpath={.items[0].status.podIP}")
	if err == nil && out == "" {
		err = fmt.Errorf("no pod %s in %s", selector, namespace)
	}
	return out, err
}
