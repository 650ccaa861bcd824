// Package pillar renders node-cache's Corefile template: it fills the
// __PILLAR__ placeholders from flags, the environment, resolv.conf and the
// kube-dns ConfigMap, adds the ConfigMap's stub domains, and gives the result
// to CoreDNS through a Caddyfile loader.
package pillar

import (
	"bytes"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// The placeholders of the template.
const (
	LocalDNS           = "__PILLAR__LOCAL__DNS__"
	DNSServer          = "__PILLAR__DNS__SERVER__"
	DNSDomain          = "__PILLAR__DNS__DOMAIN__"
	ClusterDNS         = "__PILLAR__CLUSTER__DNS__"
	UpstreamServers    = "__PILLAR__UPSTREAM__SERVERS__"
	PrometheusEndpoint = "__PILLAR__PROMETHEUS__ENDPOINT__"
	// UpstreamPrometheusEndpoint is upstream node-cache's newest placeholder,
	// without the PILLAR prefix.
	UpstreamPrometheusEndpoint = "__PROMETHEUS__ENDPOINT__"
	// MaxConcurrent is forward's max_concurrent, sized from the memory limit.
	MaxConcurrent = "__PILLAR__MAX__CONCURRENT__"
	// NodeCondition is nodelocal's node_condition: on with -nodecondition.
	NodeCondition = "__PILLAR__NODE__CONDITION__"
	// StartupTaint is nodelocal's startup_taint: on with -startuptaint.
	StartupTaint = "__PILLAR__STARTUP__TAINT__"
)

var knownPlaceholders = []string{LocalDNS, DNSServer, DNSDomain, ClusterDNS, UpstreamServers, PrometheusEndpoint, UpstreamPrometheusEndpoint, MaxConcurrent, NodeCondition, StartupTaint}

// anyPlaceholder is any __NAME__ token: one left after rendering is an error,
// whatever its prefix.
var anyPlaceholder = regexp.MustCompile(`__[A-Z][A-Z0-9_]*__`)

// Values are what the placeholders become, each parsed: Render writes them
// from their parsed form, so no value can carry a directive into the Corefile.
type Values struct {
	LocalIPs           []netip.Addr // the cache's own IPs (link-local)
	DNSServers         []netip.Addr // kube-dns ClusterIPs (one per family), also intercepted; none in IPVS mode
	Domain             string       // cluster domain
	ClusterDNS         netip.Addr   // kube-dns-upstream ClusterIP: where cluster names go
	Upstreams          []Server     // resolvers for everything else
	PrometheusEndpoint Endpoint     // the metrics listener
	// UpstreamPrometheusEndpoint is upstream's __PROMETHEUS__ENDPOINT__:
	// -prometheus-listen-address, else upstream's default :9253.
	UpstreamPrometheusEndpoint  Endpoint
	Port                        int // DNS port of stub-domain blocks
	MaxConcurrent               int // each forward's max_concurrent
	NodeCondition, StartupTaint bool
	// NodeLocal is the nodelocal directive to add after every bind of a
	// Corefile that has none, in upstream-compatible mode (upstream's flags,
	// or a template with placeholders); empty: add none. NodeLocalReason
	// says which, in a comment on top of the rendered Corefile.
	NodeLocal, NodeLocalReason string
	// noIPVSFound: -ipvs auto found no kube-ipvs0 (off the node, or before
	// kube-proxy), so the ClusterIP is bound.
	noIPVSFound bool
}

// upstreamTCPForward is a forward of the upstream servers over TCP only.
var upstreamTCPForward = regexp.MustCompile(`forward[ \t]+\.[ \t]+` + UpstreamServers + `[ \t]*\{\s*force_tcp\s*\}`)

// Render fills tmpl's placeholders and appends a block per stub domain; path
// is the template's, for errors and relative imports. As a
// last check, the result must have the shape of the same template filled
// with inert values: whatever a value held, it added no server block, no
// directive, no option and no argument.
func Render(tmpl []byte, path string, v *Values, kubeDNS *KubeDNSConfig) ([]byte, error) {
	if err := v.validate(tmpl); err != nil {
		return nil, err
	}
	if kubeDNS == nil {
		kubeDNS = &KubeDNSConfig{}
	}
	upstreams := v.Upstreams
	if len(kubeDNS.UpstreamNameservers) > 0 {
		upstreams = kubeDNS.UpstreamNameservers
		// As upstream: the ConfigMap's nameservers are asked over UDP.
		tmpl = upstreamTCPForward.ReplaceAll(tmpl, []byte("forward . "+UpstreamServers))
	}
	if len(upstreams) == 0 && bytes.Contains(tmpl, []byte(UpstreamServers)) {
		return nil, fmt.Errorf("no upstream servers: none in resolv.conf and none in the kube-dns ConfigMap's upstreamNameservers")
	}
	spelled := v.spell(upstreams, kubeDNS.Stubs)
	rendered, err := spelled.fill(tmpl, v)
	if err != nil {
		return nil, err
	}
	inert, err := spelled.inert().fill(tmpl, v)
	if err != nil {
		return nil, err
	}
	blocks, err := checkShape(path, rendered, inert)
	if err != nil {
		return nil, err
	}
	if err := checkStubZones(blocks, kubeDNS.Stubs); err != nil {
		return nil, err
	}
	if err := checkNoForwardToSelf(rendered, v.listenIPs()); err != nil {
		if v.noIPVSFound {
			err = fmt.Errorf("%w. If kube-proxy runs in IPVS mode, the ClusterIP is kube-proxy's, not node-cache's: on the node, "+
				"node-cache finds kube-ipvs0 and leaves it out; off the node (a -render elsewhere), say so with -ipvs true", err)
		}
		return nil, err
	}
	return rendered, nil
}

// stubErrors is the errors directive of a stub domain's block: each kind of
// error logged once per 30 s, then counted, as in the shipped template.
const stubErrors = `    errors {
        consolidate 30s "i/o timeout$" warning show_first
        consolidate 30s "^concurrent queries exceeded maximum" warning show_first
        consolidate 30s ".*" error show_first
    }
`

// spelling is every value as the Corefile spells it, made from its parsed
// form; a list is its elements separated by spaces.
type spelling struct {
	local, localHost, dnsServer, domain, clusterDNS, upstreams  string
	prometheus, upstreamPrometheus, nodeCondition, startupTaint string
	stubs                                                       []stubSpelling
}

type stubSpelling struct{ domain, servers string }

func (v *Values) spell(upstreams []Server, stubs []StubDomain) spelling {
	s := spelling{
		local:              joinStrings(v.LocalIPs),
		localHost:          hostPort(v.LocalIPs[0], ""),
		domain:             v.Domain,
		upstreams:          joinStrings(upstreams),
		prometheus:         v.PrometheusEndpoint.String(),
		upstreamPrometheus: v.UpstreamPrometheusEndpoint.String(),
		nodeCondition:      onOff(v.NodeCondition),
		startupTaint:       onOff(v.StartupTaint),
	}
	s.dnsServer = joinStrings(v.DNSServers)
	if v.ClusterDNS.IsValid() {
		s.clusterDNS = v.ClusterDNS.String()
	}
	for _, stub := range stubs {
		s.stubs = append(s.stubs, stubSpelling{domain: stub.Domain, servers: joinStrings(stub.Servers)})
	}
	return s
}

// inert is the same spelling with every word replaced by one that cannot be
// Corefile syntax: what the template alone makes of the Corefile.
func (s spelling) inert() spelling {
	words := func(text string) string {
		return strings.TrimSpace(strings.Repeat("v ", len(strings.Fields(text))))
	}
	out := spelling{
		local: words(s.local), localHost: words(s.localHost), dnsServer: words(s.dnsServer), domain: words(s.domain),
		clusterDNS: words(s.clusterDNS), upstreams: words(s.upstreams), prometheus: words(s.prometheus),
		upstreamPrometheus: words(s.upstreamPrometheus), nodeCondition: words(s.nodeCondition),
		startupTaint: words(s.startupTaint),
	}
	for _, stub := range s.stubs {
		out.stubs = append(out.stubs, stubSpelling{domain: words(stub.domain), servers: words(stub.servers)})
	}
	return out
}

// fill writes the Corefile: tmpl with its placeholders replaced, a block per
// stub domain, and the nodelocal directive where v asks for it.
func (s spelling) fill(tmpl []byte, v *Values) ([]byte, error) {
	// In host:port position (health, ready, prometheus) one address fits: the first local IP.
	out := strings.ReplaceAll(string(tmpl), LocalDNS+":", s.localHost+":")
	out = strings.NewReplacer(
		LocalDNS, s.local,
		DNSServer, s.dnsServer,
		DNSDomain, s.domain,
		ClusterDNS, s.clusterDNS,
		UpstreamServers, s.upstreams,
		PrometheusEndpoint, s.prometheus,
		UpstreamPrometheusEndpoint, s.upstreamPrometheus,
		MaxConcurrent, strconv.Itoa(v.MaxConcurrent),
		NodeCondition, s.nodeCondition,
		StartupTaint, s.startupTaint,
	).Replace(out)
	if left := anyPlaceholder.FindString(out); left != "" {
		return nil, fmt.Errorf("unknown placeholder %s in the template: the known ones are %s", left, strings.Join(knownPlaceholders, ", "))
	}
	var b bytes.Buffer
	b.WriteString(out)
	listen := strings.TrimSpace(s.local + " " + s.dnsServer)
	for _, stub := range s.stubs {
		fmt.Fprintf(&b, "\n%s:%d {\n%s    cache 30\n    bind %s\n    forward . %s\n}\n", stub.domain, v.Port, stubErrors, listen, stub.servers)
	}
	rendered := b.Bytes()
	if v.NodeLocal != "" && !hasDirective(b.String(), "nodelocal") {
		header := "# node-cache added the nodelocal directive after every bind: " + v.NodeLocalReason + ".\n"
		rendered = append([]byte(header), addAfterBind(rendered, v.NodeLocal)...)
	}
	return rendered, nil
}

// listenIPs are the addresses the cache binds.
func (v *Values) listenIPs() []netip.Addr {
	return append(slices.Clone(v.LocalIPs), v.DNSServers...)
}

var forwardLine = regexp.MustCompile(`(?m)^[ \t]*forward[ \t]+\S+((?:[ \t]+[^\s{}]+)+)`)

// checkNoForwardToSelf refuses a Corefile that forwards to one of the cache's
// own listen addresses on port 53: every such query would come back to the
// cache, and the loop plugin would stop the process.
func checkNoForwardToSelf(corefile []byte, listen []netip.Addr) error {
	for _, m := range forwardLine.FindAllSubmatch(corefile, -1) {
		for _, to := range strings.Fields(string(m[1])) {
			to = strings.TrimPrefix(to, "dns://")
			ap, err := netip.ParseAddrPort(to)
			if err != nil {
				ip, err := netip.ParseAddr(to)
				if err != nil {
					continue // a file such as /etc/resolv.conf, or another scheme
				}
				ap = netip.AddrPortFrom(ip, 53)
			}
			if ap.Port() == 53 && slices.Contains(listen, ap.Addr()) {
				return fmt.Errorf("the Corefile forwards to %s, one of node-cache's own listen IPs: every query would come back to the cache. "+
					"Forward cluster names to the kube-dns-upstream Service instead (-upstreamsvc kube-dns-upstream, or its ClusterIP), "+
					"and keep the cache's IPs out of the node's resolv.conf", ap.Addr())
			}
		}
	}
	return nil
}

// validate checks the values tmpl uses.
func (v *Values) validate(tmpl []byte) error {
	if len(v.LocalIPs) == 0 {
		return fmt.Errorf("no local IP: set -localip, such as -localip 169.254.20.10")
	}
	if !v.ClusterDNS.IsValid() && bytes.Contains(tmpl, []byte(ClusterDNS)) {
		return fmt.Errorf("no cluster DNS IP: set -upstreamsvc to the kube-dns-upstream Service name (its KUBE_DNS_UPSTREAM_SERVICE_HOST variable) or to its IP")
	}
	if !isDomain(v.Domain) {
		return fmt.Errorf("cluster domain %q is not a domain name", v.Domain)
	}
	return nil
}

func hostPort(ip netip.Addr, port string) string {
	if ip.Is6() {
		return "[" + ip.String() + "]" + port
	}
	return ip.String() + port
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

// joinStrings spells a list as the Corefile takes it: space-separated.
func joinStrings[T fmt.Stringer](list []T) string {
	s := make([]string, len(list))
	for i, e := range list {
		s[i] = e.String()
	}
	return strings.Join(s, " ")
}

var directiveLine = regexp.MustCompile(`(?m)^\s*([a-z0-9_]+)\b`)

func hasDirective(corefile, name string) bool {
	for _, m := range directiveLine.FindAllStringSubmatch(corefile, -1) {
		if m[1] == name {
			return true
		}
	}
	return false
}

var bindLine = regexp.MustCompile(`(?m)^([ \t]*)bind\b[^\n{}]*$`)

// addAfterBind puts directive on the line after every bind, with its indent.
func addAfterBind(corefile []byte, directive string) []byte {
	return bindLine.ReplaceAllFunc(corefile, func(line []byte) []byte {
		indent := line[:len(line)-len(bytes.TrimLeft(line, " \t"))]
		block := strings.ReplaceAll(directive, "\n", "\n"+string(indent))
		return slices.Concat(line, []byte("\n"), indent, []byte(block))
	})
}
