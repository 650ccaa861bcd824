package nodelocal

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var errNotFound = errors.New("not found")

// eventLog is what the fakes of one node were asked to do, in order, shared
// by all of them: the protocol's order is tested on it (order_test.go).
type eventLog struct {
	mu     sync.Mutex
	events []string
	// onEvent, if set, runs as each event is recorded, outside the lock.
	onEvent func(event string)
}

func (l *eventLog) add(format string, args ...any) {
	if l == nil {
		return
	}
	event := fmt.Sprintf(format, args...)
	l.mu.Lock()
	l.events = append(l.events, event)
	on := l.onEvent
	l.mu.Unlock()
	if on != nil {
		on(event)
	}
}

// all returns the events so far.
func (l *eventLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

// reset forgets the events so far.
func (l *eventLog) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = nil
}

// ruleEvent names a rule by what it does: the protocol's order is about kinds
// of rules, not their every argument.
func ruleEvent(r Rule) string {
	switch {
	case r.isKubeDNSConnection():
		return "conn " + r.arg("-s")
	case r.isKubeDNSJump():
		return "jump " + strings.TrimSuffix(r.arg("-d"), "/32")
	case r.isUpstreamPin():
		return "pin " + strings.TrimSuffix(r.arg("-d"), "/32")
	case r.isInterception():
		kind := "intercept"
		if slices.Contains(r.Args, "--tcp-flags") {
			kind = "intercept-syn"
		}
		return kind + " " + r.proto() + " " + strings.TrimSuffix(r.arg("-d"), "/32")
	}
	return "exception"
}

// fakeLinks is Links in memory.
type fakeLinks struct {
	mu      sync.Mutex
	links   map[string]bool
	addrs   map[netip.Addr][]string // the links holding each address
	notify  func()
	failAdd int // AddLink fails this many more times
	log     *eventLog
}

func newFakeLinks() *fakeLinks {
	return &fakeLinks{links: map[string]bool{}, addrs: map[netip.Addr][]string{}}
}

func (f *fakeLinks) Addresses() (map[netip.Addr][]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[netip.Addr][]string{}
	for k, v := range f.addrs {
		out[k] = slices.Clone(v)
	}
	return out, nil
}

// on names the links holding ip, space-separated.
func (f *fakeLinks) on(ip string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.addrs[netip.MustParseAddr(ip)], " ")
}

func (f *fakeLinks) LinkExists(name string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.links[name], nil
}

func (f *fakeLinks) AddLink(name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failAdd > 0 {
		f.failAdd--
		return "", errNotFound
	}
	f.links[name] = true
	f.log.add("add link %s", name)
	return "bridge", nil
}

func (f *fakeLinks) DeleteLink(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.links, name)
	f.log.add("delete link %s", name)
	for ip := range f.addrs {
		f.removeAddress(name, ip)
	}
	return nil
}

func (f *fakeLinks) AddAddress(link string, ip netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.links[link] {
		return errNotFound
	}
	if !slices.Contains(f.addrs[ip], link) {
		f.addrs[ip] = append(f.addrs[ip], link)
	}
	f.log.add("add address %s", ip)
	return nil
}

func (f *fakeLinks) DeleteAddress(link string, ip netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if slices.Contains(f.addrs[ip], link) {
		f.removeAddress(link, ip)
		f.log.add("delete address %s", ip)
	}
	return nil
}

// removeAddress takes ip off link; the caller holds the lock.
func (f *fakeLinks) removeAddress(link string, ip netip.Addr) {
	f.addrs[ip] = slices.DeleteFunc(f.addrs[ip], func(l string) bool { return l == link })
	if len(f.addrs[ip]) == 0 {
		delete(f.addrs, ip)
	}
}

func (f *fakeLinks) Watch(stop <-chan struct{}, notify func()) error {
	f.notify = notify
	return nil
}

// fakeTables is RuleTables in memory; List prints like `iptables -S`. As
// iptables, it refuses a rule in, or a jump to, a chain that does not exist,
// and the removal of a chain that a rule jumps to.
type fakeTables struct {
	mu       sync.Mutex
	rules    []Rule
	chains   map[string]bool // user-defined, by "table chain"
	lists    int
	inserts  int
	inserted []Rule // in the order they went in
	log      *eventLog
}

var builtinChains = []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

// chainOK: r's chain, and the chain it jumps to if it is not a target, exist.
func (f *fakeTables) chainOK(r Rule) error {
	for _, chain := range []string{r.Chain, r.arg("-j")} {
		if strings.HasPrefix(chain, "NODELOCAL-") && !f.chains[r.Table+" "+chain] {
			return fmt.Errorf("no chain/target/match by that name: %s", chain)
		}
	}
	return nil
}

func (f *fakeTables) NewChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.chains == nil {
		f.chains = map[string]bool{}
	}
	if f.chains[table+" "+chain] {
		return fmt.Errorf("chain %s already exists", chain)
	}
	f.chains[table+" "+chain] = true
	f.log.add("new chain %s", chain)
	return nil
}

func (f *fakeTables) DeleteChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.rules {
		if r.Table == table && r.arg("-j") == chain {
			return fmt.Errorf("chain %s: too many links", chain)
		}
	}
	f.rules = slices.DeleteFunc(f.rules, func(r Rule) bool { return r.Table == table && r.Chain == chain })
	delete(f.chains, table+" "+chain)
	f.log.add("delete chain %s", chain)
	return nil
}

func (f *fakeTables) List(table string) (string, error) { return f.ListChain(table, "") }

func (f *fakeTables) ListChain(table, chain string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists++
	listed := chain
	if chain == "" {
		listed = "table" // the whole table
	}
	f.log.add("list %s %s", table, listed)
	var b strings.Builder
	for key := range f.chains {
		if t, c, _ := strings.Cut(key, " "); t == table && (chain == "" || chain == c) {
			b.WriteString("-N " + c + "\n")
		}
	}
	for _, r := range f.rules {
		if r.Table == table && (chain == "" || r.Chain == chain) {
			b.WriteString(strings.TrimPrefix(r.String(), "-t "+table+" ") + "\n")
		}
	}
	return b.String(), nil
}

func (f *fakeTables) Insert(r Rule, position int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.chainOK(r); err != nil {
		return err
	}
	f.inserted = append(f.inserted, r)
	at, seen := len(f.rules), 0
	for i, x := range f.rules {
		if x.Table == r.Table && x.Chain == r.Chain {
			if seen++; seen == position {
				at = i
				break
			}
		}
	}
	if position > seen+1 {
		return fmt.Errorf("index of insertion too big: %d in a chain of %d", position, seen)
	}
	f.rules = slices.Insert(f.rules, at, r)
	f.log.add("insert %s", ruleEvent(r))
	return nil
}

func (f *fakeTables) InsertAll(rules []Rule) error {
	for _, r := range rules {
		if err := f.Insert(r, 1); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeTables) DeleteAll(rules []Rule) error {
	for _, r := range rules {
		if err := f.Delete(r); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeTables) Append(r Rule) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = append(f.rules, r)
	f.log.add("append %s", ruleEvent(r))
	return nil
}

func (f *fakeTables) Delete(r Rule) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, x := range f.rules {
		if x.key() == r.key() {
			f.rules = append(f.rules[:i], f.rules[i+1:]...)
			f.log.add("delete %s", ruleEvent(r))
			return nil
		}
	}
	return errNotFound
}

func (f *fakeTables) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.rules)
}

// fakePeers is Peers with a settable count of other instances' sockets.
type fakePeers struct {
	mu     sync.Mutex
	others int
	// handedOff: the others have shut their TCP listeners, as an instance
	// stopping without a successor does.
	handedOff bool
	locks     int
	// starting: a peer holds the lock until its listeners are up, which
	// adds its sockets to others.
	starting int
	// published counts Publish calls; foreign is what Foreign returns.
	published, foreign int
	// Each Lock's timeout.
	lockTimeouts []time.Duration
	log          *eventLog
}

func (p *fakePeers) Lock(timeout time.Duration) (func(), error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.locks++
	p.lockTimeouts = append(p.lockTimeouts, timeout)
	p.others += p.starting
	p.starting = 0
	p.log.add("lock")
	return func() { p.log.add("unlock") }, nil
}

func (p *fakePeers) Others([]netip.AddrPort) (int, error) {
	p.log.add("count peers")
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.others, nil
}

func (p *fakePeers) ServingTCP(listen []netip.AddrPort) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	// A handed-off instance shut its Service IPs' TCP listeners only.
	if p.handedOff && !slices.ContainsFunc(listen, func(ap netip.AddrPort) bool { return ap.Addr().IsLinkLocalUnicast() }) {
		return 0, nil
	}
	return p.others, nil
}

func (p *fakePeers) Remaining(listen []netip.AddrPort) (int, error) { return p.Others(listen) }

func (p *fakePeers) Publish([]netip.AddrPort) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.published++
	p.log.add("publish")
	return nil
}

func (p *fakePeers) Foreign([]netip.AddrPort) (int, error) {
	p.log.add("count foreign sockets")
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.foreign, nil
}

// fakeSockets is Sockets recording the addresses each call was given.
type fakeSockets struct {
	mu                                sync.Mutex
	paused, resumed, stopped, udpLeft [][]netip.AddrPort
	waitedAnswered, closedAnswered    [][]netip.AddrPort
	onResume                          func() // if set, runs as the listeners resume
	held                              []*fakeHeld
	log                               *eventLog
}

// fakeHeld records what became of held connections.
type fakeHeld struct {
	carried, released int
	log               *eventLog
}

func (h *fakeHeld) CarryOver() int { h.carried++; h.log.add("carry over"); return 0 }
func (h *fakeHeld) Release()       { h.released++; h.log.add("release") }

func (s *fakeSockets) WaitAnswered(l []netip.AddrPort) error {
	return s.record(&s.waitedAnswered, "wait answered", l)
}
func (s *fakeSockets) CloseAnswered(l []netip.AddrPort) error {
	return s.record(&s.closedAnswered, "close answered", l)
}

func (s *fakeSockets) HoldConnections([]netip.AddrPort) (Held, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := &fakeHeld{log: s.log}
	s.held = append(s.held, h)
	s.log.add("hold")
	return h, nil
}

func (s *fakeSockets) record(calls *[][]netip.AddrPort, event string, listen []netip.AddrPort) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	*calls = append(*calls, listen)
	s.log.add("%s %v", event, listen)
	return nil
}

func (s *fakeSockets) PauseAccepting(l []netip.AddrPort) error {
	return s.record(&s.paused, "pause", l)
}
func (s *fakeSockets) ResumeAccepting(l []netip.AddrPort) error {
	if s.onResume != nil {
		s.onResume()
	}
	return s.record(&s.resumed, "resume", l)
}
func (s *fakeSockets) StopAccepting(l []netip.AddrPort) error { return s.record(&s.stopped, "stop", l) }
func (s *fakeSockets) LeaveUDP(l []netip.AddrPort) error      { return s.record(&s.udpLeft, "leave udp", l) }

// counts returns how often each call was made, in the order above.
func (s *fakeSockets) counts() [4]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return [4]int{len(s.paused), len(s.resumed), len(s.stopped), len(s.udpLeft)}
}

// fakeConntrack is Conntrack with what each Service address's flows reach,
// and the clients of its open connections.
type fakeConntrack struct {
	mu        sync.Mutex
	endpoints map[netip.AddrPort][]netip.AddrPort
	clients   map[netip.AddrPort][]netip.AddrPort
	log       *eventLog
}

func (c *fakeConntrack) Endpoints(service netip.AddrPort) ([]netip.AddrPort, error) {
	c.log.add("conntrack endpoints %s", service)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.endpoints[service], nil
}

func (c *fakeConntrack) OpenClients(service netip.AddrPort) ([]netip.AddrPort, error) {
	c.log.add("conntrack clients %s", service)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.clients[service], nil
}

func (c *fakeConntrack) setEndpoints(service netip.AddrPort, endpoints ...netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.endpoints[service] = endpoints
}

func (c *fakeConntrack) setClients(service netip.AddrPort, clients ...netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clients[service] = clients
}

type fakeNode struct {
	links     *fakeLinks
	tables    map[Family]*fakeTables
	peers     *fakePeers
	sockets   *fakeSockets
	nftGen    *uint32 // the ruleset generation, if the fake node keeps one
	nft       *fakeNFT
	conntrack *fakeConntrack
	log       *eventLog
	// probe, if set, is how the cache answers readiness probes.
	probe func(netip.AddrPort) error
	mgr   *manager
}

func newFakeNode(t *testing.T) *fakeNode {
	log := &eventLog{}
	n := &fakeNode{links: newFakeLinks(), tables: map[Family]*fakeTables{IPv4: {log: log}, IPv6: {log: log}}, peers: &fakePeers{log: log},
		sockets: &fakeSockets{log: log}, log: log, nft: &fakeNFT{tables: map[string]nftTable{}, noOwner: true, log: log},
		conntrack: &fakeConntrack{endpoints: map[netip.AddrPort][]netip.AddrPort{}, clients: map[netip.AddrPort][]netip.AddrPort{}, log: log}}
	n.links.log = log
	n.mgr = newManager(n.links,
		func(b Backend, f Family) (RuleTables, error) { return n.tables[f], nil },
		func(Backend) (uint32, bool, error) {
			if n.nftGen == nil {
				return 0, false, nil
			}
			return *n.nftGen, true, nil
		},
		func() (Backend, error) { return BackendNFT, nil },
		n.nft,
		func(ap netip.AddrPort) error {
			log.add("probe %s", ap)
			if n.probe != nil {
				return n.probe(ap)
			}
			return nil
		},
		n.conntrack, n.peers, n.sockets)
	n.mgr.waits.takeoverDrain = time.Hour // tests end the takeover themselves
	n.mgr.waits.replacementWait = 0       // tests of the wait set it
	t.Cleanup(n.mgr.loop.halt)
	return n
}

// listenersUp is the listeners coming up and, where the start takes the
// Service IPs' TCP over from kube-dns, that takeover's end.
func (n *fakeNode) listenersUp() {
	n.mgr.ListenersUp()
	n.mgr.finishTakeover()
	n.mgr.check(false) // the readiness finishTakeover updates in the background
}

func testConfig(listen ...string) *Config {
	cfg := &Config{Interface: "nodelocaldns", ManageInterface: true, Backend: BackendAuto,
		CheckInterval: time.Hour, HealthPort: 8080, Teardown: true, FailOpen: true}
	for _, s := range listen {
		cfg.Listen = append(cfg.Listen, netip.MustParseAddrPort(s))
	}
	return cfg
}

// fakeNFT is nf_tables; by default a kernel without owned tables (before
// 5.12), where iptables keeps intercepting the node's own clients.
type fakeNFT struct {
	mu      sync.Mutex
	tables  map[string]nftTable
	noOwner bool
	log     *eventLog
}

func (f *fakeNFT) Replace(t nftTable) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t.owned && f.noOwner {
		return fmt.Errorf("write nf_tables table inet %s: %w", t.name, unix.EOPNOTSUPP)
	}
	f.log.add("replace nft table %s", t.name)
	f.tables[t.name] = t
	return nil
}

func (f *fakeNFT) Delete(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.tables[name]; ok {
		f.log.add("delete nft table %s", name)
	}
	delete(f.tables, name)
	return nil
}

func (f *fakeNFT) Rules(name string) (map[string][]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tables[name]
	if !ok {
		return nil, nil
	}
	out := map[string][]string{}
	for _, c := range t.chains {
		for _, r := range c.rules {
			out[c.name] = append(out[c.name], r.text)
		}
	}
	return out, nil
}

// table is a table's rules as text, chain by chain; "" if it is missing.
func (f *fakeNFT) table(name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tables[name]
	if !ok {
		return ""
	}
	return nftText([]nftTable{t})
}
