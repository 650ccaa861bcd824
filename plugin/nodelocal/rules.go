package nodelocal

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// The comments upstream node-cache puts on its rules. Rules carrying them are
// ours, whichever process installed them: they are adopted, deduplicated and
// removed on teardown.
const (
	commentSkipConntrack = "NodeLocal DNS Cache: skip conntrack"
	commentAllowTraffic  = "NodeLocal DNS Cache: allow DNS traffic"
)

// commentKubeDNSConnection marks our rules that leave kube-dns a connection it
// serves (kubedns.go), and commentKubeDNSJump the rule that sends a Service
// IP's TCP segments to them: upstream has neither.
const (
	commentKubeDNSConnection = "NodeLocal DNS Cache: leave kube-dns its open connection"
	commentKubeDNSJump       = "NodeLocal DNS Cache: connections left to kube-dns"
)

// kubeDNSChain holds the rules of the connections left to kube-dns, in the
// raw table, behind one jump per Service IP: every other packet crossing raw
// PREROUTING meets one rule, not one per connection.
const kubeDNSChain = "NODELOCAL-KUBE-DNS-CONNS"

// Family is an IP family; each has its own iptables binary.
type Family int

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func familyOf(ip netip.Addr) Family {
	if ip.Is4() {
		return IPv4
	}
	return IPv6
}

// Rule is one iptables rule in the canonical argument order of `iptables -S`,
// so that listed and desired rules compare as plain strings.
type Rule struct {
	Table string
	Chain string
	Args  []string // the rule specification after -A CHAIN
}

func (r Rule) key() string { return r.Table + " " + r.Chain + " " + strings.Join(r.Args, "\x00") }

func (r Rule) String() string { return fmt.Sprintf("-t %s -A %s %s", r.Table, r.Chain, r.spec()) }

// spec is the rule specification as `iptables -S` prints it and
// iptables-restore reads it: arguments with spaces or quotes quoted.
func (r Rule) spec() string {
	args := make([]string, len(r.Args))
	for i, a := range r.Args {
		if strings.ContainsAny(a, " \"") {
			a = strconv.Quote(a)
		}
		args[i] = a
	}
	return strings.Join(args, " ")
}

// isOurs: an interception rule (raw and filter tables), or an exception to it.
func (r Rule) isOurs() bool {
	return r.hasComment(commentSkipConntrack) || r.hasComment(commentAllowTraffic) || r.isKubeDNSConnection() || r.isKubeDNSJump()
}

func (r Rule) isKubeDNSConnection() bool { return r.hasComment(commentKubeDNSConnection) }

func (r Rule) isKubeDNSJump() bool { return r.hasComment(commentKubeDNSJump) }

func (r Rule) hasComment(comment string) bool { return r.arg("--comment") == comment }

// arg is the value after the first flag in r, or "" if there is none.
func (r Rule) arg(flag string) string {
	if i := slices.Index(r.Args, flag); i >= 0 && i+1 < len(r.Args) {
		return r.Args[i+1]
	}
	return ""
}

// rule builds a rule in canonical order: address, protocol, port, extra
// matches, comment, target.
func rule(table, chain, addrFlag string, ip netip.Addr, proto, portFlag string, port int, target, comment string, matches ...string) Rule {
	args := []string{addrFlag, netip.PrefixFrom(ip, ip.BitLen()).String(), "-p", proto, "-m", proto, portFlag, strconv.Itoa(port)}
	args = append(args, matches...)
	args = append(args, "-m", "comment", "--comment", comment, "-j", target)
	return Rule{Table: table, Chain: chain, Args: args}
}

// socketMatch makes interception depend on a live listener: the packet skips
// conntrack only while a socket is bound to its destination address (not a
// wildcard one). When the cache dies, its sockets close, and the next packet
// is tracked and DNATed to kube-dns by kube-proxy: fail-open with no process
// left to tear anything down. The kernel allows it in raw PREROUTING only.
var socketMatch = []string{"-m", "socket", "--nowildcard"}

// DesiredRules is upstream node-cache's rule set for every listen address:
// traffic to and from the cache skips conntrack (raw NOTRACK) and is accepted
// by the filter table, for UDP and TCP, plus NOTRACK for the health port. With
// failOpen, the PREROUTING interception needs a live listener.
func DesiredRules(listen []netip.AddrPort, healthPort int, failOpen bool) map[Family][]Rule {
	var intercept []string
	if failOpen {
		intercept = socketMatch
	}
	out := map[Family][]Rule{}
	seenHealth := map[netip.Addr]bool{}
	for _, ap := range listen {
		ip, port := ap.Addr(), int(ap.Port())
		var rs []Rule
		for _, proto := range []string{"tcp", "udp"} {
			rs = append(rs,
				rule("raw", "PREROUTING", "-d", ip, proto, "--dport", port, "NOTRACK", commentSkipConntrack, intercept...),
				rule("filter", "INPUT", "-d", ip, proto, "--dport", port, "ACCEPT", commentAllowTraffic),
				rule("raw", "OUTPUT", "-s", ip, proto, "--sport", port, "NOTRACK", commentSkipConntrack),
				rule("filter", "OUTPUT", "-s", ip, proto, "--sport", port, "ACCEPT", commentAllowTraffic),
				// hostNetwork clients' queries are generated locally
				rule("raw", "OUTPUT", "-d", ip, proto, "--dport", port, "NOTRACK", commentSkipConntrack),
			)
		}
		if healthPort > 0 && !seenHealth[ip] {
			seenHealth[ip] = true
			rs = append(rs,
				rule("raw", "OUTPUT", "-d", ip, "tcp", "--dport", healthPort, "NOTRACK", commentSkipConntrack),
				rule("raw", "OUTPUT", "-s", ip, "tcp", "--sport", healthPort, "NOTRACK", commentSkipConntrack),
			)
		}
		f := familyOf(ip)
		out[f] = append(out[f], rs...)
	}
	return out
}

// kubeDNSConnectionRule leaves a TCP connection that kube-dns serves to it:
// CT with no options gives its segments the default conntrack template, which
// makes the NOTRACK of the interception below a no-op, so kube-proxy's DNAT
// still sends them to kube-dns. Unlike a RETURN, it skips no one else's rule.
func kubeDNSConnectionRule(c kubeDNSConnection) Rule {
	return Rule{Table: "raw", Chain: kubeDNSChain, Args: []string{"-s", hostPrefix(c.client.Addr()), "-d", hostPrefix(c.service.Addr()),
		"-p", "tcp", "-m", "tcp", "--sport", strconv.Itoa(int(c.client.Port())), "--dport", strconv.Itoa(int(c.service.Port())),
		"-m", "comment", "--comment", commentKubeDNSConnection, "-j", "CT"}}
}

// kubeDNSJumpRule sends the TCP segments to service through the connections
// left to kube-dns; at the chain's end they come back to the interception.
func kubeDNSJumpRule(service netip.AddrPort) Rule {
	return rule("raw", "PREROUTING", "-d", service.Addr(), "tcp", "--dport", int(service.Port()), kubeDNSChain, commentKubeDNSJump)
}

func hostPrefix(ip netip.Addr) string { return netip.PrefixFrom(ip, ip.BitLen()).String() }

// kubeDNSConnection reads back the connection a rule of
// kubeDNSConnectionRule leaves to kube-dns.
func (r Rule) kubeDNSConnection() (kubeDNSConnection, bool) {
	if !r.isKubeDNSConnection() {
		return kubeDNSConnection{}, false
	}
	end := func(addrFlag, portFlag string) (netip.AddrPort, bool) {
		prefix, err := netip.ParsePrefix(r.arg(addrFlag))
		port, perr := strconv.ParseUint(r.arg(portFlag), 10, 16)
		return netip.AddrPortFrom(prefix.Addr(), uint16(port)), err == nil && perr == nil && prefix.IsSingleIP()
	}
	client, okClient := end("-s", "--sport")
	service, okService := end("-d", "--dport")
	return kubeDNSConnection{client: client, service: service}, okClient && okService
}

// isTo: r matches packets to ap (its -d address and --dport).
func (r Rule) isTo(ap netip.AddrPort) bool {
	return r.arg("-d") == hostPrefix(ap.Addr()) && r.arg("--dport") == strconv.Itoa(int(ap.Port()))
}

// proto is the protocol of a rule built by rule() or listed from one.
func (r Rule) proto() string { return r.arg("-p") }

// synOnly narrows a TCP rule to segments that open a connection, as
// `iptables -S` prints --syn.
func (r Rule) synOnly() Rule {
	args := slices.Clone(r.Args)
	if i := slices.Index(args, "--dport"); i >= 0 && i+2 <= len(args) {
		args = slices.Insert(args, i+2, "--tcp-flags", "FIN,SYN,RST,ACK", "SYN")
	}
	return Rule{Table: r.Table, Chain: r.Chain, Args: args}
}

// isInterception reports whether r is what steers pods' queries to the cache
// (raw PREROUTING NOTRACK); removing it hands the address back to kube-proxy.
func (r Rule) isInterception() bool {
	return r.Table == "raw" && r.Chain == "PREROUTING" && !r.isKubeDNSConnection() && !r.isKubeDNSJump()
}

// ParseListing reads the output of `iptables -t TABLE -S` into rules.
func ParseListing(table, listing string) ([]Rule, error) {
	var rules []Rule
	for i, line := range strings.Split(listing, "\n") {
		if !strings.HasPrefix(line, "-A ") {
			continue // policies (-P), chains (-N), blank lines
		}
		args, err := splitArgs(line)
		if err != nil {
			return nil, fmt.Errorf("%s table listing, line %d: %w", table, i+1, err)
		}
		if len(args) < 2 || args[1] == "" {
			return nil, fmt.Errorf("%s table listing, line %d: no chain in %q", table, i+1, line)
		}
		rules = append(rules, Rule{Table: table, Chain: args[1], Args: args[2:]})
	}
	return rules, nil
}

// splitArgs splits a line the way iptables quotes it: words separated by
// spaces, double-quoted words with backslash escapes.
func splitArgs(line string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inWord, inQuote := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case inQuote && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			inQuote = !inQuote
			inWord = true
		case c == ' ' && !inQuote:
			if inWord {
				args = append(args, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("unterminated quote in %q", line)
	}
	if inWord {
		args = append(args, cur.String())
	}
	return args, nil
}

// RuleChanges is what brings a listed table to the desired rules.
type RuleChanges struct {
	Add    []Rule // missing desired rules
	Delete []Rule // extra copies of desired rules, and our rules that are no longer desired
}

// DiffRules compares the desired rules of some tables with what is listed
// there. Only rules carrying our comments are ever deleted. Deletions keep
// the listing's order, where raw PREROUTING (the interception) comes first.
func DiffRules(desired, listed []Rule) RuleChanges {
	var ch RuleChanges
	want := map[string]bool{}
	for _, r := range desired {
		want[r.key()] = true
	}
	seen := map[string]int{}
	for _, r := range listed {
		k := r.key()
		seen[k]++
		if (want[k] && seen[k] > 1) || (!want[k] && r.isOurs()) {
			ch.Delete = append(ch.Delete, r)
		}
	}
	for _, r := range desired {
		if seen[r.key()] == 0 {
			ch.Add = append(ch.Add, r)
			seen[r.key()] = 1 // a rule desired twice is added once
		}
	}
	return ch
}
