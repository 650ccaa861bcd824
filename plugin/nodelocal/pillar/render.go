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

	"github.com/miekg/dns"
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
)

var knownPlaceholders = []string{LocalDNS, DNSServer, DNSDomain, ClusterDNS, UpstreamServers, PrometheusEndpoint, UpstreamPrometheusEndpoint, MaxConcurrent}

// anyPlaceholder is any __NAME__ token: one left after rendering is an error,
// whatever its prefix.
var anyPlaceholder = regexp.MustCompile(`__[A-Z][A-Z0-9_]*__`)

// Values are what the placeholders become. Every field is validated by
// Render, so no value can carry a directive into the Corefile.
type Values struct {
	LocalIPs           []netip.Addr // the cache's own IPs (link-local)
	DNSServer          netip.Addr   // kube-dns ClusterIP, also intercepted; invalid (zero) in IPVS mode
	Domain             string       // cluster domain
	ClusterDNS         netip.Addr   // kube-dns-upstream ClusterIP: where cluster names go
	Upstreams          []string     // IP or IP:port resolvers for everything else
	PrometheusEndpoint string       // host:port of the metrics
	// UpstreamPrometheusEndpoint is upstream's __PROMETHEUS__ENDPOINT__:
	// -prometheus-listen-address, else upstream's default :9253.
	UpstreamPrometheusEndpoint string
	Port                       int // DNS port of stub-domain blocks
	MaxConcurrent              int // each forward's max_concurrent
	// NodeLocal is the nodelocal directive to add after every bind of a
	// Corefile that has none, in upstream-compatible mode (upstream's flags,
	// or a template with placeholders); empty: add none. NodeLocalReason
	// says which, in a comment on top of the rendered Corefile.
	NodeLocal, NodeLocalReason string
}

// upstreamTCPForward is a forward of the upstream servers over TCP only.
var upstreamTCPForward = regexp.MustCompile(`forward[ \t]+\.[ \t]+` + UpstreamServers + `[ \t]*\{\s*force_tcp\s*\}`)

// Render fills tmpl's placeholders and appends a block per stub domain.
func Render(tmpl []byte, v *Values, kubeDNS *KubeDNSConfig) ([]byte, error) {
	if err := v.validate(tmpl); err != nil {
		return nil, err
	}
	out := string(tmpl)
	upstreams := v.Upstreams
	if kubeDNS != nil && len(kubeDNS.UpstreamNameservers) > 0 {
		upstreams = kubeDNS.UpstreamNameservers
		// As upstream: the ConfigMap's nameservers are asked over UDP.
		out = upstreamTCPForward.ReplaceAllString(out, "forward . "+UpstreamServers)
	}
	if len(upstreams) == 0 && strings.Contains(out, UpstreamServers) {
		return nil, fmt.Errorf("no upstream servers: none in resolv.conf and none in the kube-dns ConfigMap's upstreamNameservers")
	}
	local := joinAddrs(v.LocalIPs)
	dnsServer, clusterDNS := "", ""
	if v.DNSServer.IsValid() {
		dnsServer = v.DNSServer.String()
	}
	if v.ClusterDNS.IsValid() {
		clusterDNS = v.ClusterDNS.String()
	}
	// In host:port position (health, ready, prometheus) one address fits: the first local IP.
	out = strings.ReplaceAll(out, LocalDNS+":", hostPort(v.LocalIPs[0], "")+":")
	out = strings.NewReplacer(
		LocalDNS, local,
		DNSServer, dnsServer,
		DNSDomain, v.Domain,
		ClusterDNS, clusterDNS,
		UpstreamServers, strings.Join(upstreams, " "),
		PrometheusEndpoint, v.PrometheusEndpoint,
		UpstreamPrometheusEndpoint, v.UpstreamPrometheusEndpoint,
		MaxConcurrent, strconv.Itoa(v.MaxConcurrent),
	).Replace(out)
	if left := anyPlaceholder.FindString(out); left != "" {
		return nil, fmt.Errorf("unknown placeholder %s in the template: the known ones are %s", left, strings.Join(knownPlaceholders, ", "))
	}
	var b bytes.Buffer
	b.WriteString(out)
	if kubeDNS != nil {
		listen := local
		if dnsServer != "" {
			listen += " " + dnsServer
		}
		for _, domain := range kubeDNS.sortedStubDomains() {
			fmt.Fprintf(&b, "\n%s:%d {\n    errors\n    cache 30\n    bind %s\n    forward . %s\n}\n",
				domain, v.Port, listen, strings.Join(kubeDNS.StubDomains[domain], " "))
		}
	}
	rendered := b.Bytes()
	if v.NodeLocal != "" && !hasDirective(b.String(), "nodelocal") {
		header := "# node-cache added the nodelocal directive after every bind: " + v.NodeLocalReason + ".\n"
		rendered = append([]byte(header), addAfterBind(rendered, v.NodeLocal)...)
	}
	if err := checkNoForwardToSelf(rendered, v.listenIPs()); err != nil {
		return nil, err
	}
	return rendered, nil
}

// listenIPs are the addresses the cache binds.
func (v *Values) listenIPs() []netip.Addr {
	if v.DNSServer.IsValid() {
		return append(slices.Clone(v.LocalIPs), v.DNSServer)
	}
	return v.LocalIPs
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
	for _, u := range v.Upstreams {
		if err := checkServer(u); err != nil {
			return fmt.Errorf("upstream server: %w", err)
		}
	}
	if err := checkHostPort(v.PrometheusEndpoint); err != nil {
		return fmt.Errorf("prometheus endpoint: %w", err)
	}
	if err := checkHostPort(v.UpstreamPrometheusEndpoint); err != nil {
		return fmt.Errorf("prometheus endpoint: %w", err)
	}
	return nil
}

// isDomain accepts names made of letters, digits, '-', '_' and dots, so a
// domain can never carry Corefile syntax.
func isDomain(s string) bool {
	if s == "" || strings.ContainsFunc(s, func(r rune) bool {
		return !(r == '.' || r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
	}) {
		return false
	}
	_, ok := dns.IsDomainName(s)
	return ok
}

// checkServer accepts an IP or IP:port; names are refused, as kube-dns does.
func checkServer(s string) error {
	if _, err := netip.ParseAddr(s); err == nil {
		return nil
	}
	if _, err := netip.ParseAddrPort(s); err == nil {
		return nil
	}
	return fmt.Errorf("%q is not an IP address or IP:port (names such as FQDNs are not allowed)", s)
}

func checkHostPort(s string) error {
	if _, err := netip.ParseAddrPort(s); err == nil {
		return nil
	}
	if port, ok := strings.CutPrefix(s, ":"); ok && isPort(port) {
		return nil
	}
	return fmt.Errorf("%q is not IP:port or :port", s)
}

func isPort(s string) bool {
	var p int
	_, err := fmt.Sscanf(s, "%d", &p)
	return err == nil && fmt.Sprint(p) == s && p > 0 && p < 65536
}

func hostPort(ip netip.Addr, port string) string {
	if ip.Is6() {
		return "[" + ip.String() + "]" + port
	}
	return ip.String() + port
}

func joinAddrs(ips []netip.Addr) string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
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
