// Command dnsload sends a bounded DNS load and prints what happened. Targets
// are limited to loopback, 169.254.0.0/16, 198.18.0.0/15 and 2001:2::/48.
//
//	dnsload -target 169.254.20.10:53 -rate 2000 -duration 30s -transport tcp-persistent
//	dnsload -lookup kubernetes.default   (once, through /etc/resolv.conf: its search list and ndots)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/nodelocal/nodelocal/test/dnsload"
)

func main() {
	var cfg dnsload.Config
	mix := flag.String("queries", "A:web.default.svc.cluster.local,AAAA:web.default.svc.cluster.local,A:www.example.org",
		"comma-separated TYPE:name mix; "+dnsload.UniqueToken+" in a name makes each query unique")
	transport := flag.String("transport", "udp", "udp, tcp (a connection per query) or tcp-persistent")
	flag.StringVar(&cfg.Target, "target", "169.254.20.10:53", "server to load")
	flag.IntVar(&cfg.Rate, "rate", 1000, "queries per second (0: as fast as answered)")
	flag.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long to send (at most "+dnsload.MaxDuration.String()+")")
	flag.IntVar(&cfg.Count, "count", 0, "stop after this many queries (0: no limit but the duration)")
	flag.DurationVar(&cfg.Timeout, "timeout", time.Second, "per-query timeout")
	flag.IntVar(&cfg.Workers, "workers", 20, "concurrent clients")
	flag.IntVar(&cfg.SetSize, "set", 250, "how many names "+dnsload.SetToken+" in a query name makes, round-robin")
	flag.BoolVar(&cfg.StopOnFailure, "stop-on-failure", false, "stop sending at the first failed query")
	asJSON := flag.Bool("json", false, "print the result as JSON")
	lookup := flag.String("lookup", "", "resolve this name once as a pod's resolver does (/etc/resolv.conf, search list, ndots), print its addresses, and exit")
	flag.Parse()
	if *lookup != "" {
		os.Exit(resolve(*lookup))
	}

	queries, err := dnsload.ParseMix(*mix)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	cfg.Queries, cfg.Transport = queries, dnsload.Transport(*transport)
	res, err := dnsload.Run(context.Background(), cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if *asJSON {
		json.NewEncoder(os.Stdout).Encode(res)
	} else {
		fmt.Println(res)
	}
	if res.Failed() > 0 {
		os.Exit(1)
	}
}

// resolve looks name up with Go's own resolver, which reads /etc/resolv.conf
// as the C library does, and prints the addresses: 0 when there are any.
func resolve(name string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, err := (&net.Resolver{PreferGo: true}).LookupHost(ctx, name)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, a := range addrs {
		fmt.Println(a)
	}
	return 0
}
