package pillar

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
)

// KubeDNSConfig is what node-cache reads of the kube-dns ConfigMap, mounted
// as a directory with one file per key (upstream mounts it at /etc/kube-dns),
// parsed: no raw ConfigMap text reaches the Corefile.
type KubeDNSConfig struct {
	Stubs               []StubDomain // sorted by domain: the reload plugin reloads whenever the output changes
	UpstreamNameservers []Server     // replace resolv.conf's servers
}

// StubDomain is a domain whose names go to its own servers.
type StubDomain struct {
	Domain  string
	Servers []Server
}

// Bounds of the ConfigMap. Each stub domain is a server block with its own
// cache; a ConfigMap meant to hold a few corporate domains that holds
// thousands would cost every node memory. CoreDNS's forward refuses more than
// 15 servers at start, and kube-dns allows 3 upstream nameservers.
const (
	maxStubDomains         = 64
	maxForwardServers      = 15
	maxUpstreamNameservers = 3
	kubeDNSConfigMapPrefix = "kube-dns ConfigMap "
	stubDomainsSource      = kubeDNSConfigMapPrefix + "stubDomains"
	upstreamServersSource  = kubeDNSConfigMapPrefix + "upstreamNameservers"
)

// DefaultKubeDNSDir is where upstream's manifest mounts the ConfigMap.
const DefaultKubeDNSDir = "/etc/kube-dns"

// ReadKubeDNSConfig reads the ConfigMap directory with readFile. A missing
// directory or key is an empty config (the ConfigMap is optional); bad content
// is an error.
func ReadKubeDNSConfig(readFile func(string) ([]byte, error), dir string) (*KubeDNSConfig, error) {
	cfg := &KubeDNSConfig{}
	read := func(key string) ([]byte, error) {
		b, err := readFile(filepath.Join(dir, key))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return b, err
	}
	stub, err := read("stubDomains")
	if err != nil {
		return nil, err
	}
	upstream, err := read("upstreamNameservers")
	if err != nil {
		return nil, err
	}
	return cfg, cfg.parse(stub, upstream)
}

// parse applies kube-dns's rules (valid domains, servers given as IP or
// IP:port, at most three upstream nameservers) and CoreDNS's (no zone twice,
// at most 15 servers a forward), within node-cache's bounds.
func (c *KubeDNSConfig) parse(stub, upstream []byte) error {
	if len(strings.TrimSpace(string(stub))) > 0 {
		var raw map[string][]string
		if err := json.Unmarshal(stub, &raw); err != nil {
			return fmt.Errorf("%s: not a JSON object of domain to server list: %v", stubDomainsSource, err)
		}
		if err := c.parseStubs(raw); err != nil {
			return err
		}
	}
	if len(strings.TrimSpace(string(upstream))) > 0 {
		var raw []string
		if err := json.Unmarshal(upstream, &raw); err != nil {
			return fmt.Errorf("%s: not a JSON list of servers: %v", upstreamServersSource, err)
		}
		if len(raw) > maxUpstreamNameservers {
			return fmt.Errorf("%s: %d servers, at most %d are allowed", upstreamServersSource, len(raw), maxUpstreamNameservers)
		}
		servers, err := parseServers(upstreamServersSource, raw)
		if err != nil {
			return err
		}
		c.UpstreamNameservers = servers
	}
	return nil
}

func (c *KubeDNSConfig) parseStubs(raw map[string][]string) error {
	if len(raw) > maxStubDomains {
		return fmt.Errorf("%s: %d domains, at most %d are allowed (each is a server block with its own cache on every node)", stubDomainsSource, len(raw), maxStubDomains)
	}
	seen := map[string]string{}
	for domain, list := range raw {
		if !isDomain(domain) {
			return fmt.Errorf("%s: %q is not a domain name", stubDomainsSource, domain)
		}
		if other, dup := seen[zoneName(domain)]; dup {
			return fmt.Errorf("%s: %q and %q are the same zone: CoreDNS would refuse to start with it twice", stubDomainsSource, min(domain, other), max(domain, other))
		}
		seen[zoneName(domain)] = domain
		if len(list) == 0 {
			return fmt.Errorf("%s: %q has no servers", stubDomainsSource, domain)
		}
		if len(list) > maxForwardServers {
			return fmt.Errorf("%s[%q]: %d servers, at most %d are allowed (CoreDNS's forward refuses more)", stubDomainsSource, domain, len(list), maxForwardServers)
		}
		servers, err := parseServers(fmt.Sprintf("%s[%q]", stubDomainsSource, domain), list)
		if err != nil {
			return err
		}
		c.Stubs = append(c.Stubs, StubDomain{Domain: domain, Servers: servers})
	}
	slices.SortFunc(c.Stubs, func(a, b StubDomain) int { return strings.Compare(a.Domain, b.Domain) })
	return nil
}

// ResolvConfServers lists the nameservers of a resolv.conf.
func ResolvConfServers(content []byte) []string {
	var servers []string
	for _, line := range strings.Split(string(content), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			servers = append(servers, f[1])
		}
	}
	return servers
}
