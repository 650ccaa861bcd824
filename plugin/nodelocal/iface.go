package nodelocal

import (
	"fmt"
	"net/netip"
	"slices"
)

// iface owns the cache's interface and the listen addresses on it: the ones
// this process put there, the ones another link holds (left alone and not
// intercepted), and whether the interface was in place once (a new one is a
// repair). The manager's lock guards it.
type iface struct {
	links   Links
	repairs *repairLog
	own     map[netip.Addr]bool   // addresses this process put on the interface
	foreign map[netip.Addr]string // listen addresses held by another link, by link
	made    bool
}

func newIface(links Links, repairs *repairLog) *iface {
	return &iface{links: links, repairs: repairs, own: map[netip.Addr]bool{}, foreign: map[netip.Addr]string{}}
}

// ensure creates the interface and adds the listen addresses that are
// missing. An address another link holds (kube-ipvs0 in IPVS mode) is
// skipped, and given back when that link takes it after us (kube-proxy
// started second); it reports whether it gave one back, so that the rules
// follow at once.
func (i *iface) ensure(cfg *Config) (gaveBack bool, err error) {
	if !cfg.ManageInterface {
		return false, nil
	}
	exists, err := i.links.LinkExists(cfg.Interface)
	if err != nil {
		setupErrors.WithLabelValues(errInterfaceCheck).Inc()
		return false, fmt.Errorf("check interface %s: %w", cfg.Interface, err)
	}
	if !exists {
		kind, err := i.links.AddLink(cfg.Interface)
		if err != nil {
			setupErrors.WithLabelValues(errInterfaceAdd).Inc()
			return false, err
		}
		if i.made {
			i.repairs.note(repairInterface, "interface "+cfg.Interface+" created again")
			log.Warningf("Interface %s was removed; created it again", cfg.Interface)
		} else if kind != "dummy" {
			log.Infof("Created interface %s as a %s: this kernel has no dummy link type; local delivery is the same", cfg.Interface, kind)
		} else {
			log.Infof("Created interface %s", cfg.Interface)
		}
	}
	i.made = true
	addrs, err := i.links.Addresses()
	if err != nil {
		setupErrors.WithLabelValues(errInterfaceCheck).Inc()
		return false, err
	}
	for _, ip := range cfg.IPs() {
		holders := addrs[ip]
		other := slices.IndexFunc(holders, func(l string) bool { return l != cfg.Interface })
		switch {
		case other >= 0:
			owner := holders[other]
			if slices.Contains(holders, cfg.Interface) && i.own[ip] {
				if err := i.links.DeleteAddress(cfg.Interface, ip); err != nil {
					return gaveBack, err
				}
				log.Warningf("%s is now on interface %s too (kube-proxy's IPVS mode started after node-cache): "+
					"removed it from %s, and no longer intercepting it", ip, owner, cfg.Interface)
				gaveBack = true
			} else if i.foreign[ip] != owner {
				log.Warningf("%s is already on interface %s (kube-proxy IPVS mode puts Service IPs on kube-ipvs0): "+
					"not adding it to %s and not intercepting it", ip, owner, cfg.Interface)
			}
			delete(i.own, ip)
			i.foreign[ip] = owner
		case len(holders) > 0: // on ours alone
			i.own[ip] = true
			delete(i.foreign, ip)
		default:
			if err := i.links.AddAddress(cfg.Interface, ip); err != nil {
				setupErrors.WithLabelValues(errInterfaceAdd).Inc()
				return gaveBack, err
			}
			if i.own[ip] {
				i.repairs.note(repairAddress, fmt.Sprintf("address %s added to %s again", ip, cfg.Interface))
				log.Warningf("Address %s was removed from %s; added it again", ip, cfg.Interface)
			}
			i.own[ip] = true
			delete(i.foreign, ip)
		}
	}
	return gaveBack, nil
}

// drop removes the addresses an earlier config put on the interface that
// next no longer listens on there.
func (i *iface) drop(earlier, next *Config) {
	if earlier == nil || !earlier.ManageInterface {
		return
	}
	for ip := range i.own {
		if !slices.Contains(next.IPs(), ip) || next.Interface != earlier.Interface {
			if err := i.links.DeleteAddress(earlier.Interface, ip); err != nil {
				log.Warningf("Could not remove %s, no longer listened on: %v", ip, err)
			}
			delete(i.own, ip)
		}
	}
}

// remove removes our addresses, and the interface itself unless someone
// else's addresses are on it.
func (i *iface) remove(name string) {
	for ip := range i.own {
		if err := i.links.DeleteAddress(name, ip); err != nil {
			log.Errorf("Teardown: %v", err)
		}
		delete(i.own, ip)
	}
	addrs, err := i.links.Addresses()
	if err != nil {
		log.Errorf("Teardown: %v", err)
		return
	}
	for ip, holders := range addrs {
		// IPv6 link-local addresses are the kernel's own, not someone else's.
		if slices.Contains(holders, name) && !(ip.Is6() && ip.IsLinkLocalUnicast()) {
			log.Infof("Teardown: leaving interface %s in place, it holds %s which is not ours", name, ip)
			return
		}
	}
	if err := i.links.DeleteLink(name); err != nil {
		log.Errorf("Teardown: delete interface %s: %v", name, err)
	}
	i.made = false
}

// intercepted are the listen addresses that rules go for: every one but
// those another link holds.
func (i *iface) intercepted(listen []netip.AddrPort) []netip.AddrPort {
	var out []netip.AddrPort
	for _, ap := range listen {
		if _, foreign := i.foreign[ap.Addr()]; !foreign {
			out = append(out, ap)
		}
	}
	return out
}

// status is the interface, the addresses this instance put there and those
// another link holds.
func (i *iface) status(cfg *Config) InterfaceStatus {
	st := InterfaceStatus{Name: cfg.Interface, Managed: cfg.ManageInterface}
	for ip := range i.own {
		st.Addresses = append(st.Addresses, ip.String())
	}
	slices.Sort(st.Addresses)
	for ip, link := range i.foreign {
		if st.Foreign == nil {
			st.Foreign = map[string]string{}
		}
		st.Foreign[ip.String()] = link
	}
	return st
}
