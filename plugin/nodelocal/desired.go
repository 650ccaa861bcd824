package nodelocal

import (
	"net/netip"
	"slices"
)

// The interception rules the node should have, as a pure function of a small
// spec: upstream's rule set for the intercepted addresses, cut to what the
// lifecycle phase wants (lifecycle.go maps each phase to a mode), and the
// connections left to kube-dns (kubedns.go) in front of it.

// ruleMode is how much of the Service IPs' interception is wanted.
type ruleMode int

const (
	// modeFull: every rule.
	modeFull ruleMode = iota
	// modeSYNOnly (takingOver): the Service IPs' TCP interception matches
	// SYNs only, which our paused listeners drop, while kube-dns's open
	// connections finish.
	modeSYNOnly
	// modeHandedBack (handedOff): the Service IPs' interception is gone, so
	// kube-proxy sends new queries to kube-dns while this instance answers
	// what it has and serves the link-local IP through lameduck.
	modeHandedBack
	// modeDraining: as modeHandedBack, but the Service IPs' TCP interception
	// stays: our listeners there are shut, so its socket match holds only the
	// connections already open, which finish here instead of being picked up
	// mid-stream by conntrack, DNATed and reset.
	modeDraining
)

// ruleSpec is everything the desired rules depend on.
type ruleSpec struct {
	listen     []netip.AddrPort // the intercepted addresses: no other link holds them
	healthPort int              // 0: no conntrack exemption for health probes
	failOpen   bool             // interception needs a live listener (the socket match)
	mode       ruleMode
	kubeDNS    []kubeDNSConnection   // connections left to kube-dns until they close
	local      []netip.Addr          // the listen IPs that are the cache's own, not Service IPs (Config.isLocal)
	fallback   map[Family]netip.Addr // where the cache's own addresses fail open to (failopen.go)
	takeover   []netip.AddrPort      // the addresses whose TCP a start takes over from kube-dns (modeSYNOnly)
	// hostByNFT: the node's own clients are intercepted in this process's
	// nf_tables table (failopen.go), not by iptables' raw OUTPUT.
	hostByNFT bool
}

// rules is the desired rule set, by family.
func (s ruleSpec) rules() map[Family][]Rule {
	rules := DesiredRules(s.listen, s.healthPort, s.failOpen)
	for f, rs := range rules {
		var kept []Rule
		for _, r := range rs {
			if s.hostByNFT && s.isHostInterception(r) {
				continue
			}
			if r, keep := s.modeRule(r); keep {
				kept = append(kept, r)
			}
		}
		rules[f] = kept
	}
	var jumped []netip.AddrPort
	for _, c := range s.kubeDNS {
		f := familyOf(c.service.Addr())
		rules[f] = append(rules[f], kubeDNSConnectionRule(c))
		if !slices.Contains(jumped, c.service) {
			jumped = append(jumped, c.service)
			rules[f] = append(rules[f], kubeDNSJumpRule(c.service))
		}
	}
	return rules
}

// modeRule is rule r as the mode wants it, if it wants it at all. The socket
// match is what lets a shut listener's interception hold open connections
// only, and a SYN-only rule hand SYNs to a paused one: without it, the rules
// stay whole.
func (s ruleSpec) modeRule(r Rule) (Rule, bool) {
	switch {
	case s.mode == modeSYNOnly && s.failOpen && isTCPInterceptionOf(r, s.takeover):
		return r.synOnly(), true
	case s.mode == modeHandedBack && s.isHandedBack(r):
		return r, false
	case s.mode == modeDraining && s.isHandedBack(r):
		return r, s.failOpen && r.proto() == "tcp"
	}
	return r, true
}

// isHostInterception: r is the NOTRACK of the node's own queries to a
// listen address (raw OUTPUT), not of its health probes.
func (s ruleSpec) isHostInterception(r Rule) bool {
	if r.Table != "raw" || r.Chain != "OUTPUT" {
		return false
	}
	return slices.ContainsFunc(s.listen, r.isTo)
}

// isHandedBack: the interception of a Service IP (not one of the cache's
// own), which a stop without a successor gives back to kube-proxy first.
func (s ruleSpec) isHandedBack(r Rule) bool {
	if !r.isInterception() || len(r.Args) < 2 || r.Args[0] != "-d" {
		return false
	}
	dst, err := netip.ParsePrefix(r.Args[1])
	return err == nil && !slices.Contains(s.local, dst.Addr())
}

// isTCPInterceptionOf: r is the TCP interception of one of addrs.
func isTCPInterceptionOf(r Rule, addrs []netip.AddrPort) bool {
	if !r.isInterception() || r.proto() != "tcp" {
		return false
	}
	return slices.ContainsFunc(addrs, r.isTo)
}

// fromKubeDNS are the addresses in listen that kube-dns serves while no
// instance does, which a start takes TCP over from in steps: the Service
// IPs (kube-proxy's DNAT), and the cache's own ones that fail open to a
// fallback (failopen.go).
func (c *Config) fromKubeDNS(listen []netip.AddrPort) []netip.AddrPort {
	fallback := c.fallbacks()
	return slices.DeleteFunc(slices.Clone(listen), func(ap netip.AddrPort) bool {
		_, ok := fallback[familyOf(ap.Addr())]
		return c.isLocal(ap.Addr()) && !ok
	})
}

// services are the addresses in listen that are Service IPs: not the
// cache's own.
func (c *Config) services(listen []netip.AddrPort) []netip.AddrPort {
	return slices.DeleteFunc(slices.Clone(listen), func(ap netip.AddrPort) bool { return c.isLocal(ap.Addr()) })
}

// localIPs are the listen IPs that are the cache's own.
func (c *Config) localIPs() []netip.Addr {
	return slices.DeleteFunc(c.IPs(), func(ip netip.Addr) bool { return !c.isLocal(ip) })
}
