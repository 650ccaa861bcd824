package nodelocal

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/coredns/caddy"
)

// Status is what `node-cache status` reports of one instance: each owner's
// state, the rules as listed now against the desired ones, and the problems
// that make the command exit non-zero.
type Status struct {
	Version            string              `json:"version"`
	Phase              string              `json:"phase"`
	Ready              bool                `json:"ready"`
	NotReady           string              `json:"notReadyReason,omitempty"`
	Interface          InterfaceStatus     `json:"interface"`
	Backend            string              `json:"backend"`
	SocketMatch        bool                `json:"socketMatch"`
	Rules              []RuleStatus        `json:"rules"`
	ExtraRules         []string            `json:"extraRules,omitempty"`
	PeerSockets        int                 `json:"peerSockets"`
	ForeignSockets     int                 `json:"foreignSockets"`
	UpstreamPins       map[string][]string `json:"upstreamPins,omitempty"`
	KubeDNSConnections []string            `json:"kubeDNSConnections,omitempty"`
	LastRepair         *RepairStatus       `json:"lastRepair,omitempty"`
	Problems           []string            `json:"problems,omitempty"`
}

// InterfaceStatus is the interface and the listen addresses.
type InterfaceStatus struct {
	Name      string            `json:"name"`
	Managed   bool              `json:"managed"`
	Addresses []string          `json:"addresses"`                  // put there by this instance
	Missing   []string          `json:"missing,omitempty"`          // of those, not on it now
	Foreign   map[string]string `json:"heldByOtherLinks,omitempty"` // listen address: link
}

// RuleStatus is one desired rule and whether the listing shows it.
type RuleStatus struct {
	Rule    string `json:"rule"`
	InPlace bool   `json:"inPlace"`
}

// RepairStatus is the last repair a check made.
type RepairStatus struct {
	What string    `json:"what"`
	At   time.Time `json:"at"`
}

// How long a status request waits for the manager's lock: a start waits up
// to peerLockTimeout for the instance lock while holding it.
const statusLockWait = 2 * time.Second

// Status reads every owner's state under the lock, then lists the rules and
// counts the peers outside it: a slow iptables listing delays no check.
func (m *manager) Status() Status {
	st := Status{Version: caddy.AppVersion}
	if !tryLockFor(&m.mu, statusLockWait) {
		st.Phase = "busy"
		st.Problems = []string{fmt.Sprintf("a step of the start or stop held the lock for more than %v (a start waits up to %v for a stopping instance)", statusLockWait, peerLockTimeout)}
		return st
	}
	st.Phase = m.phase.String()
	if m.cfg == nil {
		m.mu.Unlock()
		st.Problems = []string{"not configured yet: the Corefile has not been loaded"}
		return st
	}
	cfg := m.cfg
	st.Interface = m.iface.status(cfg)
	st.Backend, st.SocketMatch = string(m.rules.backend), m.rules.socketMatch()
	st.UpstreamPins = m.pins.status()
	for _, c := range m.conns.all() {
		st.KubeDNSConnections = append(st.KubeDNSConnections, c.client.String()+" -> "+c.service.String())
	}
	desired, nftDesired := m.rules.desired(m.ruleSpec()), m.rules.desiredTables(m.ruleSpec())
	tables := map[Family]RuleTables{}
	for _, f := range []Family{IPv4, IPv6} {
		if t, ok := m.rules.table(f); ok {
			tables[f] = t
		}
	}
	m.mu.Unlock()

	st.Ready, st.NotReady = m.ready.ready(), m.ready.why()
	if st.NotReady != "" {
		st.Problems = append(st.Problems, "not ready: "+st.NotReady)
	}
	if st.Phase != phaseServing.String() {
		st.Problems = append(st.Problems, "phase "+st.Phase+", not serving")
	}
	if cfg.ManageInterface {
		st.Interface.Missing = m.missingAddresses(cfg.Interface, st.Interface.Addresses)
		for _, ip := range st.Interface.Missing {
			st.Problems = append(st.Problems, fmt.Sprintf("address %s is not on %s", ip, cfg.Interface))
		}
	}
	st.Rules, st.ExtraRules = compareRules(tables, desired)
	st.Rules = append(st.Rules, m.rules.nft.status(nftDesired)...)
	if missing := slices.DeleteFunc(slices.Clone(st.Rules), func(r RuleStatus) bool { return r.InPlace }); len(missing) > 0 {
		st.Problems = append(st.Problems, fmt.Sprintf("%d of %d rules missing", len(missing), len(st.Rules)))
	}
	if len(st.ExtraRules) > 0 {
		st.Problems = append(st.Problems, fmt.Sprintf("%d extra or stale rules of ours", len(st.ExtraRules)))
	}
	if others, err := m.peers.Others(cfg.Listen); err == nil {
		st.PeerSockets = others
	} else {
		st.Problems = append(st.Problems, "peers not counted: "+err.Error())
	}
	st.ForeignSockets = m.foreign.last()
	if what, at := m.repairs.lastRepair(); what != "" {
		st.LastRepair = &RepairStatus{What: what, At: at}
	}
	return st
}

// missingAddresses are the addresses in want that are not on link now.
func (m *manager) missingAddresses(link string, want []string) []string {
	addrs, err := m.links.Addresses()
	if err != nil {
		return []string{"(addresses not listed: " + err.Error() + ")"}
	}
	var missing []string
	for _, s := range want {
		if ip, err := netip.ParseAddr(s); err == nil && !slices.Contains(addrs[ip], link) {
			missing = append(missing, s)
		}
	}
	return missing
}

// compareRules lists each family's raw and filter tables and tells which
// desired rules are in place, and which rules of ours are not desired.
func compareRules(tables map[Family]RuleTables, desired map[Family][]Rule) ([]RuleStatus, []string) {
	var rules []RuleStatus
	var extra []string
	for _, f := range []Family{IPv4, IPv6} {
		t, ok := tables[f]
		if !ok {
			continue
		}
		var listed []Rule
		for _, table := range ruleTables {
			listed = append(listed, listRules(t, table, "")...)
		}
		changes := DiffRules(desired[f], listed)
		for _, r := range desired[f] {
			missing := slices.ContainsFunc(changes.Add, func(a Rule) bool { return a.key() == r.key() })
			rules = append(rules, RuleStatus{Rule: r.String(), InPlace: !missing})
		}
		for _, r := range changes.Delete {
			extra = append(extra, r.String())
		}
	}
	return rules, extra
}

// tryLockFor takes mu, waiting up to wait.
func tryLockFor(mu *sync.Mutex, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for !mu.TryLock() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}
