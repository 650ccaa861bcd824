package nodelocal

import (
	"errors"
	"net/netip"
	"slices"
	"time"
)

// The takeover: how a start takes the Service IPs' TCP over from kube-dns,
// which served them while no instance ran, without resetting the connections
// kube-dns serves. Each step is a lifecycle transition (lifecycle.go).

// How long connections that kube-dns serves get to finish at the start: under
// a second, so a SYN dropped meanwhile gets through on its first retransmission.
const takeoverDrain = 500 * time.Millisecond

// How long a start beside an instance that handed the Service IPs back (a
// deleted pod's replacement, starting during the old one's lameduck) leaves
// TCP to kube-dns before its takeover: past the first retransmission (1 s) of
// the SYNs that instance dropped as it shut its listeners, which would
// otherwise be dropped again by the takeover and wait 2 s more.
const afterHandOffWait = 1200 * time.Millisecond

// withholdTCP runs at the start, before the listeners open. The socket match
// cannot tell a listener from an open connection: once the interception and
// our listener both exist, every packet of a connection kube-proxy sent to
// kube-dns (a query in flight) skips conntrack, misses its DNAT, and is reset
// here. So TCP is taken over in steps that let those connections finish,
// unless another instance serves the Service IPs (a surge: kube-dns serves no
// connection) or there is no interception to take (no Service IP, or
// `iptables off`). The TCP interception a dead instance left goes now: it
// would take the connections kube-dns serves over the moment our listeners
// appear; so does the one of an instance still in its lameduck after handing
// the Service IPs back to kube-proxy (a pod deleted and recreated), whose TCP
// listeners are shut.
func (m *manager) withholdTCP() {
	services := m.serviceListen()
	if len(services) == 0 || !m.cfg.FailOpen || len(m.tables) == 0 {
		return
	}
	if serving, err := m.peers.ServingTCP(services); err != nil || serving > 0 {
		return
	}
	m.retransmitWait = 0
	if others, err := m.peers.Others(services); err == nil && others > 0 {
		m.retransmitWait = afterHandOffWait
	}
	m.enter(phaseWithholding)
	for _, t := range m.tables {
		for _, r := range m.removeListed(t, "raw", "PREROUTING", func(r Rule) bool { return r.isOurs() && isServiceTCPInterception(r) }) {
			log.Infof("Removed the TCP interception an earlier instance left, until kube-dns's open connections finish: %s", r)
		}
	}
}

// startTakeover ends the wait after a handed-off instance's SYN drops.
func (m *manager) startTakeover() {
	m.mu.Lock()
	if m.phase != phaseWithholding || m.stopping.Load() {
		m.mu.Unlock()
		return
	}
	m.takeOverTCP()
	m.mu.Unlock()
	m.check(true)
}

// takeOverTCP: our Service IP listeners drop new SYNs, and SYNs only are
// intercepted, so no new connection goes to kube-dns and none opens here while
// the connections kube-dns serves finish. After takeoverDrain, finishTakeover
// intercepts all of TCP and the listeners accept again; the dropped SYNs'
// retransmissions arrive here.
func (m *manager) takeOverTCP() {
	if err := m.sockets.PauseAccepting(m.serviceListen()); err != nil {
		log.Warningf("Taking TCP over from kube-dns at once: its open connections may be reset: %v", err)
		m.enter(phaseServing)
		return
	}
	m.enter(phaseTakingOver)
	m.takeoverTimer = time.AfterFunc(m.takeoverDrain, m.finishTakeover)
}

// finishTakeover ends the takeover's SYN phase; readiness waited for it.
func (m *manager) finishTakeover() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.phase != phaseTakingOver {
		return
	}
	m.completeTakeover()
	log.Infof("Took TCP on %v over from kube-dns, after %v for its open connections to finish", m.serviceListen(), m.takeoverDrain)
	go m.check(false) // readiness
}

// completeTakeover intercepts all of the Service IPs' TCP, then lets their
// listeners accept again. In that order: a connection accepted under the
// SYN-only rule would have the rest of its segments conntracked, DNATed to
// kube-dns and reset there. The connections kube-dns still serves (a slow
// answer, a client keeping its connection) are left to it, each by a rule
// above the interception, until they close.
func (m *manager) completeTakeover() {
	m.takeoverTimer.Stop()
	m.kubeDNSConnections = m.leaveKubeDNSItsConnections()
	m.enter(phaseServing)
	m.rulesOK = m.ensureRules(false)
	if err := m.sockets.ResumeAccepting(m.serviceListen()); err != nil {
		log.Errorf("TCP listeners on %v may still refuse new connections: %v", m.serviceListen(), err)
	}
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

// leaveKubeDNSItsConnections lists the TCP connections to the Service IPs
// that kube-dns serves as the takeover ends, the first maxKubeDNSConnections.
func (m *manager) leaveKubeDNSItsConnections() []kubeDNSConnection {
	open, err := m.kubeDNSConnectionsNow()
	if err != nil {
		log.Warningf("TCP connections kube-dns still serves may be reset: %v", err)
	}
	if len(open) > maxKubeDNSConnections {
		log.Warningf("kube-dns still serves %d TCP connections on %v: the %d beyond the first %d are reset, and their clients reconnect here",
			len(open), m.serviceListen(), len(open)-maxKubeDNSConnections, maxKubeDNSConnections)
		open = open[:maxKubeDNSConnections]
	}
	if len(open) > 0 {
		log.Infof("kube-dns still serves %d TCP connections on %v: they stay with it until they close", len(open), m.serviceListen())
	}
	return open
}

// kubeDNSConnectionsNow lists the TCP connections to the Service IPs that
// kube-dns serves, as conntrack has them.
func (m *manager) kubeDNSConnectionsNow() ([]kubeDNSConnection, error) {
	var open []kubeDNSConnection
	var errs []error
	for _, service := range m.serviceListen() {
		clients, err := m.conntrack.OpenClients(service)
		errs = append(errs, err)
		for _, c := range clients {
			open = append(open, kubeDNSConnection{client: c, service: service})
		}
	}
	return open, errors.Join(errs...)
}

// adoptKubeDNSConnections makes the connections an earlier instance left to
// kube-dns (a surge peer, or one killed since) this one's too: their rules
// stay until conntrack shows them closed, whichever instance checks first.
// At most maxKubeDNSConnections, as a takeover leaves: rules beyond those
// (which no instance writes) are removed as extra by the next sync.
func (m *manager) adoptKubeDNSConnections() {
	defer func() {
		if n := len(m.kubeDNSConnections); n > maxKubeDNSConnections {
			log.Warningf("%d rules leave connections to kube-dns, more than an instance writes: the %d beyond the first %d are removed",
				n, n-maxKubeDNSConnections, maxKubeDNSConnections)
			m.kubeDNSConnections = m.kubeDNSConnections[:maxKubeDNSConnections]
		}
	}()
	for _, t := range m.tables {
		// The whole raw table: the rules are in their chain, or in raw
		// PREROUTING where an earlier version put them.
		out, err := t.List("raw")
		if err != nil {
			m.iptablesError("list", err)
			continue
		}
		listed, err := ParseListing("raw", out)
		if err != nil {
			m.iptablesError("list", err)
			continue
		}
		for _, r := range listed {
			if c, ok := r.kubeDNSConnection(); ok && !slices.Contains(m.kubeDNSConnections, c) {
				m.kubeDNSConnections = append(m.kubeDNSConnections, c)
			}
		}
	}
}

// pruneKubeDNSConnections removes the rules of the connections left to
// kube-dns that have closed since.
func (m *manager) pruneKubeDNSConnections() {
	if len(m.kubeDNSConnections) == 0 {
		return
	}
	open, err := m.kubeDNSConnectionsNow()
	if err != nil {
		return // kept until conntrack can be read
	}
	still := slices.DeleteFunc(slices.Clone(m.kubeDNSConnections), func(c kubeDNSConnection) bool { return !slices.Contains(open, c) })
	if len(still) == len(m.kubeDNSConnections) {
		return
	}
	m.kubeDNSConnections = still
	m.rulesOK = m.ensureRules(false)
	if len(still) == 0 {
		log.Infof("The TCP connections kube-dns served at the takeover have closed")
	}
}
