package nodelocal

import (
	"errors"
	"net/netip"
	"slices"
)

// kubeDNSConns owns the TCP connections kube-dns served when the takeover
// ended and still serves: each is left to it by a rule (ruleSpec.kubeDNS)
// until it closes. It never touches the rules: the manager applies them
// again when the list changed. The manager's lock guards it.
type kubeDNSConns struct {
	conntrack Conntrack
	list      []kubeDNSConnection
}

// kubeDNSConnection is a client's TCP connection to a Service IP that
// kube-dns serves.
type kubeDNSConnection struct {
	client, service netip.AddrPort
}

// The most connections a takeover leaves to kube-dns: their rules go in at
// once, but every packet crossing raw PREROUTING meets each of them until its
// connection closes. The others are reset; their clients reconnect here.
const maxKubeDNSConnections = 256

// all is the connections left to kube-dns.
func (k *kubeDNSConns) all() []kubeDNSConnection { return k.list }

// leave lists the TCP connections to services that kube-dns serves as the
// takeover ends, the first maxKubeDNSConnections, and leaves them to it.
func (k *kubeDNSConns) leave(services []netip.AddrPort) {
	open, err := k.openNow(services)
	if err != nil {
		log.Warningf("TCP connections kube-dns still serves may be reset: %v", err)
	}
	if len(open) > maxKubeDNSConnections {
		log.Warningf("kube-dns still serves %d TCP connections on %v: the %d beyond the first %d are reset, and their clients reconnect here",
			len(open), services, len(open)-maxKubeDNSConnections, maxKubeDNSConnections)
		open = open[:maxKubeDNSConnections]
	}
	if len(open) > 0 {
		log.Infof("kube-dns still serves %d TCP connections on %v: they stay with it until they close", len(open), services)
	}
	k.list = open
}

// openNow lists the TCP connections to services that kube-dns serves, as
// conntrack has them.
func (k *kubeDNSConns) openNow(services []netip.AddrPort) ([]kubeDNSConnection, error) {
	var open []kubeDNSConnection
	var errs []error
	for _, service := range services {
		clients, err := k.conntrack.OpenClients(service)
		errs = append(errs, err)
		for _, c := range clients {
			open = append(open, kubeDNSConnection{client: c, service: service})
		}
	}
	return open, errors.Join(errs...)
}

// adopt makes the connections an earlier instance left to kube-dns (a surge
// peer, or one killed since), as listed in the raw table, this one's too:
// their rules stay until conntrack shows them closed, whichever instance
// checks first. At most maxKubeDNSConnections, as a takeover leaves: rules
// beyond those (which no instance writes) are removed as extra by the next
// sync.
func (k *kubeDNSConns) adopt(raw []Rule) {
	for _, r := range raw {
		if c, ok := r.kubeDNSConnection(); ok && !slices.Contains(k.list, c) {
			k.list = append(k.list, c)
		}
	}
	if n := len(k.list); n > maxKubeDNSConnections {
		log.Warningf("%d rules leave connections to kube-dns, more than an instance writes: the %d beyond the first %d are removed",
			n, n-maxKubeDNSConnections, maxKubeDNSConnections)
		k.list = k.list[:maxKubeDNSConnections]
	}
}

// prune forgets the connections that have closed since, and reports whether
// any did.
func (k *kubeDNSConns) prune(services []netip.AddrPort) bool {
	if len(k.list) == 0 {
		return false
	}
	open, err := k.openNow(services)
	if err != nil {
		return false // kept until conntrack can be read
	}
	still := slices.DeleteFunc(slices.Clone(k.list), func(c kubeDNSConnection) bool { return !slices.Contains(open, c) })
	if len(still) == len(k.list) {
		return false
	}
	k.list = still
	if len(still) == 0 {
		log.Infof("The TCP connections kube-dns served at the takeover have closed")
	}
	return true
}
