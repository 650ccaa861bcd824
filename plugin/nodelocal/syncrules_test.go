package nodelocal

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// opLine is a plan step in short: what it does, where, to which kind of rule.
func opLine(op ruleOp) string {
	switch op.kind {
	case opNewChain:
		return "new chain"
	case opDeleteChain:
		return "delete chain"
	case opInsertAll:
		return fmt.Sprintf("insert %d conns", len(op.rules))
	case opDeleteAll:
		return fmt.Sprintf("delete %d conns", len(op.rules))
	case opInsert:
		return fmt.Sprintf("insert at %d %s", op.position, ruleEvent(op.rules[0]))
	}
	return "delete " + ruleEvent(op.rules[0])
}

// TestPlanOrderAndPositions: the plan adds the other rules first, then the
// connections left to kube-dns in their chain, the jumps to it, and the
// interception last, below the jumps; then it deletes, and removes the chain
// once nothing needs it.
func TestPlanOrderAndPositions(t *testing.T) {
	linkLocal, service := netip.MustParseAddrPort("169.254.20.10:53"), netip.MustParseAddrPort("198.18.0.10:53")
	conn := kubeDNSConnection{client: netip.MustParseAddrPort("198.19.1.7:40000"), service: service}
	ours := func(failOpen bool, conns ...kubeDNSConnection) []Rule {
		return ruleSpec{listen: []netip.AddrPort{linkLocal, service}, failOpen: failOpen, kubeDNS: conns}.rules()[IPv4]
	}
	interceptions := func(rules []Rule) []Rule {
		return slices.DeleteFunc(slices.Clone(rules), func(r Rule) bool { return !r.isInterception() })
	}
	withoutInterception := func(rules []Rule) []Rule {
		return slices.DeleteFunc(slices.Clone(rules), Rule.isInterception)
	}
	for _, tc := range []struct {
		name        string
		desired     []Rule
		listed      []Rule
		chainListed bool
		want        []string // "...": any number of steps of the line before
	}{
		{
			name:    "from nothing, with a connection left to kube-dns",
			desired: ours(true, conn),
			want: []string{"insert at 1 exception", "...", "new chain", "insert 1 conns", "insert at 1 jump 198.18.0.10",
				"insert at 2 intercept tcp 169.254.20.10", "insert at 2 intercept udp 169.254.20.10",
				"insert at 2 intercept tcp 198.18.0.10", "insert at 2 intercept udp 198.18.0.10"},
		},
		{
			name:    "upstream's unconditional interception: ours in first, theirs out after",
			desired: ours(true),
			listed:  ours(false),
			want: []string{"insert at 1 intercept tcp 169.254.20.10", "insert at 1 intercept udp 169.254.20.10",
				"insert at 1 intercept tcp 198.18.0.10", "insert at 1 intercept udp 198.18.0.10",
				"delete intercept tcp 169.254.20.10", "delete intercept udp 169.254.20.10",
				"delete intercept tcp 198.18.0.10", "delete intercept udp 198.18.0.10"},
		},
		{
			name:    "the connection closed: its rule, then the jump, then the chain",
			desired: ours(true), listed: ours(true, conn), chainListed: true,
			want: []string{"delete 1 conns", "delete jump 198.18.0.10", "delete chain"},
		},
		{
			name:    "a jump listed: the interception goes in below it",
			desired: ours(true, conn), listed: withoutInterception(ours(true, conn)), chainListed: true,
			want: []string{"insert at 2 intercept tcp 169.254.20.10", "insert at 2 intercept udp 169.254.20.10",
				"insert at 2 intercept tcp 198.18.0.10", "insert at 2 intercept udp 198.18.0.10"},
		},
		{
			name:    "an extra copy goes, the first stays",
			desired: ours(true), listed: append(ours(true), interceptions(ours(true))[0]),
			want: []string{"delete intercept tcp 169.254.20.10"},
		},
		{name: "nothing to do", desired: ours(true), listed: ours(true)},
		{name: "an empty chain left behind", desired: ours(true), listed: ours(true), chainListed: true, want: []string{"delete chain"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, op := range planRules(tc.desired, tc.listed, tc.chainListed) {
				got = append(got, opLine(op))
			}
			if !planMatches(got, tc.want) {
				t.Fatalf("plan:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// planMatches: got is want, where "..." stands for more of the line before.
func planMatches(got, want []string) bool {
	i := 0
	for j, w := range want {
		if w == "..." {
			for i < len(got) && got[i] == want[j-1] {
				i++
			}
			continue
		}
		if i >= len(got) || got[i] != w {
			return false
		}
		i++
	}
	return i == len(got)
}
