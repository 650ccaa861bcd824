package nodelocal

// Applying a family's desired rules to its tables: one listing of the raw and
// filter tables, a plan of the operations that bring them to the desired
// rules (planRules, a pure function), and the plan run in order (execute).

import (
	"fmt"
	"slices"
	"strings"
)

// ruleTables are the tables the rule set lives in.
var ruleTables = []string{"raw", "filter"}

// ruleOp is one step of a plan: an iptables call.
type ruleOp struct {
	kind     ruleOpKind
	rules    []Rule
	position int  // opInsert: 1 is the chain's top
	inChain  bool // the rules go in kubeDNSChain, or jump to it: skipped when creating it failed
}

type ruleOpKind int

const (
	opNewChain    ruleOpKind = iota // kubeDNSChain
	opInsert                        // one rule, at a position
	opInsertAll                     // the rules of connections left to kube-dns, in one process
	opDeleteAll                     // those of connections that closed, in one process
	opDelete                        // one rule
	opDeleteChain                   // kubeDNSChain, once nothing jumps to it
)

func (op ruleOp) String() string {
	switch op.kind {
	case opNewChain:
		return "create chain " + kubeDNSChain
	case opInsert:
		return fmt.Sprintf("insert at %d %s", op.position, op.rules[0])
	case opInsertAll:
		return fmt.Sprintf("insert the rules of %d connections left to kube-dns", len(op.rules))
	case opDeleteAll:
		return fmt.Sprintf("delete the rules of %d connections left to kube-dns", len(op.rules))
	case opDelete:
		return "delete " + op.rules[0].String()
	}
	return "delete chain " + kubeDNSChain
}

// planRules is what brings the listed rules of a family's tables (and
// kubeDNSChain, if chainListed) to the desired ones, in order:
//   - the missing rules first, the interception last: once it steers a pod's
//     flow here, the replies must already skip conntrack, or a reply whose
//     reverse tuple matches the flow's earlier DNAT entry (to kube-dns) is
//     dropped as a conntrack clash. Only the connections left to kube-dns
//     come before it, in their chain, and the jumps to them above it, so it
//     never holds one of them.
//   - then the deletions: replacing a rule (upstream's unconditional one by
//     ours) never leaves a moment without interception.
//   - the chain last, once nothing is in it or jumps to it.
func planRules(desired, listed []Rule, chainListed bool) []ruleOp {
	changes := DiffRules(desired, listed)
	slices.SortStableFunc(changes.Add, func(a, b Rule) int { return addOrder(a) - addOrder(b) })
	var ops []ruleOp
	chain := chainListed
	needChain := func() {
		if !chain {
			ops = append(ops, ruleOp{kind: opNewChain})
			chain = true
		}
	}
	jumps := countRules(listed, Rule.isKubeDNSJump)
	for adds := changes.Add; len(adds) > 0; {
		// The connections left to kube-dns go in together: there may be
		// hundreds, and new connections wait for them.
		if n := countRules(adds, Rule.isKubeDNSConnection); n > 0 && adds[0].isKubeDNSConnection() {
			needChain()
			ops = append(ops, ruleOp{kind: opInsertAll, rules: adds[:n], inChain: true})
			adds = adds[n:]
			continue
		}
		r := adds[0]
		adds = adds[1:]
		op := ruleOp{kind: opInsert, rules: []Rule{r}, position: 1}
		switch {
		case r.isInterception():
			op.position += jumps // below the jumps to the connections left to kube-dns
		case r.isKubeDNSJump():
			needChain()
			op.inChain = true
			jumps++
		}
		ops = append(ops, op)
	}
	// Those of connections that closed go together too.
	if closed := slices.DeleteFunc(slices.Clone(changes.Delete), func(r Rule) bool { return !r.isKubeDNSConnection() }); len(closed) > 0 {
		ops = append(ops, ruleOp{kind: opDeleteAll, rules: closed})
	}
	for _, r := range changes.Delete {
		if !r.isKubeDNSConnection() {
			ops = append(ops, ruleOp{kind: opDelete, rules: []Rule{r}})
		}
	}
	if chain && !slices.ContainsFunc(desired, Rule.isKubeDNSConnection) {
		ops = append(ops, ruleOp{kind: opDeleteChain})
	}
	return ops
}

// sync brings one family's tables to the spec's rules; it reports whether
// every call succeeded and whether it changed anything.
func (rs *ruleset) sync(f Family, t RuleTables, spec ruleSpec, repair bool) (ok, changed bool) {
	ok, changed, refused := rs.syncRules(f, t, rs.desired(spec)[f], repair)
	if refused { // the desired rules have no socket match now
		ok, _, _ = rs.syncRules(f, t, rs.desired(spec)[f], repair)
		changed = true
	}
	return ok, changed
}

// syncRules lists a family's tables and runs the plan to desired; it also
// reports whether the kernel refused the socket match (the plan stopped).
func (rs *ruleset) syncRules(f Family, t RuleTables, desired []Rule, repair bool) (ok, changed, socketRefused bool) {
	var listed []Rule
	chainListed := false
	for _, table := range ruleTables {
		out, err := t.List(table)
		if err == nil {
			var rules []Rule
			rules, err = ParseListing(table, out)
			listed = append(listed, rules...)
			chainListed = chainListed || table == "raw" && hasChain(out, kubeDNSChain)
		}
		if err != nil {
			iptablesError("list", err)
			return false, false, false
		}
	}
	ops := planRules(desired, listed, chainListed)
	ok, socketRefused = rs.execute(f, t, ops, desired, repair)
	if socketRefused {
		return false, true, true
	}
	if ok && len(desired) > 0 && !rs.made[f] {
		log.Infof("Installed %d IPv%d iptables rules (%s backend)", len(desired), f, rs.backend)
	}
	rs.made[f] = rs.made[f] || ok
	return ok, len(ops) > 0, false
}

// execute runs a plan on a family's tables, on past a failed step; it
// reports whether every step succeeded, or stops at once when the kernel
// refuses the socket match: the plan is made again without it.
func (rs *ruleset) execute(f Family, t RuleTables, ops []ruleOp, desired []Rule, repair bool) (ok, socketRefused bool) {
	ok, chainMade := true, true
	for _, op := range ops {
		if op.inChain && !chainMade {
			ok = false
			continue
		}
		var err error
		switch op.kind {
		case opNewChain:
			err = t.NewChain("raw", kubeDNSChain)
			chainMade = err == nil
		case opInsert:
			err = t.Insert(op.rules[0], op.position)
		case opInsertAll:
			err = t.InsertAll(op.rules)
		case opDeleteAll:
			err = t.DeleteAll(op.rules)
		case opDelete:
			err = t.Delete(op.rules[0])
		case opDeleteChain:
			err = t.DeleteChain("raw", kubeDNSChain)
		}
		if err != nil && op.kind == opInsert && slices.Contains(op.rules[0].Args, "socket") && !rs.noSocketMatch {
			rs.noSocketMatch = true
			log.Errorf("The kernel refused the socket match (%v): interception will not fail open if the cache dies; using upstream's unconditional rule", err)
			return false, true
		}
		if err != nil {
			iptablesError(op.String(), err)
			ok = false
			continue
		}
		rs.logDone(f, op, desired, repair)
	}
	return ok, false
}

// logDone logs a step that put something right, and counts it as a repair
// when the check found it.
func (rs *ruleset) logDone(f Family, op ruleOp, desired []Rule, repair bool) {
	switch op.kind {
	case opInsert:
		if repair && rs.made[f] {
			log.Warningf("Rule was missing; added it again: %s", op.rules[0])
			rs.repairs.note(repairRule, "added again: "+op.rules[0].String())
		}
	case opDelete:
		if op.rules[0].isKubeDNSJump() && !slices.ContainsFunc(desired, Rule.isKubeDNSJump) {
			return // the last connection left to kube-dns closed
		}
		log.Infof("Removed extra or stale rule: %s", op.rules[0])
		if repair {
			rs.repairs.note(repairRule, "removed extra or stale: "+op.rules[0].String())
		}
	}
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
