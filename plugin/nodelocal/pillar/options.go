package pillar

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Options are node-cache's command-line flags: upstream node-cache's, so its
// DaemonSet args work unchanged, plus a few of ours.
type Options struct {
	LocalIPs          string // -localip
	BaseCorefile      string // -basecorefile: the template
	Corefile          string // -corefile (and upstream's -conf): where the rendered Corefile is written
	KubeDNSConfigDir  string // -kubednscm
	UpstreamSvc       string // -upstreamsvc: Service name (its env variable) or IP
	DNSSvc            string // -dnssvc: the intercepted kube-dns Service, name or IPs
	Domain            string // -dnsdomain
	ResolvConf        string // -resolvconf
	IPVS              string // -ipvs auto|true|false
	PrometheusAddress string // -prometheus-listen-address
	SetupInterface    bool
	SetupIPTables     bool
	InterfaceName     string
	SyncInterval      string
	HealthPort        int
	SkipTeardown      bool
	Render            bool // -render: print the rendered Corefile and exit
	MetricsListenAddr string
	ReloadWithSignal  bool
	NodeCondition     bool // -nodecondition
	StartupTaint      bool // -startuptaint

	// What was ignored in the flags and in resolv.conf is logged once, not on
	// every reload tick.
	noteOnce, resolvNoteOnce sync.Once
}

// Default paths, as upstream's manifest mounts them.
const (
	DefaultBaseCorefile = "/etc/coredns/Corefile.base"
	DefaultLocalIP      = "169.254.20.10"
	DefaultDomain       = "cluster.local"
)

// RegisterFlags defines the flags on fs (CoreDNS's own -conf, -pidfile and
// -dns.port stay CoreDNS's).
func RegisterFlags(fs *flag.FlagSet) *Options {
	o := &Options{}
	fs.StringVar(&o.LocalIPs, "localip", DefaultLocalIP, "comma-separated IPs to listen on and intercept: the link-local IP, and the kube-dns ClusterIP in iptables mode")
	fs.StringVar(&o.BaseCorefile, "basecorefile", DefaultBaseCorefile, "Corefile template with __PILLAR__ placeholders (default: this file if it exists, else the built-in template)")
	fs.StringVar(&o.Corefile, "corefile", "", "where to write the rendered Corefile, for inspection (upstream's -conf means the same)")
	fs.StringVar(&o.KubeDNSConfigDir, "kubednscm", "", "directory of the mounted kube-dns ConfigMap (default "+DefaultKubeDNSDir+" if it exists)")
	fs.StringVar(&o.UpstreamSvc, "upstreamsvc", "", "Service whose ClusterIP gets cluster-domain misses: a name (read from its <NAME>_SERVICE_HOST variable) or an IP (default kube-dns-upstream when its variable is set, else kube-dns)")
	fs.StringVar(&o.DNSSvc, "dnssvc", "kube-dns", "the kube-dns Service whose ClusterIP is intercepted: a name (its <NAME>_SERVICE_HOST variable) or its IPs, comma-separated (one per family on a dual-stack node)")
	fs.StringVar(&o.Domain, "dnsdomain", DefaultDomain, "cluster domain")
	fs.StringVar(&o.ResolvConf, "resolvconf", "/etc/resolv.conf", "resolv.conf whose nameservers get non-cluster names, unless the kube-dns ConfigMap sets upstreamNameservers")
	fs.StringVar(&o.IPVS, "ipvs", "auto", "kube-proxy IPVS mode: true, false, or auto (kube-ipvs0 exists); in IPVS mode the ClusterIP is not bound")
	fs.StringVar(&o.PrometheusAddress, "prometheus-listen-address", "", "metrics address for __PILLAR__PROMETHEUS__ENDPOINT__ (default: the first local IP, port 9253) and for upstream's __PROMETHEUS__ENDPOINT__ (default :9253, as upstream)")
	fs.BoolVar(&o.SetupInterface, "setupinterface", true, "manage the interface (when the Corefile has no nodelocal directive)")
	fs.BoolVar(&o.SetupIPTables, "setupiptables", true, "manage the iptables rules (when the Corefile has no nodelocal directive)")
	fs.StringVar(&o.InterfaceName, "interfacename", "nodelocaldns", "interface name (when the Corefile has no nodelocal directive)")
	fs.StringVar(&o.SyncInterval, "syncinterval", "5s", "how often the rules are checked: a duration, or seconds as upstream (when the Corefile has no nodelocal directive)")
	fs.IntVar(&o.HealthPort, "health-port", 8080, "health port exempted from conntrack (when the Corefile has no nodelocal directive)")
	fs.BoolVar(&o.SkipTeardown, "skipteardown", false, "leave the interface and rules in place on exit (when the Corefile has no nodelocal directive)")
	fs.BoolVar(&o.Render, "render", false, "print the rendered Corefile and exit: 0 when it renders and parses, else 1 with the reason")
	fs.StringVar(&o.MetricsListenAddr, "metrics-listen-address", "", "accepted for compatibility: setup-error metrics are served with all others by the prometheus plugin")
	fs.BoolVar(&o.NodeCondition, "nodecondition", false, "set this node's NodeLocalDNSReady condition ($NODE_NAME) while the cache serves: __PILLAR__NODE__CONDITION__ in the template, or the nodelocal directive node-cache adds")
	fs.BoolVar(&o.StartupTaint, "startuptaint", false, "remove this node's node-local-dns.kubernetes.io/not-ready taint ($NODE_NAME) once the cache serves: __PILLAR__STARTUP__TAINT__ in the template, or the nodelocal directive node-cache adds")
	fs.BoolVar(&o.ReloadWithSignal, "reloadwithsignal", false, "accepted for compatibility: the reload plugin picks up changes (SIGUSR1 would stop it, coredns#6263)")
	return o
}

// Environment abstracts the process environment for tests.
type Environment struct {
	Getenv   func(string) string
	ReadFile func(string) ([]byte, error)
	HasIPVS  func() bool // kube-ipvs0 exists
	Template []byte      // the built-in template
	ConfPath string      // CoreDNS's -conf, taken over from coremain
	Explicit map[string]bool
}

// SystemEnvironment is the real process environment.
func SystemEnvironment(builtin []byte, confPath string, explicit map[string]bool) *Environment {
	return &Environment{
		Getenv:   os.Getenv,
		ReadFile: readFileLimited,
		HasIPVS: func() bool {
			_, err := net.InterfaceByName("kube-ipvs0")
			return err == nil
		},
		Template: builtin,
		ConfPath: confPath,
		Explicit: explicit,
	}
}

// maxInputFile bounds every file node-cache reads its configuration from
// (template, kube-dns ConfigMap, resolv.conf): a Corefile is a few KiB, and
// reading a runaway file on every reload tick would cost the node memory.
const maxInputFile = 1 << 20

// readFileLimited reads path, refusing a file larger than maxInputFile.
func readFileLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxInputFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxInputFile {
		return nil, fmt.Errorf("%s is larger than %d KiB: not a Corefile template, ConfigMap value or resolv.conf", path, maxInputFile>>10)
	}
	return b, nil
}

// template returns the template and the path errors should name: an explicit
// -basecorefile, else the default one if present, else CoreDNS's -conf file
// rendered in place, else the built-in template.
func (o *Options) template(env *Environment) ([]byte, string, error) {
	if env.Explicit["basecorefile"] {
		b, err := env.ReadFile(o.BaseCorefile)
		return b, o.BaseCorefile, err
	}
	if b, err := env.ReadFile(o.BaseCorefile); err == nil {
		return b, o.BaseCorefile, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, o.BaseCorefile, err
	}
	if env.ConfPath != "" && !env.Explicit["corefile"] {
		// CoreDNS style: -conf names the Corefile itself, placeholders or not.
		if b, err := env.ReadFile(env.ConfPath); err == nil || !errors.Is(err, fs.ErrNotExist) {
			return b, env.ConfPath, err
		}
	}
	return env.Template, "corefile.tmpl (built in)", nil
}

// OutputPath is where the rendered Corefile is written, or "".
func (o *Options) OutputPath(env *Environment) string {
	if o.Corefile != "" {
		return o.Corefile
	}
	if _, path, err := o.template(env); err == nil && path != env.ConfPath {
		return env.ConfPath // upstream: -conf is the rendered file
	}
	return ""
}

// Values resolves the values of the placeholders tmpl uses, from the flags
// and the environment: a Corefile without a placeholder needs no Service
// variable and no resolv.conf.
func (o *Options) Values(env *Environment, tmpl []byte) (*Values, error) {
	uses := func(placeholder string) bool { return bytes.Contains(tmpl, []byte(placeholder)) }
	v := &Values{Domain: o.Domain, Port: 53, NodeCondition: o.NodeCondition, StartupTaint: o.StartupTaint}
	var err error
	if uses(ClusterDNS) {
		clusterDNS, err := serviceIP(env, "-upstreamsvc", o.upstreamService(env))
		if err != nil {
			return nil, err
		}
		v.ClusterDNS = clusterDNS
	}
	ipvs := o.IPVS == "true" || o.IPVS == "auto" && env.HasIPVS()
	if o.IPVS != "true" && o.IPVS != "false" && o.IPVS != "auto" {
		return nil, fmt.Errorf("-ipvs %q: want true, false or auto", o.IPVS)
	}
	// The kube-dns ClusterIPs: from -dnssvc; missing is fine (upstream's
	// manifest puts it in -localip instead).
	var dnsServers []netip.Addr
	for _, svc := range strings.Split(o.DNSSvc, ",") {
		ip, err := serviceIP(env, "-dnssvc", strings.TrimSpace(svc))
		if _, unset := err.(*serviceUnsetError); err != nil && !unset {
			return nil, err
		}
		if ip.IsValid() {
			dnsServers = append(dnsServers, ip)
		}
	}
	var empty int
	for _, s := range strings.Split(o.LocalIPs, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			empty++ // what the docs' IPVS sed line leaves: "169.254.20.10,"
			continue
		}
		ip, err := parseIP(s)
		if err != nil {
			return nil, fmt.Errorf("-localip: %w", err)
		}
		if slices.Contains(dnsServers, ip) {
			continue // it is __PILLAR__DNS__SERVER__
		}
		v.LocalIPs = append(v.LocalIPs, ip)
	}
	if empty > 0 {
		o.noteOnce.Do(func() { log.Infof("-localip %q: %d empty element(s) ignored", o.LocalIPs, empty) })
	}
	if len(v.LocalIPs) == 0 {
		return nil, fmt.Errorf("-localip %q: no IP besides the kube-dns ClusterIP: the link-local IP comes first, such as 169.254.20.10", o.LocalIPs)
	}
	if !ipvs {
		v.DNSServers = dnsServers
		v.noIPVSFound = o.IPVS == "auto"
	}
	v.PrometheusEndpoint = Endpoint{Addr: v.LocalIPs[0], Port: 9253}
	v.UpstreamPrometheusEndpoint = Endpoint{Port: 9253} // upstream's default
	if o.PrometheusAddress != "" {
		e, err := parseEndpoint(o.PrometheusAddress)
		if err != nil {
			return nil, fmt.Errorf("-prometheus-listen-address: %w", err)
		}
		v.PrometheusEndpoint, v.UpstreamPrometheusEndpoint = e, e
	}
	if uses(MaxConcurrent) {
		if v.MaxConcurrent, err = forwardConcurrency(env); err != nil {
			return nil, err
		}
	}
	if uses(UpstreamServers) {
		resolv, err := env.ReadFile(o.ResolvConf)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("read %s: %w", o.ResolvConf, err)
		}
		if v.Upstreams, err = o.resolvConfServers(resolv); err != nil {
			return nil, err
		}
	}
	if reason := o.upstreamCompatible(tmpl, env); reason != "" {
		directive, err := o.nodeLocalDirective(v.LocalIPs, v.ClusterDNS)
		if err != nil {
			return nil, err
		}
		v.NodeLocal, v.NodeLocalReason = directive, reason
	}
	return v, nil
}

// upstreamService is -upstreamsvc, by default the kube-dns-upstream Service
// when Kubernetes set its variable: forwarding to kube-dns's own ClusterIP,
// which the cache binds, would send every miss back to the cache.
func (o *Options) upstreamService(env *Environment) string {
	if o.UpstreamSvc != "" {
		return o.UpstreamSvc
	}
	if env.Getenv("KUBE_DNS_UPSTREAM_SERVICE_HOST") != "" {
		return "kube-dns-upstream"
	}
	return "kube-dns"
}

// nodeLocalFlags are upstream's flags that configure the interception.
var nodeLocalFlags = []string{"localip", "setupinterface", "setupiptables", "interfacename", "syncinterval", "health-port", "skipteardown"}

// upstreamCompatible says why a Corefile without the nodelocal directive gets
// one after every bind (upstream's flags, or a template with upstream's
// placeholders), or "" when the Corefile is meant exactly as written.
func (o *Options) upstreamCompatible(tmpl []byte, env *Environment) string {
	if anyPlaceholder.Match(tmpl) {
		return "the template has upstream's placeholders"
	}
	for _, f := range nodeLocalFlags {
		if env.Explicit[f] {
			return "upstream's flag -" + f + " is set"
		}
	}
	return ""
}

// resolvConfServers parses the nameservers of the node's resolv.conf. Only
// the first three count, as for glibc and kubelet (which log the rest as
// omitted); the rest are logged once.
func (o *Options) resolvConfServers(content []byte) ([]Server, error) {
	list := ResolvConfServers(content)
	if len(list) > maxUpstreamNameservers {
		o.resolvNoteOnce.Do(func() {
			log.Infof("%s: %d nameservers, only the first %d are used (as by glibc and kubelet): %s omitted",
				o.ResolvConf, len(list), maxUpstreamNameservers, strings.Join(list[maxUpstreamNameservers:], " "))
		})
		list = list[:maxUpstreamNameservers]
	}
	return parseServers("upstream server in "+o.ResolvConf, list)
}

// serviceUnsetError is a Service named by a flag whose variable is not in the
// environment.
type serviceUnsetError struct{ flag, svc, variable string }

func (e *serviceUnsetError) Error() string {
	return fmt.Sprintf("%s %q: $%s is not set (is node-cache in the Service's namespace?): give the Service's IP instead", e.flag, e.svc, e.variable)
}

// serviceIP reads a Service's ClusterIP: an IP as given, or a name through the
// <NAME>_SERVICE_HOST variable Kubernetes sets in pods of its namespace.
func serviceIP(env *Environment, flagName, svc string) (netip.Addr, error) {
	if ip, err := netip.ParseAddr(svc); err == nil {
		if err := checkNoZone(svc, ip); err != nil {
			return netip.Addr{}, fmt.Errorf("%s: %w", flagName, err)
		}
		return ip, nil
	}
	name := strings.ToUpper(strings.ReplaceAll(svc, "-", "_")) + "_SERVICE_HOST"
	value := env.Getenv(name)
	if value == "" {
		return netip.Addr{}, &serviceUnsetError{flagName, svc, name}
	}
	ip, err := parseIP(value)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s %q: $%s: %w", flagName, svc, name, err)
	}
	return ip, nil
}

// nodeLocalDirective is the directive the flags describe, for a Corefile
// without one.
func (o *Options) nodeLocalDirective(localIPs []netip.Addr, clusterDNS netip.Addr) (string, error) {
	var opts []string
	// The cache's own IPs that nodelocal cannot tell from a Service IP: an
	// IPv6 cache's fd00::10 (a link-local one is told by its range).
	if own := slices.DeleteFunc(slices.Clone(localIPs), netip.Addr.IsLinkLocalUnicast); len(own) > 0 {
		opts = append(opts, "local "+joinStrings(own))
	}
	if clusterDNS.IsValid() {
		// where the link-local IP fails open to while no node-cache runs
		opts = append(opts, "fallback "+clusterDNS.String())
	}
	if o.InterfaceName != "nodelocaldns" {
		if !isDomain(o.InterfaceName) || len(o.InterfaceName) > 15 {
			return "", fmt.Errorf("-interfacename %q is not a valid interface name", o.InterfaceName)
		}
		opts = append(opts, "interface "+o.InterfaceName)
	}
	if !o.SetupInterface {
		opts = append(opts, "no_interface")
	}
	if !o.SetupIPTables {
		opts = append(opts, "iptables off")
	}
	interval, err := parseInterval(o.SyncInterval)
	if err != nil {
		return "", err
	}
	opts = append(opts, "check_interval "+interval.String())
	if o.HealthPort < 0 || o.HealthPort > 65535 {
		return "", fmt.Errorf("-health-port %d is not a port", o.HealthPort)
	}
	opts = append(opts, "health_port "+strconv.Itoa(o.HealthPort))
	if o.SkipTeardown {
		opts = append(opts, "skip_teardown")
	}
	if o.NodeCondition {
		opts = append(opts, "node_condition on")
	}
	if o.StartupTaint {
		opts = append(opts, "startup_taint on")
	}
	return "nodelocal {\n    " + strings.Join(opts, "\n    ") + "\n}", nil
}

// parseInterval takes a duration, or a number of seconds as upstream's flag.
func parseInterval(s string) (time.Duration, error) {
	if n, err := strconv.Atoi(s); err == nil && n > 0 {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("-syncinterval %q: want a duration such as 5s, or seconds", s)
	}
	return d, nil
}
