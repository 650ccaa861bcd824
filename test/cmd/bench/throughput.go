package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nodelocal/nodelocal/test/dnsload"
	"github.com/nodelocal/nodelocal/test/harness"
)

// Servers run on CPU 0, the client on CPU 1.
var serverCPU, clientCPU = []string{"taskset", "-c", "0"}, []string{"taskset", "-c", "1"}

// cachedMix are names every server answers from its cache after warm-up.
const cachedMix = "A:web.default.svc.cluster.local,AAAA:web.default.svc.cluster.local,A:kubernetes.default.svc.cluster.local," +
	"SRV:_http._tcp.web.default.svc.cluster.local,A:www.example.org,AAAA:www.example.org,A:api.example.org,A:cdn.example.org"

type server struct {
	name  string
	env   []string // set on top of the bench's own environment
	start func(node *harness.Node, dir string, wrapper []string) (*harness.Process, error)
}

// client runs the dnsload command in the pod, pinned to the client CPU.
func client(node *harness.Node, args ...string) (*dnsload.Result, error) {
	bin, err := harness.Binary("dnsload")
	if err != nil {
		return nil, err
	}
	argv := append(append(clientCPU, "ip", "netns", "exec", node.Pods[0].Name, bin, "-json", "-target", harness.LocalIP+":53"), args...)
	out, err := exec.Command(argv[0], argv[1:]...).Output()
	var res dnsload.Result
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		return nil, fmt.Errorf("dnsload %v: %v %v: %s", args, err, jerr, out)
	}
	return &res, nil
}

// renderedCorefile is corefile.tmpl as node-cache renders it for this node.
func renderedCorefile(node *harness.Node) (string, error) {
	bin, err := harness.Binary("node-cache")
	if err != nil {
		return "", err
	}
	args, err := node.NodeCacheArgs()
	if err != nil {
		return "", err
	}
	tmpl, err := node.NodeCacheTemplate("")
	if err != nil {
		return "", err
	}
	path := filepath.Join(node.Dir, "throughput.Corefile.tmpl")
	if err := os.WriteFile(path, []byte(tmpl), 0o644); err != nil {
		return "", err
	}
	out, err := exec.Command(bin, append([]string{"-basecorefile", path, "-render"}, args...)...).Output()
	return string(out), err
}

func startWithConfig(node *harness.Node, dir, name, file, config string, wrapper []string, argv ...string) (*harness.Process, error) {
	if err := os.WriteFile(filepath.Join(dir, file), []byte(config), 0o644); err != nil {
		return nil, err
	}
	return node.Start(node.Host, name, append(append([]string{}, wrapper...), argv...))
}

// startStockCoreDNS runs a stock CoreDNS build (coredns, or coredns-plugincfg:
// node-cache's plugins, built with its profile) with corefile.
func startStockCoreDNS(node *harness.Node, dir, build, corefile string, wrapper []string) (*harness.Process, error) {
	bin, err := harness.Binary(build)
	if err != nil {
		return nil, err
	}
	return startWithConfig(node, dir, "coredns", "Corefile", corefile, wrapper, bin, "-conf", filepath.Join(dir, "Corefile"))
}

// shippedEnv is the environment manifests/base/daemonset.yaml gives node-cache:
// GOMEMLIMIT from its memory limit.
var shippedEnv = []string{"GOMEMLIMIT=256MiB"}

var servers = []server{
	{"node-cache: shipped defaults (corefile.tmpl, the DaemonSet's environment, built with build/default.pgo)", shippedEnv, func(node *harness.Node, dir string, wrapper []string) (*harness.Process, error) {
		tmpl, err := node.NodeCacheTemplate("skip_teardown") // the rules stay for the servers after it
		if err != nil {
			return nil, err
		}
		return node.StartNodeCacheProcess("node-cache", tmpl, wrapper)
	}},
	{"stock CoreDNS 1.15: node-cache's plugins without nodelocal, the same Corefile without nodelocal, the same environment and profile (PGO)", shippedEnv, func(node *harness.Node, dir string, wrapper []string) (*harness.Process, error) {
		corefile, err := renderedCorefile(node)
		if err != nil {
			return nil, err
		}
		return startStockCoreDNS(node, dir, "coredns-plugincfg", strings.ReplaceAll(corefile, "    nodelocal\n", ""), wrapper)
	}},
	{"stock CoreDNS 1.15: stock defaults (upstream node-local-dns Corefile, Go's defaults, no PGO; 14 plugins compiled in)", nil, func(node *harness.Node, dir string, wrapper []string) (*harness.Process, error) {
		corefile, err := upstreamCorefile(node)
		if err != nil {
			return nil, err
		}
		return startStockCoreDNS(node, dir, "coredns", corefile, wrapper)
	}},
	{"unbound, 1 thread", nil, func(node *harness.Node, dir string, wrapper []string) (*harness.Process, error) {
		conf := fmt.Sprintf("server:\n  interface: %s\n  port: 53\n  access-control: 0.0.0.0/0 allow\n  do-daemonize: no\n  num-threads: 1\n"+
			"  username: \"\"\n  chroot: \"\"\n  directory: %q\n  pidfile: \"\"\n  use-syslog: no\n  do-ip6: no\n  so-reuseport: yes\n"+
			"  module-config: \"iterator\"\n  msg-cache-size: 64m\n  rrset-cache-size: 128m\n  do-not-query-localhost: no\n"+
			"forward-zone:\n  name: \".\"\n  forward-addr: %s\n", harness.LocalIP, dir, harness.UpstreamIP)
		return startWithConfig(node, dir, "unbound", "unbound.conf", conf, wrapper, "unbound", "-d", "-c", filepath.Join(dir, "unbound.conf"))
	}},
	{"dnsmasq", nil, func(node *harness.Node, dir string, wrapper []string) (*harness.Process, error) {
		return startWithConfig(node, dir, "dnsmasq", "dnsmasq.conf", "", wrapper, "dnsmasq", "-k", "-C", filepath.Join(dir, "dnsmasq.conf"),
			"--no-resolv", "--no-hosts", "--server="+harness.UpstreamIP, "--listen-address="+harness.LocalIP, "--bind-interfaces",
			"--cache-size=10000", "--user=root", "--pid-file=")
	}},
}

// The rows the ratios are taken to.
const (
	stockSameCorefile = 1
	stockDefaults     = 2
)

// upstreamCorefile is upstream node-local-dns's ConfigMap Corefile with its
// placeholders filled in for this node, as stock CoreDNS would run it.
func upstreamCorefile(node *harness.Node) (string, error) {
	root, err := harness.RepoRoot()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(root, "plugin/nodelocal/pillar/testdata/upstream-configmap.Corefile"))
	if err != nil {
		return "", err
	}
	return strings.NewReplacer("__PILLAR__CLUSTER__DNS__", harness.UpstreamIP, "__PILLAR__UPSTREAM__SERVERS__", harness.UpstreamIP).Replace(string(b)), nil
}

type measured struct {
	server           string
	saturated        []float64
	p50, p99         []time.Duration
	cpuPerQuery      []time.Duration // the server's CPU time per answered query at the fixed rate
	missP50, missP99 time.Duration
	upstreamPerMiss  float64
	err              error
}

// throughput compares the servers with the same upstream, query mix and
// clients. The servers take turns, round after round, and each figure is the
// best of its rounds: on a shared machine, interference only ever makes a
// round worse (seen here: whole rounds at two thirds of the usual rate).
func throughput() (string, error) {
	node, err := harness.New(harness.Options{})
	if err != nil {
		return "", err
	}
	defer node.Close()
	rows := make([]measured, len(servers))
	for round := range rounds {
		for i, s := range servers {
			if rows[i].err != nil {
				continue
			}
			fmt.Fprintf(os.Stderr, "   round %d: %s\n", round+1, s.name)
			rows[i].server = s.name
			rows[i].err = measure(node, s, &rows[i], round == 0)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Each server on CPU 0 (`taskset`), the clients on CPU 1, the same upstream (the simulated kube-dns) and the same "+
		"cache-hit mix of 8 names; UDP from the pod to 169.254.20.10 with the node-cache rules in place. The servers take turns, %d rounds; "+
		"each figure is the best of the rounds (interference on this shared machine only makes a round worse), and each ratio the median of the "+
		"ratios within a round (a slow phase of the machine mostly hits the servers of one round alike). Saturated: dnsperf for %v, %d sockets, %d queries outstanding. Latency and the server's CPU time (utime+stime) per answered query: dnsload at a fixed "+
		"10k queries/s for %v. Misses (first round): unique names at 2k queries/s for %v.\n\n",
		rounds, saturateFor, dnsperfSockets, dnsperfOutstanding, latencyFor, missFor)
	b.WriteString("| server | cache-hit qps, saturated | vs stock, same plugins and Corefile | vs stock defaults | CPU per query at 10k qps (vs stock defaults) | p50 / p99 at 10k qps | cache miss p50 / p99 at 2k qps | upstream queries per miss |\n|---|---|---|---|---|---|---|---|\n")
	ratio := func(r measured, to int) string {
		ref := rows[to].saturated
		if rows[to].err != nil || len(ref) != len(r.saturated) {
			return "n/a"
		}
		perRound := make([]float64, len(ref))
		for i := range ref {
			perRound[i] = r.saturated[i] / ref[i]
		}
		return fmt.Sprintf("%.2fx", median(perRound))
	}
	cpu := func(r measured) string {
		c := slices.Min(r.cpuPerQuery).Round(100 * time.Nanosecond)
		if rows[stockDefaults].err != nil {
			return c.String()
		}
		return fmt.Sprintf("%v (%.2fx)", c, float64(c)/float64(slices.Min(rows[stockDefaults].cpuPerQuery)))
	}
	for _, r := range rows {
		if r.err != nil {
			fmt.Fprintf(&b, "| %s | not measured: %v | | | | | | |\n", r.server, r.err)
			continue
		}
		fmt.Fprintf(&b, "| %s | %.0f | %s | %s | %s | %v / %v | %v / %v | %.2f |\n", r.server, slices.Max(r.saturated), ratio(r, stockSameCorefile), ratio(r, stockDefaults), cpu(r),
			slices.Min(r.p50).Round(time.Microsecond), slices.Min(r.p99).Round(time.Microsecond), r.missP50.Round(time.Microsecond), r.missP99.Round(time.Microsecond), r.upstreamPerMiss)
	}
	return b.String(), nil
}

// How the servers are measured.
const (
	rounds             = 5
	saturateFor        = 3 * time.Second
	dnsperfSockets     = 8
	dnsperfOutstanding = 256
	latencyFor         = 2 * time.Second
	missFor            = 5 * time.Second
)

// measure starts s, adds one round of figures to m, and the miss figures when
// withMisses.
func measure(node *harness.Node, s server, m *measured, withMisses bool) error {
	dir, err := os.MkdirTemp(node.Dir, "srv-")
	if err != nil {
		return err
	}
	wrapper := append(append([]string{"env"}, s.env...), serverCPU...)
	p, err := s.start(node, dir, wrapper)
	if err != nil {
		return err
	}
	defer p.Kill()
	if err := node.WaitForAnswer(node.Pods[0], harness.LocalIP, harness.WebSvc, 10*time.Second); err != nil {
		return fmt.Errorf("%v (%s)", err, strings.TrimSpace(tailLines(p.Log(), 3)))
	}
	if _, err := client(node, "-queries", cachedMix, "-rate", "500", "-duration", "1s"); err != nil {
		return err
	}
	qps, err := saturate(node, dir, saturateFor)
	if err != nil {
		return err
	}
	m.saturated = append(m.saturated, qps)
	cpuBefore, err := cpuTime(p.Pid())
	if err != nil {
		return err
	}
	res, err := client(node, "-queries", cachedMix, "-rate", "10000", "-workers", "32", "-duration", latencyFor.String())
	if err != nil {
		return err
	}
	cpuAfter, err := cpuTime(p.Pid())
	if err != nil {
		return err
	}
	perQuery := (cpuAfter - cpuBefore) / time.Duration(max(res.Sent-res.Failed(), 1))
	m.p50, m.p99 = append(m.p50, res.Latencies.P50), append(m.p99, res.Latencies.P99)
	m.cpuPerQuery = append(m.cpuPerQuery, perQuery)
	fmt.Fprintf(os.Stderr, "     %.0f qps saturated; p50 %v, p99 %v, %v CPU per query at 10k qps\n", qps, res.Latencies.P50, res.Latencies.P99, perQuery)
	if !withMisses {
		return nil
	}
	before, _ := node.KubeDNSQueries()
	res, err = client(node, "-queries", "A:"+dnsload.UniqueToken+"."+strings.ReplaceAll(strings.ToLower(s.name[:4]), " ", "")+".example.org",
		"-rate", "2000", "-workers", "32", "-duration", missFor.String())
	if err != nil {
		return err
	}
	after, _ := node.KubeDNSQueries()
	m.missP50, m.missP99 = res.Latencies.P50, res.Latencies.P99
	m.upstreamPerMiss = float64(after-before) / float64(res.Sent)
	return nil
}

// saturate runs dnsperf for d from the pod, pinned to the client CPU, with
// the cache-hit mix, and returns the answered queries per second.
func saturate(node *harness.Node, dir string, d time.Duration) (float64, error) {
	var data strings.Builder
	for _, q := range strings.Split(cachedMix, ",") {
		typ, name, _ := strings.Cut(q, ":")
		fmt.Fprintf(&data, "%s %s\n", name, typ)
	}
	file := filepath.Join(dir, "dnsperf.queries")
	if err := os.WriteFile(file, []byte(data.String()), 0o644); err != nil {
		return 0, err
	}
	argv := append(append([]string{}, clientCPU...), "ip", "netns", "exec", node.Pods[0].Name, "dnsperf", "-s", harness.LocalIP,
		"-d", file, "-l", fmt.Sprint(int(d.Seconds())), "-T", "1", "-c", fmt.Sprint(dnsperfSockets), "-q", fmt.Sprint(dnsperfOutstanding), "-t", "2")
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("dnsperf: %v: %s", err, tailLines(string(out), 3))
	}
	for line := range strings.Lines(string(out)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Queries per second:"); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("dnsperf printed no rate: %s", tailLines(string(out), 5))
}

// cpuTime is the user plus system CPU time a process has used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses: utime and
	// stime are the 12th and 13th, in clock ticks (100 per second on Linux).
	_, rest, _ := strings.Cut(string(b), ") ")
	fields := strings.Fields(rest)
	if len(fields) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %v %v", pid, err1, err2)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
