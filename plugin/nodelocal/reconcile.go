package nodelocal

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Reconciling: the interface, its addresses and the rules brought to what the
// config and the lifecycle phase want, with as few kernel calls as possible;
// syncrules.go applies one family's rules. Every function here runs under the
// manager's lock.

// ensureInterface creates the interface and adds the listen addresses that are
// missing. An address another link holds (kube-ipvs0 in IPVS mode) is skipped.
func (m *manager) ensureInterface() error {
	cfg := m.cfg
	if !cfg.ManageInterface {
		return nil
	}
	exists, err := m.links.LinkExists(cfg.Interface)
	if err != nil {
		setupErrors.WithLabelValues(errInterfaceCheck).Inc()
		return fmt.Errorf("check interface %s: %w", cfg.Interface, err)
	}
	if !exists {
		kind, err := m.links.AddLink(cfg.Interface)
		if err != nil {
			setupErrors.WithLabelValues(errInterfaceAdd).Inc()
			return err
		}
		if m.linkMade {
			repairs.WithLabelValues(repairInterface).Inc()
			log.Warningf("Interface %s was removed; created it again", cfg.Interface)
		} else if kind != "dummy" {
			log.Infof("Created interface %s as a %s: this kernel has no dummy link type; local delivery is the same", cfg.Interface, kind)
		} else {
			log.Infof("Created interface %s", cfg.Interface)
		}
	}
	m.linkMade = true
	addrs, err := m.links.Addresses()
	if err != nil {
		setupErrors.WithLabelValues(errInterfaceCheck).Inc()
		return err
	}
	for _, ip := range cfg.IPs() {
		owner := addrs[ip]
		switch {
		case owner == cfg.Interface:
			m.ownIPs[ip] = true
		case owner != "" && !m.ownIPs[ip]:
			if m.foreignIPs[ip] != owner {
				log.Warningf("%s is already on interface %s (kube-proxy IPVS mode puts Service IPs on kube-ipvs0): "+
					"not adding it to %s and not intercepting it", ip, owner, cfg.Interface)
			}
			m.foreignIPs[ip] = owner
		default:
			if err := m.links.AddAddress(cfg.Interface, ip); err != nil {
				setupErrors.WithLabelValues(errInterfaceAdd).Inc()
				return err
			}
			if m.ownIPs[ip] {
				repairs.WithLabelValues(repairAddress).Inc()
				log.Warningf("Address %s was removed from %s; added it again", ip, cfg.Interface)
			}
			m.ownIPs[ip] = true
			delete(m.foreignIPs, ip)
		}
	}
	return nil
}

// removeInterface removes our addresses, and the interface itself unless
// someone else's addresses are on it.
func (m *manager) removeInterface() {
	name := m.cfg.Interface
	for ip := range m.ownIPs {
		if err := m.links.DeleteAddress(name, ip); err != nil {
			log.Errorf("Teardown: %v", err)
		}
		delete(m.ownIPs, ip)
	}
	addrs, err := m.links.Addresses()
	if err != nil {
		log.Errorf("Teardown: %v", err)
		return
	}
	for ip, owner := range addrs {
		// IPv6 link-local addresses are the kernel's own, not someone else's.
		if owner == name && !(ip.Is6() && ip.IsLinkLocalUnicast()) {
			log.Infof("Teardown: leaving interface %s in place, it holds %s which is not ours", name, ip)
			return
		}
	}
	if err := m.links.DeleteLink(name); err != nil {
		log.Errorf("Teardown: delete interface %s: %v", name, err)
	}
	m.linkMade = false
}

// interceptedListen is where rules go: every listen address but foreign ones.
func (m *manager) interceptedListen() []netip.AddrPort {
	var out []netip.AddrPort
	for _, ap := range m.cfg.Listen {
		if _, foreign := m.foreignIPs[ap.Addr()]; !foreign {
			out = append(out, ap)
		}
	}
	return out
}

// serviceListen are the intercepted listen addresses that are Service IPs.
func (m *manager) serviceListen() []netip.AddrPort {
	return slices.DeleteFunc(m.interceptedListen(), func(ap netip.AddrPort) bool { return ap.Addr().IsLinkLocalUnicast() })
}

// desiredRules is the rule set for the current config and lifecycle phase.
func (m *manager) desiredRules() map[Family][]Rule {
	failOpen := m.cfg.FailOpen && !m.noSocketMatch
	rules := DesiredRules(m.interceptedListen(), m.cfg.HealthPort, failOpen)
	for f, rs := range rules {
		var kept []Rule
		for _, r := range rs {
			if r, keep := m.phaseRule(r, failOpen); keep {
				kept = append(kept, r)
			}
		}
		rules[f] = kept
	}
	var jumped []netip.AddrPort
	for _, c := range m.kubeDNSConnections {
		f := familyOf(c.service.Addr())
		rules[f] = append(rules[f], kubeDNSConnectionRule(c))
		if !slices.Contains(jumped, c.service) {
			jumped = append(jumped, c.service)
			rules[f] = append(rules[f], kubeDNSJumpRule(c.service))
		}
	}
	return rules
}

// phaseRule is rule r as the lifecycle phase wants it, if it wants it at all.
//   - takingOver: the Service IPs' TCP interception matches SYNs only, which
//     our paused listeners drop, while kube-dns's open connections finish.
//   - handedOff: the Service IPs' interception is gone, so kube-proxy sends
//     new queries to kube-dns while this instance answers what it has and
//     serves the link-local IP through lameduck.
//   - draining: as handedOff, but their TCP interception stays: our listeners
//     there are shut, so its socket match holds only the connections already
//     open, which finish here instead of being picked up mid-stream by
//     conntrack, DNATed and reset.
func (m *manager) phaseRule(r Rule, failOpen bool) (Rule, bool) {
	switch {
	case m.phase == phaseTakingOver && failOpen && isServiceTCPInterception(r):
		return r.synOnly(), true
	case m.phase == phaseHandedOff && isHandedOff(r):
		return r, false
	case m.phase == phaseDraining && isHandedOff(r):
		return r, failOpen && r.proto() == "tcp"
	}
	return r, true
}

// isHandedOff: the interception of a Service IP (not a link-local one), which
// a stop without a successor gives back to kube-proxy first.
func isHandedOff(r Rule) bool {
	if !r.isInterception() || len(r.Args) < 2 || r.Args[0] != "-d" {
		return false
	}
	dst, err := netip.ParsePrefix(r.Args[1])
	return err == nil && !dst.Addr().IsLinkLocalUnicast()
}

// isServiceTCPInterception: the TCP interception of a Service IP, which a
// starting instance takes over from kube-dns in steps.
func isServiceTCPInterception(r Rule) bool { return isHandedOff(r) && r.proto() == "tcp" }

// ensureRules brings every family's tables to the desired rules with one
// listing per table, adding what is missing and removing extra copies. With
// repair (the periodic check), a change is a repair: logged and counted.
// It reports whether all rules are in place.
func (m *manager) ensureRules(repair bool) bool {
	desired := m.desiredRules()
	current := m.readGeneration(desired)
	if repair && current != nil && m.verified != nil && *current == *m.verified {
		return true // nothing in the ruleset changed since it was found complete
	}
	ok, changed := true, false
	for f, t := range m.tables {
		fOK, fChanged := m.syncRules(f, t, desired[f], repair)
		ok, changed = ok && fOK, changed || fChanged
	}
	m.verified = nil
	if ok && !changed {
		m.verified = current // read before the listing: covers what it showed
	}
	return ok
}

// removeRules removes every rule of ours.
func (m *manager) removeRules() {
	for f, t := range m.tables {
		m.syncRules(f, t, nil, false)
	}
}

// verifiedRules identifies a rule check: the ruleset generation it saw and
// the rules it wanted.
type verifiedRules struct {
	generation uint32
	desired    string
}

// readGeneration is the rule check's identity now, or nil if the backend
// keeps no generation (legacy) or it cannot be read: then every check lists.
func (m *manager) readGeneration(desired map[Family][]Rule) *verifiedRules {
	gen, ok, err := m.generation(m.backend)
	if err != nil && !m.genErrShown {
		m.genErrShown = true
		log.Warningf("Rules are listed on every check (%v)", err)
	}
	if !ok || err != nil {
		return nil
	}
	var b strings.Builder
	for _, f := range []Family{IPv4, IPv6} {
		for _, r := range desired[f] {
			fmt.Fprintf(&b, "%d %s\n", f, r)
		}
	}
	return &verifiedRules{generation: gen, desired: b.String()}
}
