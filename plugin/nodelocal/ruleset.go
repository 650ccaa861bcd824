package nodelocal

import (
	"fmt"
	"slices"
	"strings"
)

// ruleset owns the node's rules in the raw and filter tables, and through
// nft our nf_tables tables (failopen.go): the backend and its tables, which
// families had their rules in place once, whether the last sync found them
// all, what the last listing verified, and the fallback to upstream's
// unconditional rule when the kernel refuses the socket match.
// The upstream pins (upstreams.go) and the adoption of the connections left
// to kube-dns (kubedns.go) use its tables. The manager's lock guards it.
type ruleset struct {
	newTables  func(Backend, Family) (RuleTables, error)
	generation RulesetGeneration
	detect     func() (Backend, error)
	repairs    *repairLog
	nft        *nftRules

	asked    Backend  // the config's backend, auto unresolved
	families []Family // the tables' families
	backend  Backend  // asked, with auto resolved
	tables   map[Family]RuleTables

	made          map[Family]bool // the rules were in place once: a change is a repair
	ok            bool            // the last sync found every rule in place
	noSocketMatch bool            // the kernel refused -m socket: unconditional interception
	// verified is what the last sync that listed the rules found complete,
	// unchanged and as desired: the ruleset generation read before the
	// listing and the desired rules. A repair finding both the same lists
	// nothing.
	verified    *verifiedRules
	genErrShown bool // a failed generation read is logged once
}

func newRuleset(newTables func(Backend, Family) (RuleTables, error), generation RulesetGeneration, detect func() (Backend, error), nft NFTables, repairs *repairLog) *ruleset {
	return &ruleset{newTables: newTables, generation: generation, detect: detect, repairs: repairs, made: map[Family]bool{},
		nft: newNFTRules(nft, repairs)}
}

// use opens the tables of backend for families, unless they are open
// already; it reports whether it opened new ones.
func (rs *ruleset) use(backend Backend, families []Family) (bool, error) {
	if rs.tables != nil && backend == rs.asked && slices.Equal(families, rs.families) {
		return false, nil
	}
	resolved := backend
	if backend == BackendAuto {
		var err error
		if resolved, err = rs.detect(); err != nil {
			return false, err
		}
		log.Infof("iptables backend: %s (auto-detected from where the node's kube rules live)", resolved)
	}
	tables := map[Family]RuleTables{}
	if resolved != BackendOff {
		for _, f := range families {
			t, err := rs.newTables(resolved, f)
			if err != nil {
				return false, err
			}
			tables[f] = t
		}
	}
	rs.asked, rs.families, rs.backend, rs.tables = backend, slices.Clone(families), resolved, tables
	rs.verified = nil
	return true, nil
}

// any reports whether there are tables to put rules in (not `iptables off`).
func (rs *ruleset) any() bool { return len(rs.tables) > 0 }

// table is a family's tables.
func (rs *ruleset) table(f Family) (RuleTables, bool) {
	t, ok := rs.tables[f]
	return t, ok
}

// socketMatch: the kernel takes the socket match, as far as is known.
func (rs *ruleset) socketMatch() bool { return !rs.noSocketMatch }

// inPlace: the last sync found every rule in place.
func (rs *ruleset) inPlace() bool { return rs.ok }

// desired is the spec's iptables rules as this kernel can have them.
func (rs *ruleset) desired(spec ruleSpec) map[Family][]Rule {
	spec.hostByNFT = rs.any() && spec.failOpen && rs.nft.interceptsHost() // as nft.desired has it
	spec.failOpen = spec.failOpen && !rs.noSocketMatch
	return spec.rules()
}

// desiredTables are the spec's nf_tables tables: none with `iptables off`.
func (rs *ruleset) desiredTables(spec ruleSpec) []nftTable {
	if !rs.any() {
		return nil
	}
	return rs.nft.desired(spec)
}

// apply brings our nf_tables tables, then every family's iptables tables,
// to the spec's rules, with one listing per table, adding what is missing
// and removing extra copies. With repair (the periodic check), a change is
// a repair: logged and counted, and a ruleset unchanged since it was last
// verified is not listed at all. It reports whether all rules are in place.
func (rs *ruleset) apply(spec ruleSpec, repair bool) bool {
	tables := rs.desiredTables(spec)
	current := rs.readGeneration(rs.desired(spec), tables)
	if repair && current != nil && rs.verified != nil && *current == *rs.verified {
		return rs.ok // nothing in the ruleset changed since it was found complete
	}
	// The host interception goes in nf_tables before iptables' copy goes.
	ok, changed := rs.nft.sync(tables, repair)
	if refused := !rs.nft.interceptsHost() && slices.ContainsFunc(tables, func(t nftTable) bool { return t.owned }); refused {
		ok, _ = rs.nft.sync(rs.desiredTables(spec), repair) // without the owned table: iptables keeps it
	}
	for f, t := range rs.tables {
		fOK, fChanged := rs.sync(f, t, spec, repair)
		ok, changed = ok && fOK, changed || fChanged
	}
	rs.verified = nil
	if ok && !changed {
		rs.verified = current // read before the listing: covers what it showed
	}
	rs.ok = ok
	return ok
}

// remove removes every rule of ours: our nf_tables tables, and ours in the
// raw and filter tables.
func (rs *ruleset) remove() {
	rs.nft.remove()
	for f, t := range rs.tables {
		rs.syncRules(f, t, nil, false)
	}
	rs.ok, rs.verified = false, nil
}

// removeMatching deletes, in every family, the rules of a table (of one
// chain, if chain is set) that match, and returns those it deleted.
func (rs *ruleset) removeMatching(table, chain string, match func(Rule) bool) []Rule {
	var removed []Rule
	for _, t := range rs.tables {
		for _, r := range listRules(t, table, chain) {
			if !match(r) {
				continue
			}
			if err := t.Delete(r); err != nil {
				iptablesError("delete "+r.String(), err)
				continue
			}
			removed = append(removed, r)
		}
	}
	return removed
}

// list is a table's rules in every family.
func (rs *ruleset) list(table string) []Rule {
	var listed []Rule
	for _, t := range rs.tables {
		listed = append(listed, listRules(t, table, "")...)
	}
	return listed
}

// listRules is a table's rules (of one chain, if chain is set); a failed
// listing is logged and lists nothing.
func listRules(t RuleTables, table, chain string) []Rule {
	out, err := t.ListChain(table, chain)
	if err == nil {
		var listed []Rule
		if listed, err = ParseListing(table, out); err == nil {
			return listed
		}
	}
	iptablesError("list", err)
	return nil
}

// currentGeneration is the ruleset generation, if the backend keeps one.
func (rs *ruleset) currentGeneration() (uint32, bool) {
	gen, ok, err := rs.generation(rs.backend)
	return gen, ok && err == nil
}

// verifiedRules identifies a rule check: the ruleset generation it saw and
// the rules it wanted.
type verifiedRules struct {
	generation uint32
	desired    string
}

// readGeneration is the rule check's identity now, or nil if the backend
// keeps no generation (legacy) or it cannot be read: then every check lists.
func (rs *ruleset) readGeneration(desired map[Family][]Rule, tables []nftTable) *verifiedRules {
	gen, ok, err := rs.generation(rs.backend)
	if err != nil && !rs.genErrShown {
		rs.genErrShown = true
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
	b.WriteString(nftText(tables))
	return &verifiedRules{generation: gen, desired: b.String()}
}

func iptablesError(what string, err error) {
	kind := errIPTables
	if isLockError(err) {
		kind = errIPTablesLock
	}
	setupErrors.WithLabelValues(kind).Inc()
	log.Errorf("iptables %s: %v", what, err)
}
