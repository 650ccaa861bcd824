package nodelocal

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// The check loop: reconcile at once on link and address events, everything
// every CheckInterval, and tell readiness what it found.

// startLoop runs the checks: at once on link and address events, and every
// CheckInterval for everything.
func (m *manager) startLoop() {
	if m.stop != nil {
		return
	}
	stop := make(chan struct{})
	m.stop = stop
	if err := m.links.Watch(stop, m.notify); err != nil {
		log.Warningf("No netlink events (%v): the interface is checked every %v only", err, m.cfg.CheckInterval)
	}
	go func() {
		interval := m.interval()
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		for {
			select {
			case <-stop:
				return
			case <-m.wake:
				m.check(false)
			case <-ticker.C:
				m.check(true)
				if i := m.interval(); i != interval {
					interval = i
					ticker.Reset(i)
				}
			}
		}
	}()
}

func (m *manager) notify() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *manager) interval() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg.CheckInterval
}

// check puts everything right; link events check only the interface, the
// periodic check the rules too (a listing, one iptables process per table,
// when the ruleset may have changed).
func (m *manager) check(withRules bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cfg == nil || m.stop == nil {
		return // never applied, or shut down
	}
	ifaceOK := true
	if err := m.ensureInterface(); err != nil {
		log.Errorf("Interface check: %v", err)
		ifaceOK = false
	}
	if withRules && m.phase.ownsRules() {
		m.pruneKubeDNSConnections()
		m.rulesOK = m.ensureRules(true)
		m.sweepPins()
		m.refreshPins(true)
		m.countForeignSockets()
	}
	// A link event checks the interface only; the rules' state is the last check's.
	inPlace := ifaceOK && m.rulesOK && m.phase.listenersUp() && m.phase != phaseTakingOver
	m.inPlace.Store(inPlace)
	if inPlace {
		interceptionActive.Set(1)
	} else {
		interceptionActive.Set(0)
	}
	if inPlace && !m.answering.Load() {
		m.answering.Store(m.probeAll())
	}
}

// How often the checks count foreign sockets: it reads the node's whole
// socket tables (/proc/net), which a busy node makes large.
const foreignSocketsInterval = time.Minute

// countForeignSockets exports, and logs when it changes, how many sockets on
// the cache's addresses belong to no node-cache instance: a program that
// joined the SO_REUSEPORT group gets a share of the queries. They never count
// as a peer's, so a stop does not leave the interception to them. The first
// check counts, then one a minute.
func (m *manager) countForeignSockets() {
	if time.Since(m.foreignCountedAt) < m.foreignInterval {
		return
	}
	m.foreignCountedAt = time.Now()
	n, err := m.peers.Foreign(m.cfg.Listen)
	if err != nil {
		return
	}
	foreignSockets.Set(float64(n))
	if n != m.foreignSockets {
		if n > 0 {
			log.Warningf("%d sockets on %v belong to no node-cache instance: another program shares the cache's addresses and gets some of its queries", n, m.cfg.Listen)
		} else {
			log.Infof("No socket on %v belongs to another program any more", m.cfg.Listen)
		}
		m.foreignSockets = n
	}
}

func (m *manager) probeAll() bool {
	for _, ap := range m.interceptedListen() {
		if err := m.probe(ap); err != nil {
			log.Infof("Not ready yet: no answer on %s: %v", ap, err)
			return false
		}
	}
	return true
}

// probeDNS asks the cache on ap for the root NS; any answer means it serves there.
func probeDNS(ap netip.AddrPort) error {
	m := new(dns.Msg)
	m.SetQuestion(".", dns.TypeNS)
	c := &dns.Client{Net: "udp", Timeout: time.Second}
	_, _, err := c.Exchange(m, net.JoinHostPort(ap.Addr().String(), fmt.Sprint(ap.Port())))
	return err
}
