package coalesce

import (
	"github.com/coredns/coredns/plugin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	followers = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "followers_total",
		Help:      "Counter of queries answered with the answer of an identical query already in flight, instead of going upstream.",
	}, []string{"server"})
	waitTimeouts = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "wait_timeouts_total",
		Help:      "Counter of queries that waited max_wait for an identical query's answer in vain and went upstream themselves.",
	}, []string{"server"})
	overflows = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "overflows_total",
		Help:      "Counter of queries that went upstream alone because max_followers queries were already waiting for an answer.",
	}, []string{"server"})
)
