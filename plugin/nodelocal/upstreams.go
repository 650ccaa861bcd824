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

// upstreamPins owns the pins: this instance's, whether pins an earlier
// instance left may still be around, and, per family, whether pins may stay
// while serving (kube-proxy's rules come first), when that was last looked
// at and the ruleset generation then. It puts its rules in the ruleset's
// tables. The manager's lock guards it.
type upstreamPins struct {
	conntrack Conntrack
	links     Links
	rules     *ruleset

	pins           map[netip.AddrPort][]Rule
	toSweep        bool
	whileServing   map[Family]bool
	modeCheckedAt  map[Family]time.Time
	modeGeneration map[Family]uint32
}

func newUpstreamPins(conntrack Conntrack, links Links, rules *ruleset) *upstreamPins {
	p := &upstreamPins{conntrack: conntrack, links: links, rules: rules, pins: map[netip.AddrPort][]Rule{}}
	p.forgetMode()
	return p
}

// forgetMode makes the next refresh look again at where pins may go: the
// ruleset's tables are new.
func (p *upstreamPins) forgetMode() {
	p.whileServing, p.modeCheckedAt, p.modeGeneration = map[Family]bool{}, map[Family]time.Time{}, map[Family]uint32{}
}

// How long a node where pins cannot stay while serving goes before it is
// looked at again (kube-proxy may have started since).
const pinModeRecheck = time.Minute

// refresh brings each upstream's pins to the endpoints its flows reach now;
// pins of upstreams no longer forwarded to go. whileServing: only where the
// pins come after kube-proxy's rules.
func (p *upstreamPins) refresh(upstreams []netip.AddrPort, whileServing bool) {
	for upstream := range p.pins {
		if !slices.Contains(upstreams, upstream) { // a reload dropped it
			p.unpin(upstream)
		}
	}
	for _, upstream := range upstreams {
		f := familyOf(upstream.Addr())
		t, ok := p.rules.table(f)
		if !ok || (whileServing && !p.afterKubeProxy(f, t, upstream)) {
			continue
		}
		endpoints, err := p.conntrack.Endpoints(upstream)
		if err != nil {
			log.Warningf("Cache misses forwarded to %s time out if its Service goes: %v", upstream, err)
			continue
		}
		if len(endpoints) == 0 {
			continue // not a Service, or no flow to it lately: the pins stay as they are
		}
		want := pinRules(upstream, endpoints)
		if slices.EqualFunc(want, p.pins[upstream], func(a, b Rule) bool { return a.key() == b.key() }) {
			continue
		}
		// The new pins first: there is no moment without one.
		var added []Rule
		for _, r := range want {
			if err := t.Append(r); err != nil {
				iptablesError("append "+r.String(), err)
				continue
			}
			added = append(added, r)
		}
		for _, r := range p.pins[upstream] {
			if err := t.Delete(r); err != nil {
				iptablesError("delete "+r.String(), err)
			}
		}
		p.pins[upstream] = added
		log.Infof("Upstream pinned: new flows to %s go to %v once its Service's rules are gone (an uninstall deletes the Service with the DaemonSet)", upstream, endpoints)
	}
}

// afterKubeProxy reports whether pins for upstream come after kube-proxy's
// translation of it in table t: kube-proxy's iptables mode jumps to its
// Services from nat OUTPUT, and upstream is not a local address (IPVS mode
// puts Service IPs on kube-ipvs0 and jumps there too, for other reasons).
func (p *upstreamPins) afterKubeProxy(f Family, t RuleTables, upstream netip.AddrPort) bool {
	if p.whileServing[f] {
		return true
	}
	if time.Since(p.modeCheckedAt[f]) < pinModeRecheck {
		return false
	}
	p.modeCheckedAt[f] = time.Now()
	// With the nft backend, a ruleset that has not changed since is not listed again.
	if gen, ok := p.rules.currentGeneration(); ok {
		if seen, looked := p.modeGeneration[f]; looked && seen == gen {
			return false
		}
		p.modeGeneration[f] = gen
	}
	if addrs, err := p.links.Addresses(); err != nil || len(addrs[upstream.Addr()]) > 0 {
		return false
	}
	p.whileServing[f] = slices.ContainsFunc(listRules(t, "nat", "OUTPUT"), func(r Rule) bool {
		return len(r.Args) >= 2 && r.Args[len(r.Args)-2] == "-j" && r.Args[len(r.Args)-1] == kubeProxyServicesChain
	})
	return p.whileServing[f]
}

// kubeProxyServicesChain is where kube-proxy's iptables mode translates Service IPs.
const kubeProxyServicesChain = "KUBE-SERVICES"

// unpinAll removes this instance's pins, as it exits.
func (p *upstreamPins) unpinAll() {
	for upstream := range p.pins {
		p.unpin(upstream)
	}
}

func (p *upstreamPins) unpin(upstream netip.AddrPort) {
	t, ok := p.rules.table(familyOf(upstream.Addr()))
	for _, r := range p.pins[upstream] {
		if !ok {
			break // a reload turned iptables off: those tables are not ours to change now
		}
		if err := t.Delete(r); err != nil {
			iptablesError("delete "+r.String(), err)
		}
	}
	delete(p.pins, upstream)
}

// sweepAtStart marks the pins an instance killed before this start may have
// left: sweep removes them once no other instance runs.
func (p *upstreamPins) sweepAtStart() { p.toSweep = true }

// sweepPending: the pins an earlier instance left may still be around.
func (p *upstreamPins) sweepPending() bool { return p.toSweep }

// sweep removes the pins an instance killed left; the caller knows that no
// other instance runs (a stopping one still needs its own). This one's go
// too, and are set again by the refresh that follows.
func (p *upstreamPins) sweep() {
	if !p.toSweep {
		return
	}
	p.toSweep = false
	for _, r := range p.rules.removeMatching("nat", "OUTPUT", Rule.isUpstreamPin) {
		log.Infof("Removed an upstream pin that an earlier instance left: %s", r)
	}
	clear(p.pins)
}

// status maps each pinned upstream to the endpoints its pins send new flows to.
func (p *upstreamPins) status() map[string][]string {
	out := map[string][]string{}
	for upstream, rules := range p.pins {
		for _, r := range rules {
			if ep := r.arg("--to-destination"); r.proto() == "udp" && ep != "" {
				out[upstream.String()] = append(out[upstream.String()], ep)
			}
		}
	}
	return out
}
