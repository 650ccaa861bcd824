package pillar

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/coredns/caddy/caddyfile"
	"github.com/coredns/coredns/core/dnsserver"

	nodelocalroot "github.com/nodelocal/nodelocal"
)

// attack is a zoned IPv6 address whose zone holds a server block bound to
// every address: Go's address parser accepts it, and before values were
// rendered from their parsed form it went into the Corefile as it was.
const attack = "fe80::1%x 198.18.7.1\n    log\n}\nattacker.:53 {\n    bind 0.0.0.0\n    whoami"

// TestValuesCannotCarryCorefileSyntax: every source of a value refuses the
// attack, naming the source and the value.
func TestValuesCannotCarryCorefileSyntax(t *testing.T) {
	quoted := fmt.Sprintf("%q", attack)
	jsonAttack := strings.ReplaceAll(attack, "\n", `\n`)
	for _, tc := range []struct {
		name    string
		env     fakeEnv
		wantErr string
	}{
		{name: "kube-dns ConfigMap stubDomains", env: fakeEnv{vars: kubeSystemEnv,
			files: withResolv(map[string]string{"/cm/stubDomains": `{"corp": ["` + jsonAttack + `"]}`}), flags: []string{"-kubednscm", "/cm"}},
			wantErr: `kube-dns ConfigMap stubDomains["corp"]: ` + quoted + ` has an IPv6 zone`},
		{name: "kube-dns ConfigMap upstreamNameservers", env: fakeEnv{vars: kubeSystemEnv,
			files: withResolv(map[string]string{"/cm/upstreamNameservers": `["` + jsonAttack + `"]`}), flags: []string{"-kubednscm", "/cm"}},
			wantErr: `kube-dns ConfigMap upstreamNameservers: ` + quoted + ` has an IPv6 zone`},
		{name: "a zone in a ConfigMap server with a port", env: fakeEnv{vars: kubeSystemEnv,
			files: withResolv(map[string]string{"/cm/upstreamNameservers": `["[fe80::1%eth0]:53"]`}), flags: []string{"-kubednscm", "/cm"}},
			wantErr: `kube-dns ConfigMap upstreamNameservers: "[fe80::1%eth0]:53" has an IPv6 zone`},
		{name: "resolv.conf", env: fakeEnv{vars: kubeSystemEnv, files: map[string]string{"/etc/resolv.conf": "nameserver fe80::1%eth0\n"}},
			wantErr: `upstream server in /etc/resolv.conf: "fe80::1%eth0" has an IPv6 zone`},
		{name: "-localip", env: fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-localip", "169.254.20.10,fe80::1%x}"}},
			wantErr: `-localip: "fe80::1%x}" has an IPv6 zone`},
		{name: "-dnssvc as an IP", env: fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-dnssvc", "fe80::1%x}"}},
			wantErr: `-dnssvc: "fe80::1%x}" has an IPv6 zone`},
		{name: "-dnssvc's Service variable", env: fakeEnv{vars: map[string]string{"KUBE_DNS_SERVICE_HOST": attack, "KUBE_DNS_UPSTREAM_SERVICE_HOST": "198.18.0.11"}, files: resolv},
			wantErr: `-dnssvc "kube-dns": $KUBE_DNS_SERVICE_HOST: ` + quoted + ` has an IPv6 zone`},
		{name: "-upstreamsvc's Service variable", env: fakeEnv{vars: map[string]string{"KUBE_DNS_SERVICE_HOST": "198.18.0.10", "KUBE_DNS_UPSTREAM_SERVICE_HOST": attack}, files: resolv},
			wantErr: `-upstreamsvc "kube-dns-upstream": $KUBE_DNS_UPSTREAM_SERVICE_HOST: ` + quoted + ` has an IPv6 zone`},
		{name: "-prometheus-listen-address with a zone", env: fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-prometheus-listen-address", "[fe80::1%x }]:9253"}},
			wantErr: `-prometheus-listen-address: "[fe80::1%x }]:9253" has an IPv6 zone`},
		{name: "-prometheus-listen-address with a second listener", env: fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-prometheus-listen-address", "198.18.5.1:9253 0.0.0.0:9253"}},
			wantErr: `-prometheus-listen-address: "198.18.5.1:9253 0.0.0.0:9253" is not IP:port, [IPv6]:port or :port`},
		{name: "-prometheus-listen-address, IPv6 without brackets", env: fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-prometheus-listen-address", "2001:2::a:9253"}},
			wantErr: `is not IP:port, [IPv6]:port or :port`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := render(t, tc.env)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want it to contain %q\n%s", err, tc.wantErr, out)
			}
			if errors.Is(err, errShape) {
				t.Fatalf("refused by the last check, not by the value's parser: %v", err)
			}
		})
	}
}

// TestValuesRenderFromTheirParsedForm: what is accepted is written in one
// canonical spelling, an IPv6 listener in brackets.
func TestValuesRenderFromTheirParsedForm(t *testing.T) {
	out, err := render(t, fakeEnv{vars: kubeSystemEnv,
		files: withResolv(map[string]string{"/cm/stubDomains": `{"corp": ["2001:0002::0053", "[2001:2::54]:5353"]}`}),
		flags: []string{"-kubednscm", "/cm", "-prometheus-listen-address", "[2001:2::a]:9253"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"forward . 2001:2::53 [2001:2::54]:5353\n", "prometheus [2001:2::a]:9253\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestMetricsAddressOfEitherFamily: the manifests' [$(HOST_IP)]:9253 works on
// IPv4 and IPv6 nodes.
func TestMetricsAddressOfEitherFamily(t *testing.T) {
	for hostIP, want := range map[string]string{"198.18.5.1": "prometheus 198.18.5.1:9253\n", "2001:2::5": "prometheus [2001:2::5]:9253\n"} {
		out, err := render(t, fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-prometheus-listen-address", "[" + hostIP + "]:9253"}})
		if err != nil || !strings.Contains(out, want) {
			t.Fatalf("host IP %s: %v, want %q in\n%s", hostIP, err, want, out)
		}
	}
}

// TestShapeCatchesWhatTheParsersMiss: the last check, given spellings that
// no parser made, refuses every added block, directive, option or argument.
func TestShapeCatchesWhatTheParsersMiss(t *testing.T) {
	v := &Values{LocalIPs: []netip.Addr{netip.MustParseAddr("169.254.20.10")}, DNSServers: []netip.Addr{netip.MustParseAddr("198.18.0.10")},
		Domain: "cluster.local", ClusterDNS: netip.MustParseAddr("198.18.0.11"), Port: 53, MaxConcurrent: 1024,
		Upstreams: []Server{{Addr: netip.MustParseAddr("198.18.9.1")}}, PrometheusEndpoint: Endpoint{Addr: netip.MustParseAddr("169.254.20.10"), Port: 9253}}
	good := v.spell(v.Upstreams, []StubDomain{{Domain: "corp", Servers: []Server{{Addr: netip.MustParseAddr("198.18.7.1")}}}})
	tmpl := nodelocalroot.CorefileTemplate
	check := func(s spelling) error {
		out, err := s.fill(tmpl, v)
		if err != nil {
			return err
		}
		inert, err := good.inert().fill(tmpl, v)
		if err != nil {
			return err
		}
		_, err = checkShape("Corefile", out, inert)
		return err
	}
	if err := check(good); err != nil {
		t.Fatalf("parsed values refused: %v", err)
	}
	for name, edit := range map[string]func(*spelling){
		"a server block":     func(s *spelling) { s.stubs[0].servers = "198.18.7.1\n}\nattacker.:53 {\n    whoami" },
		"a directive":        func(s *spelling) { s.upstreams = "198.18.9.1\n    log" },
		"a forward option":   func(s *spelling) { s.clusterDNS = "198.18.0.11 {\n        tls\n    }\n    forward . 198.18.0.11" },
		"a listener on bind": func(s *spelling) { s.dnsServer = "198.18.0.10 0.0.0.0" },
		"a second key":       func(s *spelling) { s.domain = "cluster.local attacker." },
		"a metrics listener": func(s *spelling) { s.prometheus = "169.254.20.10:9253 0.0.0.0:9253" },
	} {
		t.Run(name, func(t *testing.T) {
			bad := good
			bad.stubs = slices.Clone(good.stubs)
			edit(&bad)
			if err := check(bad); !errors.Is(err, errShape) {
				t.Fatalf("want the shape check to refuse it, got %v", err)
			}
		})
	}
}

// TestStubDomainsCoreDNSWouldRefuse: a ConfigMap that would crash-loop every
// node at its next restart (CoreDNS refuses a zone twice on one listener, or
// more than 15 servers in a forward) is refused with the reason; so is an
// unreasonable number of stub domains.
func TestStubDomainsCoreDNSWouldRefuse(t *testing.T) {
	many := map[string][]string{}
	for i := range maxStubDomains + 1 {
		many[fmt.Sprintf("d%d.corp", i)] = []string{"198.18.7.1"}
	}
	manyServers := make([]string, maxForwardServers+1)
	for i := range manyServers {
		manyServers[i] = fmt.Sprintf("198.18.7.%d", i+1)
	}
	for _, tc := range []struct {
		name, stubs, wantErr string
	}{
		{"the cluster domain", `{"cluster.local": ["198.18.7.1"]}`, `stubDomains: "cluster.local" is a zone the Corefile template already serves`},
		{"the cluster domain, spelled otherwise", `{"Cluster.Local.": ["198.18.7.1"]}`, `stubDomains: "Cluster.Local." is a zone the Corefile template already serves`},
		{"a reverse zone", `{"in-addr.arpa": ["198.18.7.1"]}`, `"in-addr.arpa" is a zone the Corefile template already serves`},
		{"the root", `{".": ["198.18.7.1"]}`, `"." is a zone the Corefile template already serves`},
		{"one zone twice", `{"corp": ["198.18.7.1"], "CORP.": ["198.18.7.2"]}`, `stubDomains: "CORP." and "corp" are the same zone`},
		{"too many servers", `{"corp": ["` + strings.Join(manyServers, `","`) + `"]}`, `stubDomains["corp"]: 16 servers, at most 15 are allowed`},
		{"too many domains", mustJSON(many), `stubDomains: 65 domains, at most 64 are allowed`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := render(t, fakeEnv{vars: kubeSystemEnv, files: withResolv(map[string]string{"/cm/stubDomains": tc.stubs}), flags: []string{"-kubednscm", "/cm"}})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want it to contain %q\n%s", err, tc.wantErr, out)
			}
		})
	}
	// At the bounds, accepted.
	atBound := map[string][]string{}
	for i := range maxStubDomains {
		atBound[fmt.Sprintf("d%d.corp", i)] = manyServers[:maxForwardServers]
	}
	if _, err := render(t, fakeEnv{vars: kubeSystemEnv, files: withResolv(map[string]string{"/cm/stubDomains": mustJSON(atBound)}), flags: []string{"-kubednscm", "/cm"}}); err != nil {
		t.Fatalf("64 stub domains of 15 servers each: %v", err)
	}
}

// TestResolvConfFirstThreeServers: as glibc and kubelet, only the first three
// nameservers of the node's resolv.conf count.
func TestResolvConfFirstThreeServers(t *testing.T) {
	out, err := render(t, fakeEnv{vars: kubeSystemEnv, files: map[string]string{"/etc/resolv.conf": "nameserver 198.18.9.1\nnameserver 198.18.9.2\nnameserver 198.18.9.3\nnameserver 198.18.9.4\nnameserver bogus\n"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "forward . 198.18.9.1 198.18.9.2 198.18.9.3 {") || strings.Contains(out, "198.18.9.4") {
		t.Fatalf("want the first three nameservers only:\n%s", out)
	}
}

// FuzzKubeDNSConfigRender renders random ConfigMap values with the built-in
// template: the last check never has to act (the parsers refused first), and
// an accepted Corefile has the template's blocks with their keys, listeners
// and directives unchanged, plus one block per stub domain of a fixed form.
func FuzzKubeDNSConfigRender(f *testing.F) {
	f.Add(`{"corp": ["198.18.7.1"]}`, `["198.18.8.1"]`)
	f.Add(`{"corp": ["`+strings.ReplaceAll(attack, "\n", `\n`)+`"]}`, ``)
	f.Add(`{"cluster.local": ["198.18.7.1"], "a.b": ["[2001:2::1]:53"]}`, `["fe80::1%}"]`)
	baseline, err := render(f, fakeEnv{vars: kubeSystemEnv, files: resolv})
	if err != nil {
		f.Fatal(err)
	}
	baseBlocks := parseBlocks(f, baseline)
	f.Fuzz(func(t *testing.T, stub, upstream string) {
		out, err := render(t, fakeEnv{vars: kubeSystemEnv, files: withResolv(map[string]string{"/cm/stubDomains": stub, "/cm/upstreamNameservers": upstream}), flags: []string{"-kubednscm", "/cm"}})
		if errors.Is(err, errShape) {
			t.Fatalf("a value reached the last check: the parsers must refuse it first: %v", err)
		}
		if err != nil {
			return
		}
		blocks := parseBlocks(t, out)
		if len(blocks) < len(baseBlocks) {
			t.Fatalf("%d server blocks, fewer than the template's %d:\n%s", len(blocks), len(baseBlocks), out)
		}
		for i, want := range baseBlocks {
			got := blocks[i]
			if !slices.Equal(got.Keys, want.Keys) || !slices.Equal(slices.Sorted(maps.Keys(got.Tokens)), slices.Sorted(maps.Keys(want.Tokens))) ||
				!slices.EqualFunc(got.Tokens["bind"], want.Tokens["bind"], func(a, b caddyfile.Token) bool { return a.Text == b.Text }) {
				t.Fatalf("template block %d changed:\n%s", i, out)
			}
		}
		for _, block := range blocks[len(baseBlocks):] {
			if len(block.Keys) != 1 || !isDomain(strings.TrimSuffix(block.Keys[0], ":53")) ||
				!slices.Equal(slices.Sorted(maps.Keys(block.Tokens)), []string{"bind", "cache", "errors", "forward"}) ||
				joinTokens(block.Tokens["bind"]) != "bind 169.254.20.10 198.18.0.10" {
				t.Fatalf("stub block not of the fixed form:\n%s", out)
			}
			for _, tok := range block.Tokens["forward"][2:] {
				if _, err := parseServer(tok.Text); err != nil {
					t.Fatalf("stub forward to %q: %v\n%s", tok.Text, err, out)
				}
			}
		}
	})
}

func parseBlocks(t testing.TB, corefile string) []caddyfile.ServerBlock {
	blocks, err := caddyfile.Parse("Corefile", bytes.NewReader([]byte(corefile)), dnsserver.Directives)
	if err != nil {
		t.Fatalf("accepted Corefile does not parse: %v\n%s", err, corefile)
	}
	return blocks
}

func joinTokens(tokens []caddyfile.Token) string {
	s := make([]string, len(tokens))
	for i, tok := range tokens {
		s[i] = tok.Text
	}
	return strings.Join(s, " ")
}

func withResolv(extra map[string]string) map[string]string {
	m := maps.Clone(resolv)
	maps.Copy(m, extra)
	return m
}

func mustJSON(m map[string][]string) string {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}
