package nodelocal

import (
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// manager owns the node's interception state for the whole process. CoreDNS
// runs setup once per server block and again on every reload, so every entry
// point is idempotent and the state lives here, not in plugin instances.
//
// Its work is in these files: reconcile.go brings the kernel to the desired
// interface, addresses and rules (syncrules.go applies a family's rules);
// checks.go runs that on events and on a timer, and tells readiness;
// handoff.go is the protocol between instances at a start, a reload and a
// stop (peers.go and instances.go say who they are), and takeover.go the
// start's takeover from kube-dns, whose phases lifecycle.go lists;
// upstreams.go pins the upstreams.
type manager struct {
	links      Links
	newTables  func(Backend, Family) (RuleTables, error)
	generation RulesetGeneration
	detect     func() (Backend, error)
	probe      func(netip.AddrPort) error
	conntrack  Conntrack
	peers      Peers
	sockets    Sockets

	mu      sync.Mutex
	cfg     *Config
	backend Backend // cfg.Backend with auto resolved
	tables  map[Family]RuleTables

	// What reconciling found and did.
	ownIPs        map[netip.Addr]bool   // addresses this process put on the interface
	foreignIPs    map[netip.Addr]string // listen addresses held by another link: left alone
	linkMade      bool                  // the interface was in place once: a new one is a repair
	rulesMade     map[Family]bool       // the rules were in place once: a new one is a repair
	rulesOK       bool                  // the last rule check found every rule in place
	noSocketMatch bool                  // the kernel refused -m socket: unconditional interception
	// verified is what the last check that listed the rules found complete,
	// unchanged and as desired: the ruleset generation read before the listing
	// and the desired rules. A check finding both the same lists nothing.
	verified    *verifiedRules
	genErrShown bool // a failed generation read is logged once
	// The upstream pins (upstreams.go): this instance's, whether pins an
	// earlier instance left may still be around, and whether pins may stay
	// while serving (kube-proxy's rules come first), as last looked at.
	pins             map[netip.AddrPort][]Rule
	pinsToSweep      bool
	pinsWhileServing map[Family]bool
	pinModeCheckedAt map[Family]time.Time
	// pinModeGeneration: the nft ruleset generation when it was last looked at.
	pinModeGeneration map[Family]uint32
	// kubeDNSConnections: the TCP connections kube-dns served when the
	// takeover ended and still serves, each left to it by a rule until it
	// closes (handoff.go).
	kubeDNSConnections []kubeDNSConnection

	// The check loop.
	stop chan struct{} // closes the check loop; nil when not running
	wake chan struct{}

	// The lifecycle (lifecycle.go) and what its phases hold.
	phase phase
	// startUnlock releases the instance lock taken for the start, once the
	// listeners are up: a stopping peer then sees them and leaves things be.
	startUnlock   func()
	takeoverDrain time.Duration // how long takingOver lasts
	// replacementWait: how long a stop without a peer waits for one to start.
	replacementWait time.Duration
	// retransmitWait: how long withholding lasts after the listeners are up
	// when a handed-off instance shares the node (0 otherwise).
	retransmitWait time.Duration
	takeoverTimer  *time.Timer
	paused         []netip.AddrPort // reloadPause: the listeners refusing new connections
	pausedAt       time.Time
	held           Held // reloadPause: the old servers' connections, kept open past their stop
	resumeTimer    *time.Timer

	inPlace   atomic.Bool
	answering atomic.Bool
	stopping  atomic.Bool  // the stop began: set before the lock, read by readiness
	stopBegan atomic.Int64 // when, in Unix nanoseconds

	// foreignSockets: sockets on the cache's addresses that are neither this
	// instance's nor a peer's, as the last count found them, when, and how
	// often they are counted.
	foreignSockets   int
	foreignCountedAt time.Time
	foreignInterval  time.Duration
}

func newManager(links Links, newTables func(Backend, Family) (RuleTables, error), generation RulesetGeneration, detect func() (Backend, error), probe func(netip.AddrPort) error, conntrack Conntrack, peers Peers, sockets Sockets) *manager {
	return &manager{
		links: links, newTables: newTables, generation: generation, detect: detect, probe: probe, conntrack: conntrack, peers: peers, sockets: sockets,
		ownIPs: map[netip.Addr]bool{}, foreignIPs: map[netip.Addr]string{}, rulesMade: map[Family]bool{}, pins: map[netip.AddrPort][]Rule{}, pinsWhileServing: map[Family]bool{}, pinModeCheckedAt: map[Family]time.Time{}, pinModeGeneration: map[Family]uint32{},
		wake: make(chan struct{}, 1), takeoverDrain: takeoverDrain, replacementWait: replacementWait, foreignInterval: foreignSocketsInterval,
	}
}

// theManager is the process-wide manager of the real node.
var theManager = newManager(netlinkLinks{},
	func(b Backend, f Family) (RuleTables, error) { return newIPTablesCmd(b, f) },
	nftGeneration,
	func() (Backend, error) { return DetectBackend(listWithBinary) },
	probeDNS,
	kernelConntrack{},
	newNetnsPeers("instance"),
	ownSockets{})

// Apply makes cfg the desired state and puts the interface in place at once,
// so the listeners can bind its addresses. Rules follow once they listen.
func (m *manager) Apply(cfg *Config) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	starting := m.phase == phaseNew
	if starting {
		m.lockStart()
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
		m.pinsToSweep = true
		m.sweepPins()
		m.adoptKubeDNSConnections()
		m.withholdTCP()
	}
	if m.phase.listenersUp() {
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
		clear(m.pinsWhileServing)
		clear(m.pinModeCheckedAt)
		clear(m.pinModeGeneration)
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

// Ready reports whether interception is in place and the cache answers on it.
func (m *manager) Ready() bool {
	return m.inPlace.Load() && m.answering.Load() && !m.stopping.Load()
}
