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
// as a directory with one file per key (upstream mounts it at /etc/kube-dns).
type KubeDNSConfig struct {
	StubDomains         map[string][]string // domain -> IP or IP:port servers
	UpstreamNameservers []string            // replace resolv.conf's servers
}

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

func (c *KubeDNSConfig) parse(stub, upstream []byte) error {
	if len(strings.TrimSpace(string(stub))) > 0 {
		if err := json.Unmarshal(stub, &c.StubDomains); err != nil {
			return fmt.Errorf("kube-dns ConfigMap stubDomains: not a JSON object of domain to server list: %v", err)
		}
	}
	if len(strings.TrimSpace(string(upstream))) > 0 {
		if err := json.Unmarshal(upstream, &c.UpstreamNameservers); err != nil {
			return fmt.Errorf("kube-dns ConfigMap upstreamNameservers: not a JSON list of servers: %v", err)
		}
	}
	return c.validate()
}

// validate applies kube-dns's rules: valid domains, servers given as IP or
// IP:port, at most three upstream nameservers.
func (c *KubeDNSConfig) validate() error {
	for domain, servers := range c.StubDomains {
		if !isDomain(domain) {
			return fmt.Errorf("kube-dns ConfigMap stubDomains: %q is not a domain name", domain)
		}
		if len(servers) == 0 {
			return fmt.Errorf("kube-dns ConfigMap stubDomains: %q has no servers", domain)
		}
		for _, s := range servers {
			if err := checkServer(s); err != nil {
				return fmt.Errorf("kube-dns ConfigMap stubDomains[%q]: %w", domain, err)
			}
		}
	}
	if len(c.UpstreamNameservers) > 3 {
		return fmt.Errorf("kube-dns ConfigMap upstreamNameservers: %d servers, at most 3 are allowed", len(c.UpstreamNameservers))
	}
	for _, s := range c.UpstreamNameservers {
		if err := checkServer(s); err != nil {
			return fmt.Errorf("kube-dns ConfigMap upstreamNameservers: %w", err)
		}
	}
	return nil
}

func (c *KubeDNSConfig) sortedStubDomains() []string {
	domains := make([]string, 0, len(c.StubDomains))
	for d := range c.StubDomains {
		domains = append(domains, d)
	}
	slices.Sort(domains) // the reload plugin reloads whenever the output changes
	return domains
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
