package warm

import (
	"github.com/coredns/coredns/plugin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var warmUps = promauto.NewCounterVec(prometheus.CounterOpts{
	Namespace: plugin.Namespace,
	Subsystem: pluginName,
	Name:      "names_total",
	Help:      "Counter of the names of warm-ups, by result: warmed (the serving instance answered and the cache keeps it), failed (it did not answer in time), late (the warm-up ran out of time first).",
}, []string{"server", "result"})
