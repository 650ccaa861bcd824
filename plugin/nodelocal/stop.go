package nodelocal

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// The stop, in order. HandOff, as the stop begins: readiness drops, the
// upstreams are pinned, the stop waits for a replacement, then for an
// instance that is starting, and decides: leave the flows to a peer that
// serves the same addresses, hand the Service IPs back to kube-proxy, or
// leave everything as it is. Shutdown, at the end of lameduck: the checks
// stop, the flows still landing here go to an instance that started
// meanwhile, and, under the instance lock with no peer left, the rules go,
// then the interface; the pins last. Each step is a lifecycle transition
// (lifecycle.go).

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

// How often awaitReplacement looks for a replacement's sockets.
const replacementPoll = 50 * time.Millisecond

// HandOff runs when the process starts to stop, before lameduck. If a peer
// serves the same addresses (a surge upgrade), this instance moves its flows
// to it at once and leaves the interception in place. Otherwise the Service
// IPs' interception is removed so kube-proxy sends new queries to kube-dns,
// and the link-local IP is served through lameduck.
func (m *manager) HandOff() {
	m.ready.beginStop() // before the lock: readiness drops even while a check holds it
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

// pinUpstreams pins the upstreams as a stop begins, before the replacement
// wait. In a surge the successor serves and the Service stays: nothing to pin.
func (m *manager) pinUpstreams() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cfg == nil || len(m.cfg.Upstreams) == 0 || (m.phase != phaseServing && m.phase != phaseReloadPause) {
		return
	}
	if m.noOthers() {
		m.pins.refresh(m.cfg.Upstreams, false)
	}
}

// awaitReplacement waits, up to replacementWait, for another instance to
// open its sockets on our addresses when none has and the stop would hand the
// Service IPs back; awaitStartingPeer then waits for its listeners. All the
// while this instance serves as before.
func (m *manager) awaitReplacement() {
	m.mu.Lock()
	wait, listen := m.waits.replacementWait, slices.Clone(m.cfg.Listen)
	// fail_open off is upstream's behavior: the rules go at once.
	handsBack := (m.phase == phaseServing || m.phase == phaseReloadPause) && m.cfg.Teardown && m.cfg.FailOpen && len(m.services()) > 0
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

// awaitStartingPeer waits until an instance that is starting (a surge pod:
// it holds the instance lock from its setup until its listeners are up) has
// its listeners up. The DaemonSet controller can stop this instance that
// early: both pods' readiness probes reach whichever instance the kernel picks
// on the shared address, so the new pod may be marked ready by this one. A
// handoff decided meanwhile would find the successor on some addresses or none,
// and hand the rest back to kube-proxy or close it with the servers.
func (m *manager) awaitStartingPeer() {
	m.mu.Lock()
	ownStart := m.starts.unlock != nil // the lock is our own: we are the one starting
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
	if services := m.services(); len(services) > 0 && m.cfg.FailOpen && m.rules.socketMatch() {
		err := m.sockets.StopAccepting(services)
		if err != nil {
			log.Warningf("Stopping: TCP connections open at the handoff may be reset: %v", err)
		}
		if !errors.Is(err, errNotShut) {
			next = phaseDraining
		}
	}
	m.enter(next)
	m.applyRules(false)
	log.Infof("Stopping: Service IPs handed back to kube-proxy; the link-local IP is served until the end of lameduck")
}

// Shutdown stops the checks and, unless teardown is off or another instance
// serves the same IPs, removes the rules and then the interface, leaving the
// node as it was before the cache started. The instance lock is held until the
// process exits (after its sockets close), so of two instances stopping at
// once, the second sees the first gone and cleans up: exactly once. Last,
// with no other instance serving, the node condition goes False.
func (m *manager) Shutdown() {
	m.shutDown()
	m.reportStopped()
}

func (m *manager) shutDown() {
	m.ready.beginStop()
	m.loop.halt()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.status != nil {
		defer m.status.close() // last: the teardown can be watched
	}
	m.ready.setInPlace(false)
	if m.phase.handedToKubeProxy() {
		m.leaveToSuccessor()
	}
	// Last: queries that arrive until the interception is gone are forwarded.
	defer m.pins.unpinAll()
	draining := m.phase == phaseDraining
	m.enter(phaseShutDown)
	if m.cfg == nil || !m.cfg.Teardown {
		log.Infof("Teardown skipped: the interface and rules stay in place")
		return
	}
	if _, err := m.peers.Lock(max(time.Until(m.ready.stopDeadline()), 0)); err != nil {
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
		if err := m.sockets.CloseAnswered(m.services()); err != nil {
			log.Warningf("Tearing down: TCP connections still open on %v may lose a query: %v", m.services(), err)
		}
	}
	m.rules.remove()
	if m.cfg.ManageInterface {
		m.iface.remove(m.cfg.Interface)
	}
	log.Infof("Torn down: interception removed")
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
		listening = slices.DeleteFunc(slices.Clone(shared), func(ap netip.AddrPort) bool { return slices.Contains(m.services(), ap) })
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
