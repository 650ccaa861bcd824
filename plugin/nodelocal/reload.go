package nodelocal

import (
	"net/netip"
	"slices"
	"time"
)

// The reload: CoreDNS starts the new servers on the listeners of the old
// ones, then stops the old ones. Meanwhile the listeners refuse new TCP
// connections, and the connections the old servers hold are kept open past
// their stop and carried over to the new servers (carryover.go).

// The longest a reload keeps new TCP connections waiting: under a second, so a
// client's SYN refused at the start of the pause gets through on its first
// retransmission.
const maxReloadPause = 700 * time.Millisecond

// reloadPause owns a reload's pause: the listeners refusing new
// connections, since when, the old servers' connections held open, and the
// timer that ends the pause at the latest. The manager's lock guards it.
type reloadPause struct {
	sockets Sockets
	paused  []netip.AddrPort // nil: no pause
	since   time.Time
	held    Held
	timer   *time.Timer
}

// begin pauses the listeners on listen and holds their connections; timeout
// runs if the pause is not over by maxReloadPause.
func (p *reloadPause) begin(listen []netip.AddrPort, timeout func()) {
	p.paused, p.since = slices.Clone(listen), time.Now()
	p.timer = time.AfterFunc(maxReloadPause, timeout)
	if err := p.sockets.PauseAccepting(p.paused); err != nil {
		log.Warningf("Reload: the old servers may still accept a TCP connection and close it: %v", err)
	}
	held, err := p.sockets.HoldConnections(p.paused)
	if err != nil {
		log.Warningf("Reload: the old servers' TCP connections close with them, their clients' next queries unanswered: %v", err)
	}
	p.held = held
}

// end lets the listeners accept again; it reports whether they were paused.
func (p *reloadPause) end() bool {
	if p.paused == nil {
		return false
	}
	p.timer.Stop()
	if err := p.sockets.ResumeAccepting(p.paused); err != nil {
		log.Errorf("Reload: TCP listeners may still refuse new connections: %v", err)
	} else {
		log.Infof("Reload: new TCP connections waited %v for the new servers", time.Since(p.since).Round(time.Millisecond))
	}
	p.paused = nil
	return true
}

// takeHeld hands over the held connections, once.
func (p *reloadPause) takeHeld() Held {
	held := p.held
	p.held = nil
	return held
}

// PauseForReload runs as a reload's new servers are about to share the
// listeners: the old servers must accept no connection after this, and those
// they hold must outlive them (CoreDNS's server shutdown closes every
// connection, read from or not). New connections wait until ResumeAccepting,
// after the old servers stopped, or maxReloadPause at most.
func (m *manager) PauseForReload() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.phase != phaseServing || m.ready.stopping() {
		return // the first start, already paused, the start still taking TCP over, or stopping
	}
	m.enter(phaseReloadPause)
	m.pause.begin(m.cfg.Listen, m.ResumeAccepting)
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
	return m.pause.takeHeld()
}

// ResumeAccepting ends a reload's pause, also one a stop began in.
func (m *manager) ResumeAccepting() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pause.end() && m.phase == phaseReloadPause {
		m.enter(phaseServing)
	}
}
