package nodelocal

// Applying a family's desired rules to its tables: one listing per table,
// then the missing rules added in a safe order (the connections left to
// kube-dns and the jumps to them before the interception), extra copies and
// stale rules removed. Every function here runs under the manager's lock.

import (
	"fmt"
	"slices"
	"strings"
)

// ruleTables are the tables the rule set lives in.
var ruleTables = []string{"raw", "filter"}

// syncRules lists a family's rules and makes them desired; it reports whether
// every call succeeded and whether it changed anything.
func (m *manager) syncRules(f Family, t RuleTables, desired []Rule, repair bool) (ok, changed bool) {
	var listed []Rule
	chainListed := false
	for _, table := range ruleTables {
		out, err := t.List(table)
		if err == nil {
			var rs []Rule
			rs, err = ParseListing(table, out)
			listed = append(listed, rs...)
			chainListed = chainListed || table == "raw" && hasChain(out, kubeDNSChain)
		}
		if err != nil {
			m.iptablesError("list", err)
			return false, false
		}
	}
	// The chain of the connections left to kube-dns is there before its
	// rules and the jumps to it go in.
	ensureChain := func() bool {
		if chainListed {
			return true
		}
		if err := t.NewChain("raw", kubeDNSChain); err != nil {
			m.iptablesError("create chain "+kubeDNSChain, err)
			return false
		}
		chainListed = true
		return true
	}
	changes := DiffRules(desired, listed)
	ok, changed = true, len(changes.Add)+len(changes.Delete) > 0
	// The interception goes in last: once it steers a pod's flow here, the
	// replies must already skip conntrack, or a reply whose reverse tuple
	// matches the flow's earlier DNAT entry (to kube-dns) is dropped as a
	// conntrack clash. Only the connections left to kube-dns come before it,
	// and the jumps to them above it, so it never holds one of them.
	slices.SortStableFunc(changes.Add, func(a, b Rule) int { return addOrder(a) - addOrder(b) })
	jumps := countRules(listed, Rule.isKubeDNSJump)
	// Adds before deletes: replacing a rule (upstream's unconditional one by
	// ours) never leaves a moment without interception.
	for adds := changes.Add; len(adds) > 0; {
		// The connections left to kube-dns go in together, in one process:
		// there may be hundreds, and new connections wait for them.
		if n := countRules(adds, Rule.isKubeDNSConnection); n > 0 && adds[0].isKubeDNSConnection() {
			if !ensureChain() {
				ok = false
			} else if err := t.InsertAll(adds[:n]); err != nil {
				m.iptablesError(fmt.Sprintf("insert the rules of %d connections left to kube-dns", n), err)
				ok = false
			}
			adds = adds[n:]
			continue
		}
		r := adds[0]
		adds = adds[1:]
		position := 1
		if r.isInterception() {
			position += jumps // below the jumps to the connections left to kube-dns
		}
		if r.isKubeDNSJump() && !ensureChain() {
			ok = false
			continue
		}
		if err := t.Insert(r, position); err != nil {
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
		if r.isKubeDNSJump() {
			jumps++
		}
		if repair && m.rulesMade[f] {
			log.Warningf("Rule was missing; added it again: %s", r)
			repairs.WithLabelValues(repairRule).Inc()
		}
	}
	// Those of connections that closed go together too.
	closed := slices.DeleteFunc(slices.Clone(changes.Delete), func(r Rule) bool { return !r.isKubeDNSConnection() })
	if len(closed) > 0 {
		if err := t.DeleteAll(closed); err != nil {
			m.iptablesError(fmt.Sprintf("delete the rules of %d connections left to kube-dns", len(closed)), err)
			ok = false
		}
	}
	for _, r := range changes.Delete {
		if r.isKubeDNSConnection() {
			continue
		}
		if err := t.Delete(r); err != nil {
			m.iptablesError("delete "+r.String(), err)
			ok = false
			continue
		}
		if r.isKubeDNSJump() && !slices.ContainsFunc(desired, Rule.isKubeDNSJump) {
			continue // the last connection left to kube-dns closed
		}
		log.Infof("Removed extra or stale rule: %s", r)
		if repair {
			repairs.WithLabelValues(repairRule).Inc()
		}
	}
	if chainListed && !slices.ContainsFunc(desired, Rule.isKubeDNSConnection) {
		if err := t.DeleteChain("raw", kubeDNSChain); err != nil {
			m.iptablesError("delete chain "+kubeDNSChain, err)
			ok = false
		}
	}
	if ok && len(desired) > 0 && !m.rulesMade[f] {
		log.Infof("Installed %d IPv%d iptables rules (%s backend)", len(desired), f, m.backend)
	}
	m.rulesMade[f] = m.rulesMade[f] || ok
	return ok, changed
}

// removeListed deletes the rules of a table (of one chain, if chain is set)
// that match, and returns those it deleted.
func (m *manager) removeListed(t RuleTables, table, chain string, match func(Rule) bool) []Rule {
	out, err := t.ListChain(table, chain)
	if err != nil {
		m.iptablesError("list", err)
		return nil
	}
	listed, err := ParseListing(table, out)
	if err != nil {
		m.iptablesError("list", err)
		return nil
	}
	var removed []Rule
	for _, r := range listed {
		if !match(r) {
			continue
		}
		if err := t.Delete(r); err != nil {
			m.iptablesError("delete "+r.String(), err)
			continue
		}
		removed = append(removed, r)
	}
	return removed
}

func (m *manager) iptablesError(what string, err error) {
	kind := errIPTables
	if isLockError(err) {
		kind = errIPTablesLock
	}
	setupErrors.WithLabelValues(kind).Inc()
	log.Errorf("iptables %s: %v", what, err)
}

// addOrder: the rules to add, in the order they go in.
func addOrder(r Rule) int {
	switch {
	case r.isKubeDNSConnection():
		return 1
	case r.isKubeDNSJump():
		return 2
	case r.isInterception():
		return 3
	}
	return 0
}

func countRules(rules []Rule, is func(Rule) bool) int {
	n := 0
	for _, r := range rules {
		if is(r) {
			n++
		}
	}
	return n
}

// hasChain reports whether an `iptables -S` listing declares chain.
func hasChain(listing, chain string) bool {
	return slices.Contains(strings.Split(listing, "\n"), "-N "+chain)
}
