// Package nodelocal makes a CoreDNS server the node-local DNS cache of a
// Kubernetes node: it puts the listen IPs on an interface, installs the
// iptables rules that let pods reach the cache without conntrack, keeps both in
// place, and removes them on final shutdown.
package nodelocal

import (
	"context"

	"github.com/coredns/coredns/plugin"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"github.com/miekg/dns"
)

const pluginName = "nodelocal"

var log = clog.NewWithPlugin(pluginName)

// NodeLocal is the handler in each server block that uses the directive. It
// only passes queries on; it is in the chain so the ready plugin can ask it.
type NodeLocal struct {
	Next plugin.Handler
	mgr  *manager
}

// ServeDNS passes on what reaches it. Last in plugin.cfg, after forward, it
// is reached by no query of the shipped Corefile.
func (n *NodeLocal) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	return plugin.NextOrFailure(pluginName, n.Next, ctx, w, r)
}

// Name implements plugin.Handler.
func (n *NodeLocal) Name() string { return pluginName }

// Ready implements ready.Readiness: the interface, its addresses and the rules
// are in place and the cache answers on every intercepted address.
func (n *NodeLocal) Ready() bool { return n.mgr.Ready() }
