package nodelocal

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// The handoff protocol: how an instance starts beside a dying one (the takeover
// from kube-dns is in takeover.go), lets a reload move its listeners, and
// gives its flows to a peer or back to kube-proxy when it stops. Each step is
// a lifecycle transition (lifecycle.go); the rules each phase wants are in
// reconcile.go.

// How long a starting instance waits for a peer that is tearing down.
const peerLockTimeout = 30 * time.Second

// The stop's own waits (for a replacement, for a starting peer, for the lock
// before the teardown) end within this much of its start, whatever another
// process holds: kubelet's grace period is 30 s, and the servers' stop and
// the exit come after.
const stopBudget = 20 * time.Second

// How long a stopping instance waits for one that is starting to have its
// listeners up: a few seconds at most, within the lameduck's share of the
// grace period.
const successorStartTimeout = 5 * time.Second

// How long a stopping instance that no other serves beside waits for a
// replacement to start before it hands the Service IPs back to kube-proxy:
// the DaemonSet recreates a deleted or evicted pod at once, and a replacement
// that finds this one still serving starts as in a surge, with no takeover
// from kube-dns to reset the connections kube-dns serves meanwhile. A stop
// that none follows (an uninstall, a node shutting down) hands back this much
// later, still within the grace period.
const replacementWait = 3 * time.Second

// The longest a reload keeps new TCP connections waiting: under a second, so a
// client's SYN refused at the start of the pause gets through on its first
// retransmission.
const maxReloadPause = 700 * time.Millisecond

// lockStart takes the instance lock as the process starts: it waits for a
// peer that is tearing down, and keeps peers from tearing down until our
// listeners are up (ListenersUp releases it).
func (m *manager) lockStart() {
	unlock, err := m.peers.Lock(peerLockTimeout)
	if err != nil {
		log.Warningf("Starting without the instance lock: %v", err)
	}
	m.startUnlock = unlock
	m.enter(phaseStarting)
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
	if m.startUnlock != nil {
		m.startUnlock()
		m.startUnlock = nil
	}
	if !m.stopping.Load() {
		switch m.phase {
		case phaseStarting:
			m.enter(phaseServing)
		case phaseWithholding:
			if m.retransmitWait > 0 {
				m.takeoverTimer = time.AfterFunc(m.retransmitWait, m.startTakeover)
			} else {
				m.takeOverTCP()
			}
		}
	}
	m.mu.Unlock()
	m.check(true) // the rules go in, with the takeover's first step
}

// PauseForReload runs as a reload's new servers are about to share the
// listeners: the old servers must accept no connection after this, and those
// they hold must outlive them (CoreDNS's server shutdown closes every
// connection, read from or not). New connections wait until ResumeAccepting,
// after the old servers stopped, or maxReloadPause at most.
func (m *manager) PauseForReload() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.phase != phaseServing || m.stopping.Load() {
		return // the first start, already paused, the start still taking TCP over, or stopping
	}
	m.enter(phaseReloadPause)
	m.paused, m.pausedAt = slices.Clone(m.cfg.Listen), time.Now()
	m.resumeTimer = time.AfterFunc(maxReloadPause, m.ResumeAccepting)
	if err := m.sockets.PauseAccepting(m.paused); err != nil {
		log.Warningf("Reload: the old servers may still accept a TCP connection and close it: %v", err)
	}
	held, err := m.sockets.HoldConnections(m.paused)
	if err != nil {
		log.Warningf("Reload: the old servers' TCP connections close with them, their clients' next queries unanswered: %v", err)
	}
	m.held = held
}

// OldServersStopped ends a reload: new connections are accepted again, and the
// connections the old servers held are carried over to the new ones.
func (m *manager) OldServersStopped() {
	m.ResumeAccepting()
	if held := m.takeHeld(); held != nil {
		log.Infof("Reload: %d open TCP connections carried over to the new servers", held.CarryOver())
	}
}

// ReloadFailed ends a reload whose new servers did not start: the old servers
// go on with their connections.
func (m *manager) ReloadFailed() {
	m.ResumeAccepting()
	if held := m.takeHeld(); held != nil {
		held.Release()
	}
}

func (m *manager) takeHeld() Held {
	m.mu.Lock()
	defer m.mu.Unlock()
	held := m.held
	m.held = nil
	return held
}

// ResumeAccepting ends a reload's pause, also one a stop began in.
func (m *manager) ResumeAccepting() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.paused == nil {
		return
	}
	m.resumeTimer.Stop()
	if err := m.sockets.ResumeAccepting(m.paused); err != nil {
		log.Errorf("Reload: TCP listeners may still refuse new connections: %v", err)
	} else {
		log.Infof("Reload: new TCP connections waited %v for the new servers", time.Since(m.pausedAt).Round(time.Millisecond))
	}
	m.paused = nil
	if m.phase == phaseReloadPause {
		m.enter(phaseServing)
	}
}

// HandOff runs when the process starts to stop, before lameduck, and readiness
// drops. If a peer serves the same addresses (a surge upgrade), this instance
// moves its flows to it at once and leaves the interception in place.
// Otherwise the Service IPs' interception is removed so kube-proxy sends new
// queries to kube-dns, and the link-local IP is served through lameduck.
func (m *manager) HandOff() {
	m.beginStop()
	m.pinUpstreams()
	m.awaitReplacement()
	m.awaitStartingPeer()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.phase == phaseTakingOver {
		m.completeTakeover() // what follows expects the rules and listeners of a running instance
	}
	if m.phase != phaseServing && m.phase != phaseReloadPause {
		return // the listeners are not up yet, or the stop already began
	}
	shared, err := m.servedByOthers()
	if err != nil {
		log.Warningf("Stopping: leaving everything in place: %v", err)
		m.enter(phaseStopping)
		return
	}
	switch {
	case len(shared) > 0:
		m.leaveTo(shared)
	case m.cfg.Teardown:
		m.handBackToKubeProxy()
	default:
		m.enter(phaseStopping)
	}
}

// beginStop marks the stop, before the lock: readiness drops at once, and
// the stop's waits count from here.
func (m *manager) beginStop() {
	if !m.stopping.Swap(true) {
		m.stopBegan.Store(time.Now().UnixNano())
	}
}

// stopDeadline is when the stop's own waits must have ended.
func (m *manager) stopDeadline() time.Time {
	return time.Unix(0, m.stopBegan.Load()).Add(stopBudget)
}

// awaitReplacement waits, up to replacementWait, for another instance to
// open its sockets on our addresses when none has and the stop would hand the
// Service IPs back; awaitStartingPeer then waits for its listeners. All the
// while this instance serves as before.
func (m *manager) awaitReplacement() {
	m.mu.Lock()
	wait, listen := m.replacementWait, slices.Clone(m.cfg.Listen)
	// fail_open off is upstream's behavior: the rules go at once.
	handsBack := (m.phase == phaseServing || m.phase == phaseReloadPause) && m.cfg.Teardown && m.cfg.FailOpen && len(m.serviceListen()) > 0
	m.mu.Unlock()
	if !handsBack || wait <= 0 {
		return
	}
	start := time.Now()
	for {
		others, err := m.peers.Others(listen)
		if err != nil || others > 0 {
			if err == nil {
				log.Infof("Stopping: a replacement opened its sockets after %v; it takes the flows over", time.Since(start).Round(time.Millisecond))
			}
			return
		}
		if time.Since(start) >= wait {
			log.Infof("Stopping: no replacement started within %v; handing the Service IPs back to kube-proxy", wait)
			return
		}
		time.Sleep(replacementPoll)
	}
}

// How often awaitReplacement looks for a replacement's sockets.
const replacementPoll = 50 * time.Millisecond

// awaitStartingPeer waits until an instance that is starting (a surge pod:
// it holds the instance lock from its setup until its listeners are up) has
// its listeners up. The DaemonSet controller can stop this instance that
// early: both pods' readiness probes reach whichever instance the kernel picks
// on the shared address, so the new pod may be marked ready by this one. A
// handoff decided meanwhile would find the successor on some addresses or none,
// and hand the rest back to kube-proxy or close it with the servers.
func (m *manager) awaitStartingPeer() {
	m.mu.Lock()
	ownStart := m.startUnlock != nil // the lock is our own: we are the one starting
	m.mu.Unlock()
	if ownStart {
		return
	}
	start := time.Now()
	unlock, err := m.peers.Lock(successorStartTimeout)
	if err != nil {
		log.Warningf("Stopping: an instance that is starting did not have its listeners up within %v; handing off to what serves now: %v", successorStartTimeout, err)
		return
	}
	unlock()
	if waited := time.Since(start); waited > 100*time.Millisecond {
		log.Infof("Stopping: waited %v for the instance that is starting to listen", waited.Round(time.Millisecond))
	}
}

// leaveTo hands the flows on addresses a peer also serves to that peer, and
// leaves every rule in place for it.
func (m *manager) leaveTo(shared []netip.AddrPort) {
	m.enter(phaseLeaving)
	m.moveFlows(shared, shared)
	log.Infof("Stopping: another instance serves %v; new queries go to it, and the interception stays for it", shared)
}

// handBackToKubeProxy removes the Service IPs' interception, so kube-proxy
// sends new queries to kube-dns. Only a socket-matched interception can hold
// open connections without a listener: then the TCP listeners there are
// drained and shut and their interception stays (draining). An unconditional
// one is removed whole, and a shut listener would refuse the connections that
// arrive before the removal.
func (m *manager) handBackToKubeProxy() {
	next := phaseHandedOff
	if services := m.serviceListen(); len(services) > 0 && m.cfg.FailOpen && !m.noSocketMatch {
		err := m.sockets.StopAccepting(services)
		if err != nil {
			log.Warningf("Stopping: TCP connections open at the handoff may be reset: %v", err)
		}
		if !errors.Is(err, errNotShut) {
			next = phaseDraining
		}
	}
	m.enter(next)
	for f, t := range m.tables {
		m.syncRules(f, t, m.desiredRules()[f], false)
	}
	log.Infof("Stopping: Service IPs handed back to kube-proxy; the link-local IP is served until the end of lameduck")
}

// leaveToSuccessor runs at the end of lameduck, just before the servers stop,
// after a handoff to kube-proxy: an instance that started meanwhile (a
// deleted pod's replacement) takes the flows still landing here, as in a
// surge, so the servers' stop loses none of them.
func (m *manager) leaveToSuccessor() {
	shared, err := m.servedByOthers()
	if err != nil || len(shared) == 0 {
		return
	}
	// Draining shut the Service IPs' TCP listeners at the handoff.
	listening := shared
	if m.phase == phaseDraining {
		listening = slices.DeleteFunc(slices.Clone(shared), func(ap netip.AddrPort) bool { return slices.Contains(m.serviceListen(), ap) })
	}
	m.moveFlows(listening, shared)
	log.Infof("Stopping: an instance that started meanwhile serves %v; it takes the queries still coming here", shared)
	// The exit follows: it would close the connections accepted just before.
	if err := m.sockets.WaitAnswered(shared); err != nil {
		log.Warningf("Stopping: TCP connections may close unanswered at the exit: %v", err)
	}
}

// servedByOthers lists the listen addresses another instance also serves.
func (m *manager) servedByOthers() ([]netip.AddrPort, error) {
	var shared []netip.AddrPort
	for _, ap := range m.cfg.Listen {
		others, err := m.peers.Others([]netip.AddrPort{ap})
		if err != nil {
			return nil, fmt.Errorf("cannot tell whether another instance serves %s: %w", ap, err)
		}
		if others > 0 {
			shared = append(shared, ap)
		}
	}
	return shared, nil
}

// moveFlows sends the flows still landing on this instance's sockets to the
// other instance on the same addresses: the TCP listeners on tcp drain their
// queues and shut, the UDP sockets on udp stop taking new datagrams once
// those queued are read. Open connections finish here.
func (m *manager) moveFlows(tcp, udp []netip.AddrPort) {
	if len(tcp) > 0 {
		if err := m.sockets.StopAccepting(tcp); err != nil {
			log.Warningf("Stopping: TCP connections queued here may be reset when the process exits: %v", err)
		}
	}
	if err := m.sockets.LeaveUDP(udp); err != nil {
		log.Warningf("Stopping: UDP queries queued here may be lost when the process exits: %v", err)
	}
}

// Shutdown stops the checks and, unless teardown is off or another instance
// serves the same IPs, removes the rules and then the interface, leaving the
// node as it was before the cache started. The instance lock is held until the
// process exits (after its sockets close), so of two instances stopping at
// once, the second sees the first gone and cleans up: exactly once.
func (m *manager) Shutdown() {
	m.beginStop()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stop != nil {
		close(m.stop)
		m.stop = nil
	}
	m.inPlace.Store(false)
	interceptionActive.Set(0)
	if m.phase.handedToKubeProxy() {
		m.leaveToSuccessor()
	}
	// Last: queries that arrive until the interception is gone are forwarded.
	defer m.unpinUpstreams()
	draining := m.phase == phaseDraining
	m.enter(phaseShutDown)
	if m.cfg == nil || !m.cfg.Teardown {
		log.Infof("Teardown skipped: the interface and rules stay in place")
		return
	}
	if _, err := m.peers.Lock(max(time.Until(m.stopDeadline()), 0)); err != nil {
		log.Warningf("Tearing down without the instance lock, which another instance still held at the end of the stop's %v: %v", stopBudget, err)
	}
	if others, err := m.peers.Remaining(m.cfg.Listen); err != nil || others > 0 {
		log.Infof("Teardown skipped: another instance serves here (%d sockets, %v)", others, err)
		return
	}
	if draining {
		// The Service IPs' TCP interception still holds the connections
		// opened before the handoff: closed first, their clients send their
		// next query on a new connection, to kube-dns. Without it, it would
		// go, mid-connection, to kube-dns, which knows no such connection.
		if err := m.sockets.CloseAnswered(m.serviceListen()); err != nil {
			log.Warningf("Tearing down: TCP connections still open on %v may lose a query: %v", m.serviceListen(), err)
		}
	}
	m.removeRules()
	if m.cfg.ManageInterface {
		m.removeInterface()
	}
	m.rulesOK = false
	log.Infof("Torn down: interception removed")
}
