package nodelocal

import (
	"net/netip"
	"slices"
	"time"
)

// Defaults, as upstream node-cache's flags have them except the check interval
// (upstream: 60 s, a long outage when something flushes the rules).
const (
	DefaultInterface     = "nodelocaldns"
	DefaultCheckInterval = 5 * time.Second
	DefaultHealthPort    = 8080
)

// Config is the desired interception state of the process, merged from every
// server block that uses nodelocal.
type Config struct {
	Listen          []netip.AddrPort // where the cache listens: IPs to own and intercept
	Interface       string
	ManageInterface bool
	Backend         Backend
	CheckInterval   time.Duration
	HealthPort      int // 0: no conntrack exemption for health probes
	Teardown        bool
	FailOpen        bool // interception needs a live listener (-m socket)
	// Upstreams are where the forward plugin of these server blocks sends
	// queries: those behind a Service are pinned to the pods their flows
	// reach, in case the Service goes first (upstreams.go).
	Upstreams []netip.AddrPort
	// Fallback is, per family, where queries to the cache's own listen
	// addresses go while no node-cache listens (failopen.go); none given:
	// the first listen address that is a Service IP.
	Fallback []netip.Addr
	// Local are the cache's own listen addresses besides the link-local
	// ones (an IPv6 cache's fd00::10): see isLocal.
	Local []netip.Addr
	// NodeCondition: tell the API server, in a condition of the Node, whether
	// this node's DNS cache serves (nodecondition.go).
	NodeCondition bool
	// StartupTaint: remove the startup taint from the Node once the cache
	// serves (nodereport.go).
	StartupTaint bool
}

// isLocal: ip is the cache's own address, which nothing but a node-cache
// answers (169.254.20.10, or one given with `local`), not a Service IP that
// kube-proxy translates while no node-cache runs (the kube-dns ClusterIP).
// A Service IP is never link-local; an IPv6 cache's own address is usually
// a unique local one, as a Service CIDR can be, hence the option.
func (c *Config) isLocal(ip netip.Addr) bool {
	return ip.IsLinkLocalUnicast() || slices.Contains(c.Local, ip)
}

// IPs lists the distinct listen addresses.
func (c *Config) IPs() []netip.Addr {
	var ips []netip.Addr
	for _, ap := range c.Listen {
		if !slices.Contains(ips, ap.Addr()) {
			ips = append(ips, ap.Addr())
		}
	}
	return ips
}

// Families lists the IP families the config listens on.
func (c *Config) Families() []Family {
	var fs []Family
	for _, ip := range c.IPs() {
		if f := familyOf(ip); !slices.Contains(fs, f) {
			fs = append(fs, f)
		}
	}
	return fs
}

func (c *Config) equal(o *Config) bool {
	return o != nil && slices.Equal(c.Listen, o.Listen) && c.Interface == o.Interface &&
		c.ManageInterface == o.ManageInterface && c.Backend == o.Backend &&
		c.CheckInterval == o.CheckInterval && c.HealthPort == o.HealthPort && c.Teardown == o.Teardown &&
		c.FailOpen == o.FailOpen && slices.Equal(c.Upstreams, o.Upstreams) && slices.Equal(c.Fallback, o.Fallback) &&
		slices.Equal(c.Local, o.Local) && c.NodeCondition == o.NodeCondition &&
		c.StartupTaint == o.StartupTaint
}
