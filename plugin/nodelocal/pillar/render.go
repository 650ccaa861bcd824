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
)

var anyPlaceholder = regexp.MustCompile(`__PILLAR__[A-Z0-9_]*__`)

// Values are what the placeholders become. Every field is validated by
// Render, so no value can carry a directive into the Corefile.
type Values struct {
	LocalIPs           []netip.Addr // the cache's own IPs (link-local)
	DNSServer          netip.Addr   // kube-dns ClusterIP, also intercepted; invalid (zero) in IPVS mode
	Domain             string       // cluster domain
	ClusterDNS         netip.Addr   // kube-dns-upstream ClusterIP: where cluster names go
	Upstreams          []string     // IP or IP:port resolvers for everything else
	PrometheusEndpoint string       // host:port of the metrics
	Port               int          // DNS port of stub-domain blocks
	// NodeLocal is the nodelocal directive to add after every bind of a
	// Corefile that has none (upstream's ConfigMap Corefile); empty: add none.
	NodeLocal string
}

// Render fills tmpl's placeholders and appends a block per stub domain.
func Render(tmpl []byte, v *Values, kubeDNS *KubeDNSConfig) ([]byte, error) {
	if err := v.validate(); err != nil {
		return nil, err
	}
	upstreams := v.Upstreams
	if kubeDNS != nil && len(kubeDNS.UpstreamNameservers) > 0 {
		upstreams = kubeDNS.UpstreamNameservers
	}
	if len(upstreams) == 0 {
		return nil, fmt.Errorf("no upstream servers: none in resolv.conf and none in the kube-dns ConfigMap's upstreamNameservers")
	}
	local := joinAddrs(v.LocalIPs)
	dnsServer := ""
	if v.DNSServer.IsValid() {
		dnsServer = v.DNSServer.String()
	}
	out := string(tmpl)
	// In host:port position (health, ready, prometheus) one address fits: the first local IP.
	out = strings.ReplaceAll(out, LocalDNS+":", hostPort(v.LocalIPs[0], "")+":")
	out = strings.NewReplacer(
		LocalDNS, local,
		DNSServer, dnsServer,
		DNSDomain, v.Domain,
		ClusterDNS, v.ClusterDNS.String(),
		UpstreamServers, strings.Join(upstreams, " "),
		PrometheusEndpoint, v.PrometheusEndpoint,
	).Replace(out)
	if left := anyPlaceholder.FindString(out); left != "" {
		return nil, fmt.Errorf("unknown placeholder %s in the template: the known ones are %s", left,
			strings.Join([]string{LocalDNS, DNSServer, DNSDomain, ClusterDNS, UpstreamServers, PrometheusEndpoint}, ", "))
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
	if v.NodeLocal != "" && !hasDirective(b.String(), "nodelocal") {
		return addAfterBind(b.Bytes(), v.NodeLocal), nil
	}
	return b.Bytes(), nil
}

func (v *Values) validate() error {
	if len(v.LocalIPs) == 0 {
		return fmt.Errorf("no local IP: set -localip, such as -localip 169.254.20.10")
	}
	if !v.ClusterDNS.IsValid() {
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
