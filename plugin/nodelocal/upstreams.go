package nodelocal

import (
	"net/netip"
	"slices"
	"strconv"
	"time"
)

// Keeping the forward upstreams reachable when their Service goes. An
// uninstall (`kubectl delete -k`) deletes the kube-dns-upstream Service, where
// the cache forwards cluster-domain misses, with the DaemonSet: kube-proxy
// removes its rules about when this instance gets its SIGTERM, and every miss
// that needs a new upstream connection would time out while this instance
// still serves (the replacement wait, then lameduck on the link-local IP). So
// each upstream that kube-proxy translates is pinned: nat OUTPUT rules DNAT
// new flows to it to the endpoints its flows reach (conntrack knows them).
//
// A pin must never come before kube-proxy's own translation, or it would keep
// sending flows to pods kube-proxy no longer uses. In kube-proxy's iptables
// mode its rules are in the same chain, jumped to from its first rule: a pin
// appended after them catches only what kube-proxy no longer translates, so it
// stays in place while this instance serves, its endpoints refreshed at every
// check, and covers the moment the Service goes. Elsewhere (nftables mode: a
// chain of kube-proxy's own at the same priority; IPVS: after the nat chains)
// a pin is only set as a stop begins that no other instance shares, for the
// few seconds to the exit, when both lead to the same pods.

// commentUpstreamPin marks the pins, so that a start removes those an
// instance killed during its stop left.
const commentUpstreamPin = "NodeLocal DNS Cache: reach the upstream if its Service goes"

// pinRules DNATs new UDP and TCP flows to upstream to endpoints, spread evenly
// at random as kube-proxy spreads them.
func pinRules(upstream netip.AddrPort, endpoints []netip.AddrPort) []Rule {
	var rules []Rule
	for _, proto := range []string{"udp", "tcp"} {
		for i, ep := range endpoints {
			var spread []string
			if left := len(endpoints) - i; left > 1 {
				spread = []string{"-m", "statistic", "--mode", "random", "--probability", strconv.FormatFloat(1/float64(left), 'f', 11, 64)}
			}
			r := rule("nat", "OUTPUT", "-d", upstream.Addr(), proto, "--dport", int(upstream.Port()), "DNAT", commentUpstreamPin, spread...)
			r.Args = append(r.Args, "--to-destination", ep.String())
			rules = append(rules, r)
		}
	}
	return rules
}

func (r Rule) isUpstreamPin() bool { return r.hasComment(commentUpstreamPin) }

// pinUpstreams runs as a stop begins, before the replacement wait. In a
// surge the successor serves and the Service stays: nothing to pin.
func (m *manager) pinUpstreams() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cfg == nil || len(m.cfg.Upstreams) == 0 || (m.phase != phaseServing && m.phase != phaseReloadPause) {
		return
	}
	if others, err := m.peers.Others(m.cfg.Listen); err != nil || others > 0 {
		return
	}
	m.refreshPins(false)
}

// How long a node where pins cannot stay while serving goes before it is
// looked at again (kube-proxy may have started since).
const pinModeRecheck = time.Minute

// refreshPins brings each upstream's pins to the endpoints its flows reach
// now. whileServing: only where the pins come after kube-proxy's rules.
func (m *manager) refreshPins(whileServing bool) {
	for upstream := range m.pins {
		if !slices.Contains(m.cfg.Upstreams, upstream) { // a reload dropped it
			m.unpin(upstream)
		}
	}
	for _, upstream := range m.cfg.Upstreams {
		f := familyOf(upstream.Addr())
		t, ok := m.tables[f]
		if !ok || (whileServing && !m.pinsAfterKubeProxy(f, t, upstream)) {
			continue
		}
		endpoints, err := m.conntrack.Endpoints(upstream)
		if err != nil {
			log.Warningf("Cache misses forwarded to %s time out if its Service goes: %v", upstream, err)
			continue
		}
		if len(endpoints) == 0 {
			continue // not a Service, or no flow to it lately: the pins stay as they are
		}
		want := pinRules(upstream, endpoints)
		if slices.EqualFunc(want, m.pins[upstream], func(a, b Rule) bool { return a.key() == b.key() }) {
			continue
		}
		// The new pins first: there is no moment without one.
		var added []Rule
		for _, r := range want {
			if err := t.Append(r); err != nil {
				m.iptablesError("append "+r.String(), err)
				continue
			}
			added = append(added, r)
		}
		for _, r := range m.pins[upstream] {
			if err := t.Delete(r); err != nil {
				m.iptablesError("delete "+r.String(), err)
			}
		}
		m.pins[upstream] = added
		log.Infof("Upstream pinned: new flows to %s go to %v once its Service's rules are gone (an uninstall deletes the Service with the DaemonSet)", upstream, endpoints)
	}
}

// pinsAfterKubeProxy reports whether pins for upstream come after kube-proxy's
// translation of it in table t: kube-proxy's iptables mode jumps to its
// Services from nat OUTPUT, and upstream is not a local address (IPVS mode
// puts Service IPs on kube-ipvs0 and jumps there too, for other reasons).
func (m *manager) pinsAfterKubeProxy(f Family, t RuleTables, upstream netip.AddrPort) bool {
	if m.pinsWhileServing[f] {
		return true
	}
	if time.Since(m.pinModeCheckedAt[f]) < pinModeRecheck {
		return false
	}
	m.pinModeCheckedAt[f] = time.Now()
	// With the nft backend, a ruleset that has not changed since is not listed again.
	if gen, ok, err := m.generation(m.backend); err == nil && ok {
		if seen, looked := m.pinModeGeneration[f]; looked && seen == gen {
			return false
		}
		m.pinModeGeneration[f] = gen
	}
	if addrs, err := m.links.Addresses(); err != nil || addrs[upstream.Addr()] != "" {
		return false
	}
	out, err := t.ListChain("nat", "OUTPUT")
	if err != nil {
		m.iptablesError("list", err)
		return false
	}
	listed, err := ParseListing("nat", out)
	if err != nil {
		m.iptablesError("list", err)
		return false
	}
	m.pinsWhileServing[f] = slices.ContainsFunc(listed, func(r Rule) bool {
		return len(r.Args) >= 2 && r.Args[len(r.Args)-2] == "-j" && r.Args[len(r.Args)-1] == kubeProxyServicesChain
	})
	return m.pinsWhileServing[f]
}

// kubeProxyServicesChain is where kube-proxy's iptables mode translates Service IPs.
const kubeProxyServicesChain = "KUBE-SERVICES"

// unpinUpstreams removes this instance's pins, as it exits.
func (m *manager) unpinUpstreams() {
	for upstream := range m.pins {
		m.unpin(upstream)
	}
}

func (m *manager) unpin(upstream netip.AddrPort) {
	for _, r := range m.pins[upstream] {
		if err := m.tables[familyOf(upstream.Addr())].Delete(r); err != nil {
			m.iptablesError("delete "+r.String(), err)
		}
	}
	delete(m.pins, upstream)
}

// sweepPins removes the pins an instance killed left, once no other instance
// runs (a stopping one still needs its own). This one's go too, and are set
// again by the refresh that follows.
func (m *manager) sweepPins() {
	if !m.pinsToSweep {
		return
	}
	if others, err := m.peers.Others(m.cfg.Listen); err != nil || others > 0 {
		return
	}
	m.pinsToSweep = false
	for _, t := range m.tables {
		for _, r := range m.removeListed(t, "nat", "OUTPUT", Rule.isUpstreamPin) {
			log.Infof("Removed an upstream pin that an earlier instance left: %s", r)
		}
	}
	clear(m.pins)
}
