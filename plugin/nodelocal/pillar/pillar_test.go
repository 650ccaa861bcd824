package pillar

import (
	"errors"
	"flag"
	"io/fs"
	"maps"
	"os"
	"strings"
	"testing"

	"github.com/coredns/coredns/core/dnsserver"
	clog "github.com/coredns/coredns/plugin/pkg/log"

	nodelocalroot "github.com/nodelocal/nodelocal"
)

func init() {
	clog.Discard()
	// node-cache's directive list has ours; CoreDNS's default does not.
	dnsserver.Directives = append(dnsserver.Directives, "warm", "coalesce", "nodelocal")
}

// upstreamCorefile is upstream node-cache's ConfigMap Corefile, as its
// manifest ships it after the deploy-time sed: no nodelocal directive.
var upstreamCorefile = func() string {
	b, err := os.ReadFile("testdata/upstream-configmap.Corefile")
	if err != nil {
		panic(err)
	}
	return string(b)
}()

type fakeEnv struct {
	vars  map[string]string
	files map[string]string
	ipvs  bool
	conf  string
	flags []string
}

func (f fakeEnv) build(t testing.TB) (*Options, *Environment) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	o := RegisterFlags(fs)
	if err := fs.Parse(f.flags); err != nil {
		t.Fatal(err)
	}
	explicit := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { explicit[fl.Name] = true })
	env := &Environment{
		Getenv: func(k string) string { return f.vars[k] },
		ReadFile: func(p string) ([]byte, error) {
			if c, ok := f.files[p]; ok {
				return []byte(c), nil
			}
			return nil, &fsPathError{p}
		},
		HasIPVS:  func() bool { return f.ipvs },
		Template: nodelocalroot.CorefileTemplate,
		ConfPath: f.conf,
		Explicit: explicit,
	}
	return o, env
}

type fsPathError struct{ path string }

func (e *fsPathError) Error() string        { return "open " + e.path + ": no such file or directory" }
func (e *fsPathError) Is(target error) bool { return target == fs.ErrNotExist }

var kubeSystemEnv = map[string]string{
	"KUBE_DNS_SERVICE_HOST":          "198.18.0.10",
	"KUBE_DNS_UPSTREAM_SERVICE_HOST": "198.18.0.11",
}

var resolv = map[string]string{"/etc/resolv.conf": "search svc.cluster.local\nnameserver 198.18.9.1\nnameserver 198.18.9.2\noptions ndots:5\n"}

func render(t testing.TB, env fakeEnv) (string, error) {
	t.Helper()
	o, e := env.build(t)
	l := &Loader{Options: o, Env: e}
	out, _, err := l.Render()
	return string(out), err
}

func TestRender(t *testing.T) {
	withFiles := func(extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range resolv {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name    string
		env     fakeEnv
		want    []string // substrings of the output
		wantNot []string
		wantErr string
	}{
		{
			name: "built-in template, iptables mode, upstream's DaemonSet args",
			env: fakeEnv{vars: kubeSystemEnv, files: resolv,
				flags: []string{"-localip", "169.254.20.10,198.18.0.10", "-upstreamsvc", "kube-dns-upstream"}},
			want: []string{"cluster.local:53 {", "bind 169.254.20.10 198.18.0.10\n", "forward . 198.18.0.11 {",
				"forward . 198.18.9.1 198.18.9.2 {\n", "prometheus 169.254.20.10:9253", "health 169.254.20.10:8080", "ready 169.254.20.10:8181"},
			wantNot: []string{"__PILLAR__"},
		},
		{
			name: "IPVS detected: the ClusterIP is not bound",
			env: fakeEnv{vars: kubeSystemEnv, files: resolv, ipvs: true,
				flags: []string{"-localip", "169.254.20.10,198.18.0.10", "-upstreamsvc", "kube-dns-upstream"}},
			want:    []string{"bind 169.254.20.10 \n"},
			wantNot: []string{"198.18.0.10"},
		},
		{
			name: "IPVS forced off",
			env: fakeEnv{vars: kubeSystemEnv, files: resolv, ipvs: true,
				flags: []string{"-upstreamsvc", "kube-dns-upstream", "-ipvs", "false"}},
			want: []string{"bind 169.254.20.10 198.18.0.10\n"},
		},
		{
			name: "raw IPs where no Service variables exist, custom domain and metrics",
			env: fakeEnv{files: resolv, flags: []string{"-upstreamsvc", "198.18.0.11", "-dnssvc", "198.18.0.10",
				"-dnsdomain", "k8s.example", "-prometheus-listen-address", "169.254.20.10:9999"}},
			want: []string{"k8s.example:53 {", "bind 169.254.20.10 198.18.0.10", "prometheus 169.254.20.10:9999"},
		},
		{
			name: "IPv6 and IPv4 in one process; host:port gets the first IP, bracketed",
			env:  fakeEnv{files: resolv, flags: []string{"-localip", "2001:2::a,169.254.20.10", "-upstreamsvc", "2001:2::b", "-dnssvc", "2001:2::c"}},
			want: []string{"bind 2001:2::a 169.254.20.10 2001:2::c", "health [2001:2::a]:8080", "prometheus [2001:2::a]:9253", "forward . 2001:2::b {"},
		},
		{
			name: "kube-dns ConfigMap: stub domains sorted, upstreamNameservers replace resolv.conf",
			env: fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{
				"/cm/stubDomains":         `{"z.corp": ["198.18.7.2"], "a.corp": ["198.18.7.1:5353", "198.18.7.3"]}`,
				"/cm/upstreamNameservers": `["198.18.8.1", "198.18.8.2"]`,
			}), flags: []string{"-upstreamsvc", "kube-dns-upstream", "-kubednscm", "/cm"}},
			want: []string{"forward . 198.18.8.1 198.18.8.2 {\n",
				"a.corp:53 {\n" + stubErrors + "    cache 30\n    bind 169.254.20.10 198.18.0.10\n    forward . 198.18.7.1:5353 198.18.7.3\n}\n\nz.corp:53 {"},
			wantNot: []string{"198.18.9.1"},
		},
		{
			name: "upstream's ConfigMap Corefile: nodelocal added after each bind from the flags",
			env: fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{"/etc/coredns/Corefile.base": upstreamCorefile}),
				flags: []string{"-localip", "169.254.20.10,198.18.0.10", "-upstreamsvc", "kube-dns-upstream", "-setupiptables=false",
					"-syncinterval", "30", "-interfacename", "nlcache", "-skipteardown"}, conf: "/etc/Corefile"},
			want: []string{"bind 169.254.20.10 198.18.0.10\n    nodelocal {\n        fallback 198.18.0.11\n        interface nlcache\n        iptables off\n        check_interval 30s\n        health_port 8080\n        skip_teardown\n    }\n"},
		},
		{
			name: "a plain Corefile through -conf renders in place",
			env: fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{"/my/Corefile": ".:53 {\n    bind __PILLAR__LOCAL__DNS__\n    nodelocal\n    forward . __PILLAR__UPSTREAM__SERVERS__\n}\n"}),
				flags: []string{"-upstreamsvc", "kube-dns-upstream"}, conf: "/my/Corefile"},
			want: []string{"bind 169.254.20.10\n    nodelocal\n    forward . 198.18.9.1 198.18.9.2\n"},
		},
		// First-run and drop-in defects, fixed.
		{
			name: "a kube-system pod with no flags: cluster names go to kube-dns-upstream, not to the ClusterIP the cache binds",
			env:  fakeEnv{vars: kubeSystemEnv, files: resolv},
			want: []string{"bind 169.254.20.10 198.18.0.10\n", "forward . 198.18.0.11 {"},
		},
		{
			name: "a Corefile with no placeholder needs no Service variable and means what it says",
			env: fakeEnv{files: map[string]string{"/my/Corefile": ".:53 {\n    bind 127.0.0.1\n    forward . 198.18.9.1\n}\n"},
				conf: "/my/Corefile"},
			want:    []string{".:53 {\n    bind 127.0.0.1\n    forward . 198.18.9.1\n}\n"},
			wantNot: []string{"nodelocal", "# node-cache"},
		},
		{
			name: "the docs' IPVS sed leaves -localip with an empty element: ignored",
			env:  fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-localip", "169.254.20.10,", "-upstreamsvc", "kube-dns-upstream"}},
			want: []string{"bind 169.254.20.10 198.18.0.10\n"},
		},
		{
			name: "upstream's __PROMETHEUS__ENDPOINT__: upstream's default :9253, or the flag",
			env: fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{"/t": ".:53 {\n    bind __PILLAR__LOCAL__DNS__\n    prometheus __PROMETHEUS__ENDPOINT__\n    forward . __PILLAR__UPSTREAM__SERVERS__\n}\n"}),
				flags: []string{"-basecorefile", "/t"}},
			want: []string{"prometheus :9253\n"},
		},
		{
			name: "upstream's __PROMETHEUS__ENDPOINT__ from -prometheus-listen-address",
			env: fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{"/t": ".:53 {\n    bind __PILLAR__LOCAL__DNS__\n    prometheus __PROMETHEUS__ENDPOINT__\n    forward . __PILLAR__UPSTREAM__SERVERS__\n}\n"}),
				flags: []string{"-basecorefile", "/t", "-prometheus-listen-address", "198.18.5.1:9253"}},
			want: []string{"prometheus 198.18.5.1:9253\n"},
		},
		{
			name: "kube-dns ConfigMap upstreamNameservers: asked over UDP, as upstream does",
			env: fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{
				"/t":                      ".:53 {\n    bind __PILLAR__LOCAL__DNS__\n    forward . __PILLAR__UPSTREAM__SERVERS__ {\n            force_tcp\n    }\n}\n",
				"/cm/upstreamNameservers": `["198.18.8.1"]`,
			}), flags: []string{"-basecorefile", "/t", "-kubednscm", "/cm"}},
			want:    []string{"forward . 198.18.8.1\n}"},
			wantNot: []string{"force_tcp"},
		},
		{
			name: "without upstreamNameservers the template's force_tcp stays",
			env: fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{
				"/t": ".:53 {\n    bind __PILLAR__LOCAL__DNS__\n    forward . __PILLAR__UPSTREAM__SERVERS__ {\n            force_tcp\n    }\n}\n",
			}), flags: []string{"-basecorefile", "/t"}},
			want: []string{"forward . 198.18.9.1 198.18.9.2 {\n            force_tcp\n    }"},
		},
		{
			name: "upstream's ConfigMap Corefile: -render says why nodelocal was added",
			env:  fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{"/etc/coredns/Corefile.base": upstreamCorefile})},
			want: []string{"# node-cache added the nodelocal directive after every bind: the template has upstream's placeholders.\n"},
		},
		{
			name: "a plain Corefile with upstream's flags: nodelocal added, and said why",
			env: fakeEnv{files: map[string]string{"/my/Corefile": ".:53 {\n    bind 169.254.20.10\n    forward . 198.18.9.1\n}\n"},
				conf: "/my/Corefile", flags: []string{"-setupiptables=false"}},
			want: []string{"# node-cache added the nodelocal directive after every bind: upstream's flag -setupiptables is set.\n", "bind 169.254.20.10\n    nodelocal {\n        iptables off"},
		},
		{name: "forwarding cluster names to the ClusterIP the cache binds", env: fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-upstreamsvc", "kube-dns"}},
			wantErr: "the Corefile forwards to 198.18.0.10, one of node-cache's own listen IPs: every query would come back to the cache. Forward cluster names to the kube-dns-upstream Service instead"},
		{name: "the same off an IPVS node: says how to render for one", env: fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-upstreamsvc", "kube-dns"}},
			wantErr: "off the node (a -render elsewhere), say so with -ipvs true"},
		{name: "IPVS mode: the ClusterIP is kube-proxy's, cluster names may go to it", env: fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-upstreamsvc", "kube-dns", "-ipvs", "true"}},
			want: []string{"bind 169.254.20.10 \n", "fallback 198.18.0.10\n", "forward . 198.18.0.10 {"}},
		{name: "the node's resolv.conf names the cache itself", env: fakeEnv{vars: kubeSystemEnv, files: map[string]string{"/etc/resolv.conf": "nameserver 169.254.20.10\n"}},
			wantErr: "the Corefile forwards to 169.254.20.10, one of node-cache's own listen IPs"},
		{name: "any __NAME__ left, whatever its prefix", env: fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{"/t": ".:53 {\n    bind __PILLAR__LOCAL__DNS__\n    prometheus __METRICS__ADDRESS__\n}\n"}),
			flags: []string{"-basecorefile", "/t"}}, wantErr: "unknown placeholder __METRICS__ADDRESS__"},
		{
			name: "kube-dns ConfigMap: an IPv6 upstream and one with a port are valid",
			env: fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{"/cm/upstreamNameservers": `["2001:2::53", "198.18.8.1:5353"]`}),
				flags: []string{"-kubednscm", "/cm"}},
			want: []string{"forward . 2001:2::53 198.18.8.1:5353 {"},
		},
		{
			name: "an IPv6-only node",
			env: fakeEnv{files: map[string]string{"/etc/resolv.conf": "nameserver 2001:2::53\n"},
				flags: []string{"-localip", "2001:2::a", "-dnssvc", "2001:2::c", "-upstreamsvc", "2001:2::b"}},
			want: []string{"bind 2001:2::a 2001:2::c\n", "local 2001:2::a\n", "forward . 2001:2::b {", "forward . 2001:2::53 {", "health [2001:2::a]:8080"},
		},
		{
			name: "the node condition off by default, on with -nodecondition",
			env:  fakeEnv{vars: kubeSystemEnv, files: resolv},
			want: []string{"        node_condition off\n"}, wantNot: []string{"node_condition on"},
		},
		{
			name: "-nodecondition",
			env:  fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-nodecondition"}},
			want: []string{"        node_condition on\n        startup_taint off\n"}, wantNot: []string{"node_condition off"},
		},
		{
			name: "-startuptaint",
			env:  fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-startuptaint"}},
			want: []string{"        node_condition off\n        startup_taint on\n"},
		},
		{
			name: "-nodecondition with upstream's flags: in the directive node-cache adds",
			env: fakeEnv{files: withFiles(map[string]string{"/t": ".:53 {\n    bind 169.254.20.10\n    forward . 198.18.0.11\n}\n"}),
				flags: []string{"-basecorefile", "/t", "-nodecondition", "-startuptaint", "-setupinterface=false"}},
			want: []string{"        node_condition on\n        startup_taint on\n"},
		},
		{
			name: "a dual-stack node: -dnssvc names the ClusterIP of each family, so neither counts as the cache's own",
			env: fakeEnv{vars: kubeSystemEnv, files: resolv,
				flags: []string{"-localip", "169.254.20.10,fd00::10,198.18.0.10,fd00:10:96::a", "-dnssvc", "kube-dns,fd00:10:96::a"}},
			want: []string{"bind 169.254.20.10 fd00::10 198.18.0.10 fd00:10:96::a\n", "local 169.254.20.10 fd00::10\n"},
		},
		{
			name: "upstream's flags on an IPv6 node: the directive names the cache's own IP",
			env: fakeEnv{files: withFiles(map[string]string{"/t": ".:53 {\n    bind fd00::10 fd00:10:96::a\n    forward . 2001:2::53\n}\n"}),
				flags: []string{"-localip", "fd00::10,fd00:10:96::a", "-dnssvc", "fd00:10:96::a", "-upstreamsvc", "fd00:10:96::b", "-basecorefile", "/t", "-setupinterface=false"}},
			want: []string{"    nodelocal {\n        local fd00::10\n        no_interface\n"},
		},
		{name: "interface name over 15 bytes", env: fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-setupiptables=false", "-interfacename", "nodelocaldns-cache0"}},
			wantErr: `-interfacename "nodelocaldns-cache0" is not a valid interface name`},
		{name: "health port out of range", env: fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-health-port", "70000"}},
			wantErr: "-health-port 70000 is not a port"},
		{name: "kube-dns ConfigMap upstreamNameservers not a list", env: fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{"/cm/upstreamNameservers": `"198.18.8.1"`}),
			flags: []string{"-kubednscm", "/cm"}}, wantErr: "upstreamNameservers"},
		// Bad inputs, with their messages.
		{name: "Service variable missing", env: fakeEnv{files: resolv, flags: []string{"-upstreamsvc", "kube-dns-upstream"}},
			wantErr: `-upstreamsvc "kube-dns-upstream": $KUBE_DNS_UPSTREAM_SERVICE_HOST is not set`},
		{name: "garbage in a Service variable", env: fakeEnv{files: resolv, vars: map[string]string{"KUBE_DNS_UPSTREAM_SERVICE_HOST": "1.2.3.4 }\nerrors {"},
			flags: []string{"-upstreamsvc", "kube-dns-upstream"}}, wantErr: "is not an IP address"},
		{name: "garbage local IP", env: fakeEnv{files: resolv, vars: kubeSystemEnv, flags: []string{"-localip", "169.254.20.10,__PILLAR__", "-upstreamsvc", "kube-dns-upstream"}},
			wantErr: `-localip: "__PILLAR__" is not an IP address`},
		{name: "directive injected through the domain", env: fakeEnv{files: resolv, vars: kubeSystemEnv, flags: []string{"-upstreamsvc", "kube-dns-upstream", "-dnsdomain", "x {\n log\n}"}},
			wantErr: "is not a domain name"},
		{name: "FQDN upstream in resolv.conf", env: fakeEnv{vars: kubeSystemEnv, files: map[string]string{"/etc/resolv.conf": "nameserver dns.example.org\n"},
			flags: []string{"-upstreamsvc", "kube-dns-upstream"}}, wantErr: `"dns.example.org" is not an IP address or IP:port (names such as FQDNs are not allowed)`},
		{name: "no upstream anywhere", env: fakeEnv{vars: kubeSystemEnv, flags: []string{"-upstreamsvc", "kube-dns-upstream"}}, wantErr: "no upstream servers"},
		{name: "FQDN stub domain server", env: fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{"/cm/stubDomains": `{"corp": ["ns1.corp.example"]}`}),
			flags: []string{"-upstreamsvc", "kube-dns-upstream", "-kubednscm", "/cm"}}, wantErr: `stubDomains["corp"]: "ns1.corp.example" is not an IP address`},
		{name: "bad stub domain name", env: fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{"/cm/stubDomains": `{"a b": ["198.18.7.1"]}`}),
			flags: []string{"-upstreamsvc", "kube-dns-upstream", "-kubednscm", "/cm"}}, wantErr: `"a b" is not a domain name`},
		{name: "stubDomains not JSON", env: fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{"/cm/stubDomains": `corp: 198.18.7.1`}),
			flags: []string{"-upstreamsvc", "kube-dns-upstream", "-kubednscm", "/cm"}}, wantErr: "stubDomains: not a JSON object"},
		{name: "too many upstreamNameservers", env: fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{"/cm/upstreamNameservers": `["198.18.8.1","198.18.8.2","198.18.8.3","198.18.8.4"]`}),
			flags: []string{"-upstreamsvc", "kube-dns-upstream", "-kubednscm", "/cm"}}, wantErr: "at most 3"},
		{name: "unknown placeholder", env: fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{"/t": ".:53 {\n    bind __PILLAR__LOCAL__DNS__\n    forward . __PILLAR__UPSTREAM__DNS__\n}\n"}),
			flags: []string{"-upstreamsvc", "kube-dns-upstream", "-basecorefile", "/t"}}, wantErr: "unknown placeholder __PILLAR__UPSTREAM__DNS__"},
		{name: "unreadable template", env: fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-upstreamsvc", "kube-dns-upstream", "-basecorefile", "/missing"}},
			wantErr: "read template: open /missing"},
		{name: "template that does not parse", env: fakeEnv{vars: kubeSystemEnv, files: withFiles(map[string]string{"/t": ".:53 {\n    bind __PILLAR__LOCAL__DNS__\n    bogus\n}\n"}),
			flags: []string{"-upstreamsvc", "kube-dns-upstream", "-basecorefile", "/t"}}, wantErr: "Unknown directive 'bogus'"},
		{name: "bad ipvs value", env: fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-upstreamsvc", "kube-dns-upstream", "-ipvs", "maybe"}}, wantErr: `-ipvs "maybe"`},
		{name: "bad sync interval", env: fakeEnv{vars: kubeSystemEnv, files: resolv, flags: []string{"-upstreamsvc", "kube-dns-upstream", "-syncinterval", "soon"}}, wantErr: `-syncinterval "soon"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := render(t, tc.env)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want it to contain %q\n%s", err, tc.wantErr, out)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.wantNot {
				if strings.Contains(out, w) {
					t.Errorf("output has %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestRenderIsDeterministic(t *testing.T) {
	env := fakeEnv{vars: kubeSystemEnv, files: map[string]string{
		"/etc/resolv.conf": resolv["/etc/resolv.conf"],
		"/cm/stubDomains":  `{"c.corp": ["198.18.7.3"], "a.corp": ["198.18.7.1"], "b.corp": ["198.18.7.2"]}`,
	}, flags: []string{"-upstreamsvc", "kube-dns-upstream", "-kubednscm", "/cm"}}
	first, err := render(t, env)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if out, _ := render(t, env); out != first {
			t.Fatal("two renders of the same inputs differ: the reload plugin would reload for nothing")
		}
	}
}

func TestLoaderKeepsLastGoodCorefile(t *testing.T) {
	files := map[string]string{"/etc/resolv.conf": "nameserver 198.18.9.1\n", "/t": nodelocalTemplate("198.18.0.11")}
	env := fakeEnv{vars: kubeSystemEnv, files: files, flags: []string{"-upstreamsvc", "kube-dns-upstream", "-basecorefile", "/t"}}
	o, e := env.build(t)
	l := &Loader{Options: o, Env: e}
	first, err := l.Load("dns")
	if err != nil {
		t.Fatal(err)
	}
	files["/t"] = ".:53 {\n    bind __PILLAR__NOPE__\n}\n"
	second, err := l.Load("dns")
	if err != nil {
		t.Fatalf("a broken template after a good one must not fail the load: %v", err)
	}
	if string(second.Body()) != string(first.Body()) {
		t.Fatal("a broken template replaced the running Corefile")
	}
	// A fresh loader with only a broken template fails: nothing to fall back on.
	l2 := &Loader{Options: o, Env: e}
	if _, err := l2.Load("dns"); err == nil || !errors.Is(err, err) || !strings.Contains(err.Error(), "__PILLAR__NOPE__") {
		t.Fatalf("first load of a broken template: %v", err)
	}
}

func nodelocalTemplate(upstream string) string {
	return ".:53 {\n    bind __PILLAR__LOCAL__DNS__\n    nodelocal\n    forward . " + upstream + "\n}\n"
}

func FuzzRender(f *testing.F) {
	f.Add(string(nodelocalroot.CorefileTemplate), "cluster.local", "198.18.9.1")
	f.Add(upstreamCorefile, "x.y", "198.18.9.1:53")
	f.Fuzz(func(t *testing.T, tmpl, domain, upstream string) {
		env := fakeEnv{vars: kubeSystemEnv, files: map[string]string{"/t": tmpl, "/etc/resolv.conf": "nameserver " + upstream + "\n"},
			flags: []string{"-upstreamsvc", "kube-dns-upstream", "-basecorefile", "/t", "-dnsdomain", domain}}
		out, err := render(t, env)
		if errors.Is(err, errShape) {
			t.Fatalf("a value reached the last check: the parsers must refuse it first: %v", err)
		}
		if err != nil {
			return
		}
		if strings.Contains(out, "__PILLAR__") {
			t.Fatalf("placeholder left in accepted output:\n%s", out)
		}
		if strings.ContainsAny(domain, "{}\n \"") && strings.Contains(out, domain) && strings.Contains(tmpl, DNSDomain) {
			t.Fatalf("domain %q with Corefile syntax went in", domain)
		}
	})
}

func FuzzKubeDNSConfig(f *testing.F) {
	f.Add(`{"corp": ["198.18.7.1"]}`, `["198.18.8.1"]`)
	f.Add(`{"a b": ["x"]}`, `[1]`)
	f.Fuzz(func(t *testing.T, stub, upstream string) {
		c := &KubeDNSConfig{}
		if err := c.parse([]byte(stub), []byte(upstream)); err != nil {
			return
		}
		for _, stub := range c.Stubs {
			if !isDomain(stub.Domain) || len(stub.Servers) == 0 || len(stub.Servers) > maxForwardServers {
				t.Fatalf("accepted stub domain %q: %v", stub.Domain, stub.Servers)
			}
			for _, s := range stub.Servers {
				if s.Addr.Zone() != "" || strings.ContainsAny(s.String(), " \t\n{}") {
					t.Fatalf("accepted server %q", s)
				}
			}
		}
	})
}

// TestForwardConcurrencyFollowsTheMemoryLimit: max_concurrent is one query per
// 256 KiB of the limit, from GOMEMLIMIT, else the cgroup, else as for 256 MiB.
func TestForwardConcurrencyFollowsTheMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		name    string
		vars    map[string]string
		files   map[string]string
		want    string
		wantErr string
	}{
		{name: "the DaemonSet's GOMEMLIMIT", vars: map[string]string{"GOMEMLIMIT": "256MiB"}, want: "max_concurrent 1024\n"},
		{name: "a larger limit", vars: map[string]string{"GOMEMLIMIT": "1GiB"}, want: "max_concurrent 4096\n"},
		{name: "a tiny limit: the floor", vars: map[string]string{"GOMEMLIMIT": "16MiB"}, want: "max_concurrent 128\n"},
		{name: "cgroup v2", files: map[string]string{"/sys/fs/cgroup/memory.max": "536870912\n"}, want: "max_concurrent 2048\n"},
		{name: "cgroup v1 without a limit", files: map[string]string{"/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"}, want: "max_concurrent 1024\n"},
		{name: "no limit known", want: "max_concurrent 1024\n"},
		{name: "GOMEMLIMIT garbage", vars: map[string]string{"GOMEMLIMIT": "lots"}, wantErr: `$GOMEMLIMIT "lots" is not a size such as 256MiB`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vars := map[string]string{}
			maps.Copy(vars, kubeSystemEnv)
			maps.Copy(vars, tc.vars)
			files := map[string]string{}
			maps.Copy(files, resolv)
			maps.Copy(files, tc.files)
			out, err := render(t, fakeEnv{vars: vars, files: files})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Count(out, tc.want); got != 4 {
				t.Fatalf("%q in %d forwards, want all 4:\n%s", tc.want, got, out)
			}
		})
	}
}

func TestReadFileLimited(t *testing.T) {
	dir := t.TempDir()
	small, big := dir+"/small", dir+"/big"
	os.WriteFile(small, []byte(".:53 {\n}\n"), 0o644)
	os.WriteFile(big, make([]byte, maxInputFile+1), 0o644)
	if b, err := readFileLimited(small); err != nil || string(b) != ".:53 {\n}\n" {
		t.Fatalf("small file: %q, %v", b, err)
	}
	if _, err := readFileLimited(big); err == nil || !strings.Contains(err.Error(), "is larger than 1024 KiB") {
		t.Fatalf("oversized file: %v", err)
	}
	if _, err := readFileLimited(dir + "/missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}
