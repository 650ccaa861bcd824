package nodelocal

import (
	"net/netip"
	"time"
)

// The start, in order: the instance lock (lockStart), then, before the
// listeners open, the pins an earlier instance left go, the connections it
// left to kube-dns are adopted, and the Service IPs' TCP is withheld
// (prepareStart), and the caches warm up from an instance serving beside
// (WarmUp, warmup.go); once the listeners are up, the lock goes and the rules go
// in (ListenersUp), with the takeover from kube-dns in steps: SYNs only, then
// all of TCP (takeOverTCP, completeTakeover). Each step is a lifecycle
// transition (lifecycle.go).

// How long a starting instance waits for a peer that is tearing down.
const peerLockTimeout = 30 * time.Second

// How long connections that kube-dns serves get to finish at the start: under
// a second, so a SYN dropped meanwhile gets through on its first retransmission.
const takeoverDrain = 500 * time.Millisecond

// How long a start beside an instance that handed the Service IPs back (a
// deleted pod's replacement, starting during the old one's lameduck) leaves
// TCP to kube-dns before its takeover: past the first retransmission (1 s) of
// the SYNs that instance dropped as it shut its listeners, which would
// otherwise be dropped again by the takeover and wait 2 s more.
const afterHandOffWait = 1200 * time.Millisecond

// startState is what the start holds until it is over. The manager's lock
// guards it.
type startState struct {
	// unlock releases the instance lock taken for the start, once the
	// listeners are up: a stopping peer then sees them and leaves things be.
	unlock func()
	// retransmitWait: how long withholding lasts after the listeners are up
	// when a handed-off instance shares the node (0 otherwise).
	retransmitWait time.Duration
	takeoverTimer  *time.Timer
	// takeover are the addresses whose TCP kube-dns serves as the start
	// finds them, taken over in steps.
	takeover []netip.AddrPort
}

// lockStart takes the instance lock as the process starts: it waits for a
// peer that is tearing down, and keeps peers from tearing down until our
// listeners are up (ListenersUp releases it).
func (m *manager) lockStart() {
	unlock, err := m.peers.Lock(peerLockTimeout)
	if err != nil {
		log.Warningf("Starting without the instance lock: %v", err)
	}
	m.starts.unlock = unlock
	m.enter(phaseStarting)
}

// prepareStart runs once the interface is up, before the listeners open.
func (m *manager) prepareStart() {
	m.pins.sweepAtStart()
	if m.noOthers() {
		m.pins.sweep()
	}
	m.conns.adopt(m.rules.list("raw")) // the whole table: earlier versions put them in raw PREROUTING
	m.withholdTCP()
}

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
	if !m.cfg.FailOpen || !m.rules.any() {
		return
	}
	var takeover []netip.AddrPort
	for _, ap := range m.fromKubeDNS() {
		serving, err := m.peers.ServingTCP([]netip.AddrPort{ap})
		if err != nil {
			return
		}
		if serving == 0 {
			takeover = append(takeover, ap)
		}
	}
	if len(takeover) == 0 {
		return
	}
	m.starts.takeover = takeover
	m.starts.retransmitWait = 0
	if others, err := m.peers.Others(takeover); err == nil && others > 0 {
		m.starts.retransmitWait = afterHandOffWait
	}
	m.enter(phaseWithholding)
	for _, r := range m.rules.removeMatching("raw", "PREROUTING", func(r Rule) bool { return r.isOurs() && isTCPInterceptionOf(r, takeover) }) {
		log.Infof("Removed the TCP interception an earlier instance left, until kube-dns's open connections finish: %s", r)
	}
}

// ListenersUp is called once the DNS servers listen, after the first start
// and after each reload: interception may start.
func (m *manager) ListenersUp() {
	m.mu.Lock()
	if m.phase == phaseNew {
		m.mu.Unlock()
		return
	}
	// Published before the start lock goes: a stopping peer waits for that
	// lock, then counts only sockets a peer published.
	if err := m.peers.Publish(m.cfg.Listen); err != nil {
		log.Warningf("A stopping peer may not recognise this instance's sockets, and tear down under it: %v", err)
	}
	if m.starts.unlock != nil {
		m.starts.unlock()
		m.starts.unlock = nil
	}
	if !m.ready.stopping() {
		switch m.phase {
		case phaseStarting:
			m.enter(phaseServing)
		case phaseWithholding:
			if m.starts.retransmitWait > 0 {
				m.starts.takeoverTimer = time.AfterFunc(m.starts.retransmitWait, m.startTakeover)
			} else {
				m.takeOverTCP()
			}
		}
	}
	m.mu.Unlock()
	m.check(true) // the rules go in, with the takeover's first step
}

// startTakeover ends the wait after a handed-off instance's SYN drops.
func (m *manager) startTakeover() {
	m.mu.Lock()
	if m.phase != phaseWithholding || m.ready.stopping() {
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
	if err := m.sockets.PauseAccepting(m.starts.takeover); err != nil {
		log.Warningf("Taking TCP over from kube-dns at once: its open connections may be reset: %v", err)
		m.enter(phaseServing)
		return
	}
	m.enter(phaseTakingOver)
	m.starts.takeoverTimer = time.AfterFunc(m.waits.takeoverDrain, m.finishTakeover)
}

// finishTakeover ends the takeover's SYN phase; readiness waited for it.
func (m *manager) finishTakeover() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.phase != phaseTakingOver {
		return
	}
	m.completeTakeover()
	log.Infof("Took TCP on %v over from kube-dns, after %v for its open connections to finish", m.starts.takeover, m.waits.takeoverDrain)
	go m.check(false) // readiness
}

// completeTakeover intercepts all of the Service IPs' TCP, then lets their
// listeners accept again. In that order: a connection accepted under the
// SYN-only rule would have the rest of its segments conntracked, DNATed to
// kube-dns and reset there. The connections kube-dns still serves (a slow
// answer, a client keeping its connection) are left to it, each by a rule
// above the interception, until they close.
func (m *manager) completeTakeover() {
	m.starts.takeoverTimer.Stop()
	m.conns.leave(m.starts.takeover)
	m.enter(phaseServing)
	m.applyRules(false)
	if err := m.sockets.ResumeAccepting(m.starts.takeover); err != nil {
		log.Errorf("TCP listeners on %v may still refuse new connections: %v", m.starts.takeover, err)
	}
}
