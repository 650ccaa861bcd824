package pillar

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// Every value that reaches the Corefile is parsed here first and rendered
// from its parsed form (String), never from the raw input: an address cannot
// carry a space, a brace or a newline into the Corefile. IPv6 zones are
// refused: Go's parser takes any text after '%' as the zone, and CoreDNS's
// forward cannot use one anyway.

// Server is a DNS server a forward sends to.
type Server struct {
	Addr netip.Addr
	Port uint16 // 0: none given, CoreDNS's forward uses 53
}

// String is the server as the Corefile's forward takes it.
func (s Server) String() string {
	if s.Port == 0 {
		return s.Addr.String()
	}
	return netip.AddrPortFrom(s.Addr, s.Port).String()
}

// dialed is where the forward sends.
func (s Server) dialed() netip.AddrPort {
	if s.Port == 0 {
		return netip.AddrPortFrom(s.Addr, 53)
	}
	return netip.AddrPortFrom(s.Addr, s.Port)
}

// parseServer takes an IP or IP:port; names are refused, as kube-dns does.
func parseServer(s string) (Server, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		return Server{Addr: ip}, checkNoZone(s, ip)
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return Server{}, fmt.Errorf("%q is not an IP address or IP:port (names such as FQDNs are not allowed)", s)
	}
	if err := checkNoZone(s, ap.Addr()); err != nil {
		return Server{}, err
	}
	if ap.Port() == 0 {
		return Server{}, fmt.Errorf("%q: port 0 is not a port", s)
	}
	return Server{Addr: ap.Addr(), Port: ap.Port()}, nil
}

// parseServers parses each of list, naming source in the error.
func parseServers(source string, list []string) ([]Server, error) {
	servers := make([]Server, 0, len(list))
	for _, s := range list {
		server, err := parseServer(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", source, err)
		}
		servers = append(servers, server)
	}
	return servers, nil
}

// parseIP takes one IP address without a zone.
func parseIP(s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	return ip, checkNoZone(s, ip)
}

func checkNoZone(s string, ip netip.Addr) error {
	if ip.Zone() != "" {
		return fmt.Errorf("%q has an IPv6 zone (the text after %%): zones are not allowed, give an address without one", s)
	}
	return nil
}

// Endpoint is a listener's address: IP:port, or :port for every address.
type Endpoint struct {
	Addr netip.Addr // invalid: every address
	Port uint16
}

// String is the endpoint as the Corefile's prometheus, health and ready take
// it: an IPv6 address in brackets.
func (e Endpoint) String() string {
	if !e.Addr.IsValid() {
		return ":" + strconv.Itoa(int(e.Port))
	}
	return netip.AddrPortFrom(e.Addr, e.Port).String()
}

// parseEndpoint takes IP:port ([IPv6]:port) or :port. An IPv4 address in
// brackets is taken too, so that manifests can write [$(HOST_IP)]:9253 for
// nodes of either family.
func parseEndpoint(s string) (Endpoint, error) {
	if bracketed, port, ok := strings.Cut(strings.TrimPrefix(s, "["), "]:"); ok && strings.HasPrefix(s, "[") {
		if ip, err := netip.ParseAddr(bracketed); err == nil && ip.Is4() {
			s = bracketed + ":" + port
		}
	}
	if port, ok := strings.CutPrefix(s, ":"); ok {
		if p, err := strconv.ParseUint(port, 10, 16); err == nil && p > 0 && strconv.FormatUint(p, 10) == port {
			return Endpoint{Port: uint16(p)}, nil
		}
	} else if ap, err := netip.ParseAddrPort(s); err == nil && ap.Port() > 0 {
		return Endpoint{Addr: ap.Addr(), Port: ap.Port()}, checkNoZone(s, ap.Addr())
	}
	return Endpoint{}, fmt.Errorf("%q is not IP:port, [IPv6]:port or :port", s)
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

// zoneName is a domain as CoreDNS compares zones: lower case, fully qualified.
func zoneName(domain string) string {
	return dns.Fqdn(strings.ToLower(domain))
}
