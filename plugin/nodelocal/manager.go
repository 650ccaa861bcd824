package nodelocal

import (
	"net/netip"
	"sync"
	"time"
)

// manager is the composition root of the node's interception state for the
// whole process, and the one place where the protocol is written: the start
// (start.go), the check (this file), the reload (reload.go) and the stop
// (stop.go), each in order, over owners that each hold one piece of state:
//
//	iface        the interface and its addresses             iface.go
//	ruleset      the raw and filter rules, applied as a plan  ruleset.go, syncrules.go, desired.go
//	nftRules     our nf_tables tables (through ruleset)       failopen.go, nftables.go, nftexpr.go
//	upstreamPins the upstream pins in nat OUTPUT             upstreams.go
//	kubeDNSConns the connections left to kube-dns            kubedns.go
//	reloadPause  a reload's paused listeners and held conns   reload.go
//	readiness    what the ready plugin is told                readiness.go
//	foreignCount the sockets of other programs               foreign.go
//	checkLoop    when checks run                             checkloop.go
//	repairLog    the repairs the checks made                 repairs.go
//	statusServer what `node-cache status` asks                statusserver.go
//
// No owner calls the manager or takes its lock. CoreDNS runs setup once per
// server block and again on every reload, so every entry point is
// idempotent.
type manager struct {
	// Set at construction; each guards itself.
	links   Links
	peers   Peers
	sockets Sockets
	ready   *readiness
	foreign *foreignCount
	loop    *checkLoop
	repairs *repairLog
	waits   waits
	// statusDir is where the status endpoint goes ("": none); status is
	// that endpoint, opened at the first start.
	statusDir string
	status    *statusServer
	// newNodeAPI is the API server's client and the node's name, for
	// node_condition (nodecondition.go).
	newNodeAPI func() (NodeAPI, string, error)

	mu     sync.Mutex // guards what follows, owners included
	cfg    *Config
	phase  phase // lifecycle.go
	iface  *iface
	rules  *ruleset
	pins   *upstreamPins
	conns  *kubeDNSConns
	pause  *reloadPause
	report *nodeReport // nil: node_condition and startup_taint off
	starts startState  // start.go
}

// waits are the protocol's waits, constant but for tests.
type waits struct {
	takeoverDrain   time.Duration // how long takingOver lasts
	replacementWait time.Duration // how long a stop without a peer waits for one to start
	condition       conditionTiming
}

func newManager(links Links, newTables func(Backend, Family) (RuleTables, error), generation RulesetGeneration, detect func() (Backend, error), nft NFTables, probe func(netip.AddrPort) error, conntrack Conntrack, peers Peers, sockets Sockets) *manager {
	repairs := &repairLog{}
	rules := newRuleset(newTables, generation, detect, nft, repairs)
	return &manager{
		links: links, peers: peers, sockets: sockets, repairs: repairs,
		ready:   &readiness{probe: probe},
		foreign: &foreignCount{peers: peers, interval: foreignSocketsInterval},
		loop:    newCheckLoop(),
		waits:   waits{takeoverDrain: takeoverDrain, replacementWait: replacementWait, condition: conditionTimes},
		iface:   newIface(links, repairs),
		rules:   rules,
		pins:    newUpstreamPins(conntrack, links, rules),
		conns:   &kubeDNSConns{conntrack: conntrack},
		pause:   &reloadPause{sockets: sockets},
	}
}

// theManager is the process-wide manager of the real node.
var theManager = func() *manager {
	m := newManager(netlinkLinks{},
		func(b Backend, f Family) (RuleTables, error) { return newIPTablesCmd(b, f) },
		nftGeneration,
		func() (Backend, error) { return DetectBackend(listWithBinary) },
		newNFTNetlink(),
		probeDNS,
		kernelConntrack{},
		newNetnsPeers("instance"),
		ownSockets{})
	m.statusDir = stateDir()
	m.newNodeAPI = inClusterNodeAPI
	return m
}()

// Apply makes cfg the desired state and puts the interface in place at once,
// so the listeners can bind its addresses. Rules follow once they listen.
// The first Apply is the start's first half (start.go).
func (m *manager) Apply(cfg *Config) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	starting := m.phase == phaseNew
	if starting {
		m.openStatus()
		m.lockStart()
	}
	if !cfg.equal(m.cfg) {
		if err := m.setConfig(cfg); err != nil {
			return err
		}
	}
	if _, err := m.iface.ensure(m.cfg); err != nil {
		return err
	}
	if starting {
		m.prepareStart()
	}
	if m.phase.listenersUp() {
		m.applyRules(false)
	}
	m.loop.start(m.cfg.CheckInterval, m.interval, m.links.Watch, m.check)
	return nil
}

// openStatus opens the status endpoint, where there is an instance
// directory; without it, the instance still serves.
func (m *manager) openStatus() {
	if m.statusDir == "" || m.status != nil {
		return
	}
	s, err := serveStatus(m.statusDir, m.Status)
	if err != nil {
		log.Warningf("`node-cache status` cannot ask this instance: %v", err)
		return
	}
	m.status = s
}

func (m *manager) setConfig(cfg *Config) error {
	opened, err := m.rules.use(cfg.Backend, cfg.Families())
	if err != nil {
		return err
	}
	if opened {
		m.pins.forgetMode()
	}
	if err := m.useNodeReport(cfg); err != nil {
		return err
	}
	m.iface.drop(m.cfg, cfg)
	m.cfg = cfg
	m.ready.newConfig()
	return nil
}

func (m *manager) interval() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg.CheckInterval
}

// Ready reports whether interception is in place and the cache answers on it.
func (m *manager) Ready() bool { return m.ready.ready() }

// ruleSpec is what the rules depend on now.
func (m *manager) ruleSpec() ruleSpec {
	return ruleSpec{listen: m.intercepted(), healthPort: m.cfg.HealthPort, failOpen: m.cfg.FailOpen,
		mode: m.phase.ruleMode(), kubeDNS: m.conns.all(), local: m.cfg.localIPs(), fallback: m.cfg.fallbacks(), takeover: m.starts.takeover}
}

// applyRules brings the rules to what the config and the phase want.
func (m *manager) applyRules(repair bool) bool { return m.rules.apply(m.ruleSpec(), repair) }

// intercepted are the listen addresses the rules are for.
func (m *manager) intercepted() []netip.AddrPort { return m.iface.intercepted(m.cfg.Listen) }

// services are the intercepted addresses that are Service IPs.
func (m *manager) services() []netip.AddrPort { return m.cfg.services(m.intercepted()) }

// fromKubeDNS are the intercepted addresses kube-dns serves while no
// instance does: the Service IPs, and with fail-open the cache's own ones
// with a fallback.
func (m *manager) fromKubeDNS() []netip.AddrPort {
	if !m.cfg.FailOpen || !m.rules.any() {
		return m.services()
	}
	return m.cfg.fromKubeDNS(m.intercepted())
}

// noOthers reports whether no other instance serves on the listen addresses
// (false when that cannot be told).
func (m *manager) noOthers() bool {
	others, err := m.peers.Others(m.cfg.Listen)
	return err == nil && others == 0
}

// check puts everything right, in this order: the interface (and the rules
// of an address given back to another link); with the rules
// (the periodic check, while the phase owns them), the connections left to
// kube-dns that closed, the rules (a listing, one iptables process per table,
// when the ruleset may have changed), the pins an earlier instance left, and
// this instance's. Then, outside the lock, the foreign sockets are counted,
// readiness probes the cache (a slow probe delays no stop), and once it
// answers the node condition is told.
func (m *manager) check(withRules bool) {
	m.mu.Lock()
	if m.cfg == nil || !m.loop.running() {
		m.mu.Unlock()
		return // never applied, or shut down
	}
	ifaceOK := true
	gaveBack, err := m.iface.ensure(m.cfg)
	if err != nil {
		log.Errorf("Interface check: %v", err)
		ifaceOK = false
	}
	if gaveBack && m.phase.ownsRules() {
		m.applyRules(false) // its interception goes with it, without waiting for the periodic check
	}
	counting := withRules && m.phase.ownsRules()
	if counting {
		if m.conns.prune(m.fromKubeDNS()) {
			m.applyRules(false)
		}
		m.applyRules(true)
		if m.pins.sweepPending() && m.noOthers() {
			m.pins.sweep()
		}
		m.pins.refresh(m.cfg.Upstreams, true)
	}
	// A link event checks the interface only; the rules' state is the last check's.
	m.ready.setInPlace(ifaceOK && m.rules.inPlace() && m.phase.listenersUp() && m.phase != phaseTakingOver)
	listen, intercepted, report := m.cfg.Listen, m.intercepted(), m.report
	m.mu.Unlock()

	if counting {
		m.foreign.countIfDue(listen)
	}
	if config, needed := m.ready.probeNeeded(); needed {
		m.ready.probeAll(config, intercepted)
	}
	if report != nil && m.ready.ready() {
		report.serving(servingMessage(intercepted))
	}
}
