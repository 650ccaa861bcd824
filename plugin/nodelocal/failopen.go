package nodelocal

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// The nf_tables half of failing open, for what the socket match in raw
// PREROUTING cannot cover (iptables only has it there):
//
//   - Clients on the node itself (hostNetwork pods, the node's processes).
//     Their queries skip conntrack by a NOTRACK in output, where no rule can
//     see whether a listener is bound. So that NOTRACK lives in a table the
//     kernel ties to this process's netlink socket (nftOwner): when the
//     process dies, however it dies, the kernel deletes the table, and the
//     next query is tracked like any other. Each process has its own
//     (surge peers both intercept; each table goes with its process).
//   - The link-local IP, which no kube-proxy rule translates. A packet to it
//     that no interception took is tracked; a rule after conntrack and
//     before kube-proxy's DNAT rewrites its destination to the kube-dns
//     Service IP (the fallback), so kube-proxy picks a kube-dns endpoint as
//     for any Service, following its endpoints as they change, and undoes
//     it all on the answers: conntrack keeps the link-local IP as the
//     original destination. This table outlives the process; a teardown
//     removes it.
//   - Answers must find their way back to clients on the node: their
//     queries leave from a local address (the link-local IP, or the
//     ClusterIP while it is on our interface), which kube-dns's nodes
//     cannot route to, so those flows are masqueraded.
//   - kube-proxy's IPVS mode gives its answers the Service IP as source by
//     itself, not through conntrack, so an answer to a query sent to the
//     link-local IP would come from the fallback: it is given the
//     link-local IP back once IPVS is done with it. With kube-proxy's DNAT
//     (iptables, nftables) conntrack has done that already, and the rule
//     matches nothing.
const (
	fallbackTableName = "nodelocaldns"
	hostTablePrefix   = "nodelocaldns-host-"
)

// The chains' priorities: the host interception where raw OUTPUT is,
// before conntrack; the fallback after conntrack (-200) and before
// kube-proxy's DNAT (-100), where mangle is.
const (
	priorityRaw    = -300
	priorityMangle = -150
	prioritySrcNAT = 100
	// after IPVS's answers (98 in input, 100 in forward) and source NAT
	priorityAfterNAT = 110
)

// hostTable is this process's interception of its node's own clients: a
// NOTRACK per listen address and protocol, as upstream's raw OUTPUT rule,
// as the spec's mode wants it (SYNs only while a start takes TCP over from
// kube-dns), after an exception for each connection left to kube-dns, as
// the raw PREROUTING rules have for pods.
func hostTable(name string, spec ruleSpec) nftTable {
	chain := nftChain{name: "output", kind: "filter", hook: unix.NF_INET_LOCAL_OUT, priority: priorityRaw}
	for _, c := range spec.kubeDNS {
		chain.rules = append(chain.rules, nftRuleOf(matchAddr(c.client.Addr(), false), matchAddr(c.service.Addr(), true),
			matchPort("tcp", false, c.client.Port()), matchPort("tcp", true, c.service.Port()), accept))
	}
	for _, ap := range spec.listen {
		for _, proto := range []string{"tcp", "udp"} {
			parts := []nftPart{matchAddr(ap.Addr(), true), matchPort(proto, true, ap.Port())}
			if proto == "tcp" && spec.mode == modeSYNOnly && slices.Contains(spec.takeover, ap) {
				parts = append(parts, matchSYN())
			}
			chain.rules = append(chain.rules, nftRuleOf(append(parts, notrack)...))
		}
	}
	return nftTable{name: name, owned: true, chains: []nftChain{chain}}
}

// fallbackTable sends queries to one of the cache's own listen addresses
// (local) that nothing intercepted to the fallback of its family, and masquerades the node's
// own queries that leave for kube-dns from a listen address.
func fallbackTable(listen []netip.AddrPort, local []netip.Addr, fallback map[Family]netip.Addr) nftTable {
	pre := nftChain{name: "prerouting", kind: "filter", hook: unix.NF_INET_PRE_ROUTING, priority: priorityMangle}
	// route: a rewritten local packet is routed again, to where it now goes
	out := nftChain{name: "output", kind: "route", hook: unix.NF_INET_LOCAL_OUT, priority: priorityMangle}
	post := nftChain{name: "postrouting", kind: "nat", hook: unix.NF_INET_POST_ROUTING, priority: prioritySrcNAT}
	// answers that IPVS gave the fallback's address: to pods, to the node
	answers := nftChain{name: "answers", kind: "filter", hook: unix.NF_INET_POST_ROUTING, priority: priorityAfterNAT}
	localAnswers := nftChain{name: "local-answers", kind: "filter", hook: unix.NF_INET_LOCAL_IN, priority: priorityAfterNAT}
	for _, ap := range listen {
		for _, proto := range []string{"tcp", "udp"} {
			if to, ok := fallback[familyOf(ap.Addr())]; ok && slices.Contains(local, ap.Addr()) {
				r := nftRuleOf(matchAddr(ap.Addr(), true), matchPort(proto, true, ap.Port()), matchTracked(), setAddr(to, true))
				pre.rules = append(pre.rules, r)
				out.rules = append(out.rules, r)
				back := nftRuleOf(matchReplyTo(ap.Addr()), matchAddr(to, false), matchPort(proto, false, ap.Port()), setAddr(ap.Addr(), false))
				answers.rules = append(answers.rules, back)
				localAnswers.rules = append(localAnswers.rules, back)
			}
			post.rules = append(post.rules, nftRuleOf(matchAddr(ap.Addr(), false), matchPort(proto, true, ap.Port()), masquerade))
		}
	}
	var chains []nftChain
	for _, c := range []nftChain{pre, out, post, answers, localAnswers} {
		if len(c.rules) > 0 {
			chains = append(chains, c)
		}
	}
	return nftTable{name: fallbackTableName, chains: chains}
}

// fallbacks is where each family's own listen addresses (isLocal) fail
// open to: the config's fallback, else its first listen address that is a
// Service IP (the kube-dns ClusterIP, intercepted or on kube-ipvs0).
func (c *Config) fallbacks() map[Family]netip.Addr {
	out := map[Family]netip.Addr{}
	for _, ip := range c.Fallback {
		out[familyOf(ip)] = ip
	}
	for _, ip := range c.IPs() {
		if _, ok := out[familyOf(ip)]; !ok && !c.isLocal(ip) {
			out[familyOf(ip)] = ip
		}
	}
	return out
}

// nftRules owns our nf_tables tables: this process's host interception
// and the shared fallback. The ruleset drives it, under the manager's lock.
type nftRules struct {
	nft     NFTables
	repairs *repairLog
	host    string          // this process's host table
	noOwner bool            // the kernel has no owned tables (before 5.12): iptables intercepts host clients
	made    map[string]bool // the table was in place once: a change is a repair
}

func newNFTRules(nft NFTables, repairs *repairLog) *nftRules {
	id := make([]byte, 4)
	_, _ = rand.Read(id)
	return &nftRules{nft: nft, repairs: repairs, host: hostTablePrefix + hex.EncodeToString(id), made: map[string]bool{}}
}

// interceptsHost: the host clients' interception is ours, not iptables'.
func (n *nftRules) interceptsHost() bool { return !n.noOwner }

// desired are the tables the spec wants: none without fail-open.
func (n *nftRules) desired(spec ruleSpec) []nftTable {
	if !spec.failOpen {
		return nil
	}
	var tables []nftTable
	if n.interceptsHost() {
		tables = append(tables, hostTable(n.host, spec))
	}
	return append(tables, fallbackTable(spec.listen, spec.local, spec.fallback))
}

// sync brings the tables to what is desired, each replaced whole where it
// differs, and deletes those no longer desired (a new config turned
// fail-open or the rules off); it reports whether all are in place, and
// whether it changed any.
func (n *nftRules) sync(tables []nftTable, repair bool) (ok, changed bool) {
	ok = true
	for name := range n.made {
		if !slices.ContainsFunc(tables, func(t nftTable) bool { return t.name == name }) {
			if err := n.nft.Delete(name); err != nil {
				setupErrors.WithLabelValues(errNFTables).Inc()
				log.Errorf("%v", err)
				continue
			}
			delete(n.made, name)
			changed = true
		}
	}
	for _, t := range tables {
		listed, err := n.nft.Rules(t.name)
		if err == nil && sameRules(t, listed) {
			n.made[t.name] = true
			continue
		}
		if err = n.nft.Replace(t); t.owned && errors.Is(err, unix.EOPNOTSUPP) {
			n.noOwner = true
			log.Warningf("This kernel has no nf_tables tables owned by a process (Linux 5.12): clients on the node itself " +
				"(hostNetwork pods, the node's processes) are intercepted by iptables, without condition, and do not fail open")
			return false, true // the spec changes: the caller asks again
		}
		if err != nil {
			setupErrors.WithLabelValues(errNFTables).Inc()
			log.Errorf("%v", err)
			ok = false
			continue
		}
		changed = true
		if repair && n.made[t.name] {
			n.repairs.note(repairRule, "nf_tables table inet "+t.name+" put back")
			log.Warningf("nf_tables table inet %s was changed or removed; put it back", t.name)
		}
		n.made[t.name] = true
	}
	return ok, changed
}

// remove deletes our tables: the host interception first, so the node's
// own clients go to kube-dns through the fallback until it goes too.
func (n *nftRules) remove() {
	for _, name := range []string{n.host, fallbackTableName} {
		if err := n.nft.Delete(name); err != nil {
			log.Errorf("Teardown: %v", err)
		}
		delete(n.made, name)
	}
}

// status is each desired rule, as nft lists it, and whether it is in place.
func (n *nftRules) status(tables []nftTable) []RuleStatus {
	var out []RuleStatus
	for _, t := range tables {
		listed, err := n.nft.Rules(t.name)
		for _, c := range t.chains {
			for _, r := range c.rules {
				out = append(out, RuleStatus{Rule: "nft inet " + t.name + " " + c.name + ": " + r.text,
					InPlace: err == nil && slices.Contains(listed[c.name], r.text)})
			}
		}
	}
	return out
}

// sameRules: listed holds exactly t's rules, chain by chain.
func sameRules(t nftTable, listed map[string][]string) bool {
	count := 0
	for _, c := range t.chains {
		var texts []string
		for _, r := range c.rules {
			texts = append(texts, r.text)
		}
		if !slices.Equal(texts, listed[c.name]) {
			return false
		}
		count++
	}
	return count == len(listed)
}

// text is the tables as nft would list them, for logs and the check's identity.
func nftText(tables []nftTable) string {
	var b strings.Builder
	for _, t := range tables {
		fmt.Fprintf(&b, "table inet %s owned=%v\n", t.name, t.owned)
		for _, c := range t.chains {
			fmt.Fprintf(&b, " chain %s %s hook %d priority %d\n", c.name, c.kind, c.hook, c.priority)
			for _, r := range c.rules {
				fmt.Fprintf(&b, "  %s\n", r.text)
			}
		}
	}
	return b.String()
}
