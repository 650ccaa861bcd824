package nodelocal

import (
	"github.com/coredns/coredns/plugin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Error types of setupErrors, as upstream node-cache reports them.
const (
	errIPTables       = "iptables"
	errIPTablesLock   = "iptables_lock"
	errInterfaceAdd   = "interface_add"
	errInterfaceCheck = "interface_check"
	errConfigMap      = "configmap"
	errNFTables       = "nftables"
)

// Repair kinds.
const (
	repairInterface = "interface"
	repairAddress   = "address"
	repairRule      = "rule"
)

var (
	// setupErrors keeps upstream node-cache's name and labels, so existing
	// dashboards and alerts keep working.
	setupErrors = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "nodecache",
		Name:      "setup_errors_total",
		Help:      "Counter of errors while setting up or checking the node-local interception, by error type.",
	}, []string{"errortype"})

	repairs = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "nodelocal",
		Name:      "repairs_total",
		Help:      "Counter of interception state found missing or duplicated and put right, by kind (interface, address, rule).",
	}, []string{"kind"})

	foreignSockets = promauto.NewGauge(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "nodelocal",
		Name:      "foreign_sockets",
		Help:      "Sockets on the cache's listen addresses that belong to no node-cache instance, as the last check counted them.",
	})

	nodeAPIFailures = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "nodelocal",
		Name:      "node_api_failures_total",
		Help:      "Counter of failed requests to the API server about this node (its NodeLocalDNSReady condition, its startup taint), each retried.",
	})

	interceptionActive = promauto.NewGauge(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "nodelocal",
		Name:      "interception_active",
		Help:      "1 when the interface, its addresses and the iptables rules are all in place, else 0.",
	})
)

func init() {
	// Export every series from the start, so rate() and alerts see zeros.
	for _, t := range []string{errIPTables, errIPTablesLock, errInterfaceAdd, errInterfaceCheck, errConfigMap, errNFTables} {
		setupErrors.WithLabelValues(t).Add(0)
	}
	for _, k := range []string{repairInterface, repairAddress, repairRule} {
		repairs.WithLabelValues(k).Add(0)
	}
}

// CountConfigError counts a Corefile template or kube-dns ConfigMap that
// could not be used (the configmap error type).
func CountConfigError() { setupErrors.WithLabelValues(errConfigMap).Inc() }
