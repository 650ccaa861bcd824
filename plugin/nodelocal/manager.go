package nodelocal

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// manager owns the node's interception state for the whole process. CoreDNS
// runs setup once per server block and again on every reload, so every entry
// point is idempotent and the state lives here, not in plugin instances.
type manager struct {
	links     Links
	newTables func(Backend, Family) (RuleTables, error)
	detect    func() (Backend, error)
	probe     func(netip.AddrPort) error
	peers     Peers
	sockets   Sockets

	mu         sync.Mutex
	cfg        *Config
	backend    Backend // cfg.Backend with auto resolved
	tables     map[Family]RuleTables
	ownIPs     map[netip.Addr]bool   // addresses this process put on the interface
	foreignIPs map[netip.Addr]string // listen addresses held by another link: left alone
	listening  bool                  // the DNS listeners are up: rules may go in
	linkMade   bool                  // the interface was in place once: a new one is a repair
	rulesMade  map[Family]bool       // the rules were in place once: a new one is a repair
	rulesOK    bool                  // the last rule check found every rule in place
	generation RulesetGeneration
	// verified is what the last check that listed the rules found complete,
	// unchanged and as desired: the ruleset generation read before the listing
	// and the desired rules. A check finding both the same lists nothing.
	verified    *verifiedRules
	genErrShown bool          // a failed generation read is logged once
	stop        chan struct{} // closes the check loop; nil when not running
	wake        chan struct{}
	// startUnlock releases the instance lock taken for the start, once the
	// listeners are up: a stopping peer then sees them and leaves things be.
	startUnlock   func()
	handedOff     bool // the Service IPs' interception was handed back to kube-proxy
	tcpDrains     bool // handed off, the Service IPs' TCP listeners are shut: their interception now holds open connections only
	noSocketMatch bool // the kernel refused -m socket: unconditional interception
	// paused are the listen addresses whose TCP listeners refuse new
	// connections while a reload moves them to the new servers.
	paused      []netip.AddrPort
	pausedAt    time.Time
	resumeTimer *time.Timer
	// takeover is how far the start has taken the Service IPs' TCP over
	// from kube-dns (takeOverTCP); takeoverDrain how long it waits.
	takeover      takeoverPhase
	takeoverDrain time.Duration
	takeoverTimer *time.Timer

	inPlace   atomic.Bool
	answering atomic.Bool
	stopping  atomic.Bool
}

// How long an instance waits for a peer that is starting or stopping.
const peerLockTimeout = 30 * time.Second

// The longest a reload keeps new TCP connections waiting: under a second, so a
// client's SYN refused at the start of the pause gets through on its first
// retransmission.
const maxReloadPause = 700 * time.Millisecond

// takeoverPhase is how far a starting instance has taken the Service IPs'
// TCP over from kube-dns. The socket match cannot tell a listener from an open
// connection: once the interception and our listener both exist, every packet
// of a connection kube-proxy sent to kube-dns (a query in flight) skips
// conntrack, misses its DNAT, and is reset here. So TCP is taken in steps that
// let those connections finish.
type takeoverPhase int

const (
	takeoverDone     takeoverPhase = iota
	takeoverWithheld               // no TCP interception on the Service IPs: kube-dns serves them
	takeoverSYNs                   // SYNs only are intercepted, and our listeners drop them
)

// How long connections that kube-dns serves get to finish at the start: under
// a second, so a SYN dropped meanwhile gets through on its first retransmission.
const takeoverDrain = 500 * time.Millisecond

func newManager(links Links, newTables func(Backend, Family) (RuleTables, error), generation RulesetGeneration, detect func() (Backend, error), probe func(netip.AddrPort) error, peers Peers, sockets Sockets) *manager {
	return &manager{
		links: links, newTables: newTables, generation: generation, detect: detect, probe: probe, peers: peers, sockets: sockets,
		ownIPs: map[netip.Addr]bool{}, foreignIPs: map[netip.Addr]string{}, rulesMade: map[Family]bool{},
		wake: make(chan struct{}, 1), takeoverDrain: takeoverDrain,
	}
}

// theManager is the process-wide manager of the real node.
var theManager = newManager(netlinkLinks{},
	func(b Backend, f Family) (RuleTables, error) { return newIPTablesCmd(b, f) },
	nftGeneration,
	func() (Backend, error) { return DetectBackend(listWithBinary) },
	probeDNS,
	netnsPeers{name: "instance"},
	ownSockets{})

// Apply makes cfg the desired state and puts the interface in place at once,
// so the listeners can bind its addresses. Rules follow once they listen.
func (m *manager) Apply(cfg *Config) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	starting := m.cfg == nil
	if starting {
		// The process starts: wait for a peer that is tearing down, and keep
		// peers from tearing down until our listeners are up.
		unlock, err := m.peers.Lock(peerLockTimeout)
		if err != nil {
			log.Warningf("Starting without the instance lock: %v", err)
		}
		m.startUnlock = unlock
	}
	if !cfg.equal(m.cfg) {
		if err := m.setConfig(cfg); err != nil {
			return err
		}
	}
	if err := m.ensureInterface(); err != nil {
		return err
	}
	if starting {
		m.withholdTCP()
	}
	if m.listening {
		m.ensureRules(false)
	}
	m.startLoop()
	return nil
}

func (m *manager) setConfig(cfg *Config) error {
	if cfg.Backend != m.cfgBackend() || m.tables == nil {
		backend := cfg.Backend
		if backend == BackendAuto {
			var err error
			if backend, err = m.detect(); err != nil {
				return err
			}
			log.Infof("iptables backend: %s (auto-detected from where the node's kube rules live)", backend)
		}
		tables := map[Family]RuleTables{}
		if backend != BackendOff {
			for _, f := range cfg.Families() {
				t, err := m.newTables(backend, f)
				if err != nil {
					return err
				}
				tables[f] = t
			}
		}
		m.backend, m.tables = backend, tables
	}
	// Addresses of an earlier config that are no longer listened on.
	if m.cfg != nil && m.cfg.ManageInterface {
		for ip := range m.ownIPs {
			if !slices.Contains(cfg.IPs(), ip) || cfg.Interface != m.cfg.Interface {
				if err := m.links.DeleteAddress(m.cfg.Interface, ip); err != nil {
					log.Warningf("Could not remove %s, no longer listened on: %v", ip, err)
				}
				delete(m.ownIPs, ip)
			}
		}
	}
	m.cfg = cfg
	m.answering.Store(false)
	return nil
}

func (m *manager) cfgBackend() Backend {
	if m.cfg == nil {
		return ""
	}
	return m.cfg.Backend
}

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

// desiredRules is the rule set for the current config and shutdown state.
func (m *manager) desiredRules() map[Family][]Rule {
	failOpen := m.cfg.FailOpen && !m.noSocketMatch
	rules := DesiredRules(m.interceptedListen(), m.cfg.HealthPort, failOpen)
	if m.takeover != takeoverDone && failOpen {
		for f, rs := range rules {
			var kept []Rule
			for _, r := range rs {
				if isServiceTCPInterception(r) {
					if m.takeover == takeoverWithheld {
						continue
					}
					r = r.synOnly()
				}
				kept = append(kept, r)
			}
			rules[f] = kept
		}
	}
	if m.handedOff {
		keepTCP := m.tcpDrains && failOpen
		for f, rs := range rules {
			rules[f] = slices.DeleteFunc(rs, func(r Rule) bool { return isHandedOff(r) && !(keepTCP && r.proto() == "tcp") })
		}
	}
	return rules
}

// isHandedOff: on stop, the interception of Service IPs (not link-local ones)
// goes first, so kube-proxy sends new queries to kube-dns while this instance
// still answers what it has and serves the link-local IP through lameduck.
// The TCP interception stays once this instance's TCP listeners on those IPs
// are shut: its socket match then holds only the connections already open, so
// they finish here instead of being picked up mid-stream by conntrack, DNATed
// and reset.
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

// serviceListen are the intercepted listen addresses that are Service IPs.
func (m *manager) serviceListen() []netip.AddrPort {
	return slices.DeleteFunc(m.interceptedListen(), func(ap netip.AddrPort) bool { return ap.Addr().IsLinkLocalUnicast() })
}

// withholdTCP starts the takeover, before the listeners open, unless another
// instance serves the Service IPs (a surge: kube-dns serves no connection) or
// there is no interception to take (no Service IP, or `iptables off`).
// The TCP interception a dead instance left goes now: it would take the
// connections kube-dns serves over the moment our listeners appear.
func (m *manager) withholdTCP() {
	services := m.serviceListen()
	if len(services) == 0 || !m.cfg.FailOpen || len(m.tables) == 0 {
		return
	}
	if others, err := m.peers.Others(services); err != nil || others > 0 {
		return
	}
	m.takeover = takeoverWithheld
	for _, t := range m.tables {
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
			if !r.isOurs() || !isServiceTCPInterception(r) {
				continue
			}
			if err := t.Delete(r); err != nil {
				m.iptablesError("delete "+r.String(), err)
				continue
			}
			log.Infof("Removed the TCP interception an earlier instance left, until kube-dns's open connections finish: %s", r)
		}
	}
}

// takeOverTCP runs once the listeners are up, before the rules go in: our
// Service IP listeners drop new SYNs, and SYNs only are intercepted, so no
// new connection goes to kube-dns and none opens here while the connections
// kube-dns serves finish. After takeoverDrain, finishTakeover intercepts all
// of TCP and the listeners accept again; the dropped SYNs' retransmissions
// arrive here.
func (m *manager) takeOverTCP() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.takeover != takeoverWithheld || m.stopping.Load() {
		return
	}
	if err := m.sockets.PauseAccepting(m.serviceListen()); err != nil {
		log.Warningf("Taking TCP over from kube-dns at once: its open connections may be reset: %v", err)
		m.takeover = takeoverDone
	} else {
		m.takeover = takeoverSYNs
		m.takeoverTimer = time.AfterFunc(m.takeoverDrain, m.finishTakeover)
	}
}

// finishTakeover ends the takeover's SYN phase; readiness waited for it.
func (m *manager) finishTakeover() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.takeover != takeoverSYNs {
		return
	}
	m.completeTakeover()
	log.Infof("Took TCP on %v over from kube-dns, after %v for its open connections to finish", m.serviceListen(), m.takeoverDrain)
	go m.check(false) // readiness
}

// completeTakeover intercepts all of the Service IPs' TCP, then lets their
// listeners accept again. In that order: a connection accepted under the
// SYN-only rule would have the rest of its segments conntracked, DNATed to
// kube-dns and reset there.
func (m *manager) completeTakeover() {
	m.takeoverTimer.Stop()
	m.takeover = takeoverDone
	m.rulesOK = m.ensureRules(false)
	if err := m.sockets.ResumeAccepting(m.serviceListen()); err != nil {
		log.Errorf("TCP listeners on %v may still refuse new connections: %v", m.serviceListen(), err)
	}
}

// ruleTables are the tables the rule set lives in.
var ruleTables = []string{"raw", "filter"}

// syncRules lists a family's rules and makes them desired; it reports whether
// every call succeeded and whether it changed anything.
func (m *manager) syncRules(f Family, t RuleTables, desired []Rule, repair bool) (ok, changed bool) {
	var listed []Rule
	for _, table := range ruleTables {
		out, err := t.List(table)
		if err == nil {
			var rs []Rule
			rs, err = ParseListing(table, out)
			listed = append(listed, rs...)
		}
		if err != nil {
			m.iptablesError("list", err)
			return false, false
		}
	}
	changes := DiffRules(desired, listed)
	ok, changed = true, len(changes.Add)+len(changes.Delete) > 0
	// The interception goes in last: once it steers a pod's flow here, the
	// replies must already skip conntrack, or a reply whose reverse tuple
	// matches the flow's earlier DNAT entry (to kube-dns) is dropped as a
	// conntrack clash.
	slices.SortStableFunc(changes.Add, func(a, b Rule) int { return boolToInt(a.isInterception()) - boolToInt(b.isInterception()) })
	// Adds before deletes: replacing a rule (upstream's unconditional one by
	// ours) never leaves a moment without interception.
	for _, r := range changes.Add {
		if err := t.Insert(r); err != nil {
			if slices.Contains(r.Args, "socket") && !m.noSocketMatch {
				m.noSocketMatch = true
				log.Errorf("The kernel refused the socket match (%v): interception will not fail open if the cache dies; using upstream's unconditional rule", err)
				ok, _ := m.syncRules(f, t, m.desiredRules()[f], repair)
				return ok, true
			}
			m.iptablesError("insert "+r.String(), err)
			ok = false
			continue
		}
		if repair && m.rulesMade[f] {
			log.Warningf("Rule was missing; added it again: %s", r)
			repairs.WithLabelValues(repairRule).Inc()
		}
	}
	for _, r := range changes.Delete {
		if err := t.Delete(r); err != nil {
			m.iptablesError("delete "+r.String(), err)
			ok = false
			continue
		}
		log.Infof("Removed extra or stale rule: %s", r)
		if repair {
			repairs.WithLabelValues(repairRule).Inc()
		}
	}
	if ok && len(desired) > 0 && !m.rulesMade[f] {
		log.Infof("Installed %d IPv%d iptables rules (%s backend)", len(desired), f, m.backend)
	}
	m.rulesMade[f] = m.rulesMade[f] || ok
	return ok, changed
}

func (m *manager) iptablesError(what string, err error) {
	kind := errIPTables
	if isLockError(err) {
		kind = errIPTablesLock
	}
	setupErrors.WithLabelValues(kind).Inc()
	log.Errorf("iptables %s: %v", what, err)
}

// ListenersUp is called once the DNS servers listen: interception may start.
func (m *manager) ListenersUp() {
	m.mu.Lock()
	if m.cfg == nil {
		m.mu.Unlock()
		return
	}
	m.listening = true
	if m.startUnlock != nil {
		m.startUnlock()
		m.startUnlock = nil
	}
	m.mu.Unlock()
	m.takeOverTCP() // so that the rules go in with its first step
	m.check(true)
}

// check puts everything right; link events check only the interface, the
// periodic check the rules too (a listing, one iptables process per table,
// when the ruleset may have changed).
func (m *manager) check(withRules bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cfg == nil || m.stop == nil {
		return // never applied, or torn down
	}
	ifaceOK := true
	if err := m.ensureInterface(); err != nil {
		log.Errorf("Interface check: %v", err)
		ifaceOK = false
	}
	if withRules && m.listening {
		m.rulesOK = m.ensureRules(true)
	}
	// A link event checks the interface only; the rules' state is the last check's.
	inPlace := ifaceOK && m.rulesOK && m.listening && m.takeover == takeoverDone
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

// Ready reports whether interception is in place and the cache answers on it.
func (m *manager) Ready() bool {
	return m.inPlace.Load() && m.answering.Load() && !m.stopping.Load()
}

// PauseForReload runs as a reload's new servers are about to share the
// listeners: the old servers must not accept a connection they would then
// close unread when they stop (CoreDNS's server shutdown closes connections it
// has not read from). New connections wait until ResumeAccepting, after the
// old servers stopped, or maxReloadPause at most.
func (m *manager) PauseForReload() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cfg == nil || !m.listening || m.paused != nil || m.stopping.Load() || m.takeover != takeoverDone {
		return // the first start, already paused, or the start still taking TCP over
	}
	m.paused, m.pausedAt = slices.Clone(m.cfg.Listen), time.Now()
	m.resumeTimer = time.AfterFunc(maxReloadPause, m.ResumeAccepting)
	if err := m.sockets.PauseAccepting(m.paused); err != nil {
		log.Warningf("Reload: a TCP connection accepted by the old servers may be closed unanswered: %v", err)
	}
}

// ResumeAccepting ends a reload's pause.
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
}

// HandOff runs when the process starts to stop, before lameduck, and readiness
// drops. If a peer serves the same addresses (a surge upgrade), this instance
// moves its flows to it at once and leaves the interception in place.
// Otherwise the Service IPs' interception is removed so kube-proxy sends new
// queries to kube-dns, and the link-local IP is served through lameduck.
func (m *manager) HandOff() {
	m.stopping.Store(true)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cfg == nil || !m.listening {
		return
	}
	if m.takeover == takeoverSYNs {
		m.completeTakeover() // what follows expects the rules and listeners of a running instance
	}
	var shared []netip.AddrPort
	for _, ap := range m.cfg.Listen {
		others, err := m.peers.Others([]netip.AddrPort{ap})
		if err != nil {
			log.Warningf("Stopping: cannot tell whether another instance serves %s, leaving everything in place: %v", ap, err)
			return
		}
		if others > 0 {
			shared = append(shared, ap)
		}
	}
	if len(shared) > 0 {
		m.leaveTo(shared)
		return
	}
	if !m.cfg.Teardown {
		return
	}
	m.handedOff = true
	var services []netip.AddrPort
	for _, ap := range m.interceptedListen() {
		if !ap.Addr().IsLinkLocalUnicast() {
			services = append(services, ap)
		}
	}
	// Only a socket-matched interception can hold open connections without a
	// listener; an unconditional one is removed whole, and a shut listener
	// would refuse the connections that arrive before the removal.
	if len(services) > 0 && m.cfg.FailOpen && !m.noSocketMatch {
		if err := m.sockets.StopAccepting(services); err != nil {
			log.Warningf("Stopping: TCP connections open at the handoff may be reset: %v", err)
		} else {
			m.tcpDrains = true
		}
	}
	for f, t := range m.tables {
		m.syncRules(f, t, m.desiredRules()[f], false)
	}
	log.Infof("Stopping: Service IPs handed back to kube-proxy; the link-local IP is served until the end of lameduck")
}

// leaveTo hands the flows on addresses a peer also serves to that peer: the
// TCP listeners drain their queues and shut, the UDP sockets stop taking new
// datagrams and answer those queued. Open connections finish here.
func (m *manager) leaveTo(shared []netip.AddrPort) {
	if err := m.sockets.StopAccepting(shared); err != nil {
		log.Warningf("Stopping: TCP connections queued here may be reset when the process exits: %v", err)
	}
	if err := m.sockets.LeaveUDP(shared); err != nil {
		log.Warningf("Stopping: UDP queries queued here may be lost when the process exits: %v", err)
	}
	log.Infof("Stopping: another instance serves %v; new queries go to it, and the interception stays for it", shared)
}

// Shutdown stops the checks and, unless teardown is off or another instance
// serves the same IPs, removes the rules and then the interface, leaving the
// node as it was before the cache started. The instance lock is held until the
// process exits (after its sockets close), so of two instances stopping at
// once, the second sees the first gone and cleans up: exactly once.
func (m *manager) Shutdown() {
	m.stopping.Store(true)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stop != nil {
		close(m.stop)
		m.stop = nil
	}
	m.inPlace.Store(false)
	interceptionActive.Set(0)
	if m.cfg == nil || !m.cfg.Teardown {
		log.Infof("Teardown skipped: the interface and rules stay in place")
		return
	}
	if _, err := m.peers.Lock(peerLockTimeout); err != nil {
		log.Warningf("Tearing down without the instance lock: %v", err)
	}
	if others, err := m.peers.Remaining(m.cfg.Listen); err != nil || others > 0 {
		log.Infof("Teardown skipped: another instance serves here (%d sockets, %v)", others, err)
		return
	}
	for f, t := range m.tables {
		m.syncRules(f, t, nil, false) // no rule desired: every rule of ours goes
	}
	if m.cfg.ManageInterface {
		m.removeInterface()
	}
	m.listening = false
	m.rulesOK = false
	log.Infof("Torn down: interception removed")
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

func boolToInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
