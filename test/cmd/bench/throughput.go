package main

import (
	"encoding/json"
	"fmt"
	"math"
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

// client runs the dnsload command in the pod against ip, pinned to the client CPU.
func client(node *harness.Node, ip string, args ...string) (*dnsload.Result, error) {
	bin, err := harness.Binary("dnsload")
	if err != nil {
		return nil, err
	}
	argv := append(append(clientCPU, "ip", "netns", "exec", node.Pods[0].Name, bin, "-json", "-target", ip+":53"), args...)
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
	return startWithConfig(node, dir, build, "Corefile", corefile, wrapper, bin, "-conf", filepath.Join(dir, "Corefile"))
}

// onIP moves a Corefile written for node-cache's addresses to ip: its
// listeners, health, ready and metrics endpoints. The kube-dns ClusterIP
// stays node-cache's alone (a server sharing it would count as a surge peer).
func onIP(corefile, ip string) string {
	return strings.NewReplacer(harness.LocalIP, ip, " "+harness.ClusterIP, "", "prometheus :9253", "prometheus "+ip+":9253").Replace(corefile)
}

// shippedEnv is the environment manifests/base/daemonset.yaml gives node-cache:
// GOMEMLIMIT from its memory limit.
var shippedEnv = []string{"GOMEMLIMIT=256MiB"}

// server is one of the compared caches. node-cache answers on the link-local
// IP it manages; each other server on an address of its own beside it, all
// with the same conntrack exemption (see throughput).
type server struct {
	name  string
	ip    string
	env   []string // set on top of the bench's own environment
	start func(node *harness.Node, ip, dir string, wrapper []string) (*harness.Process, error)
}

var servers = []server{
	{"node-cache: shipped defaults (corefile.tmpl, the DaemonSet's environment, built with build/default.pgo)", harness.LocalIP, shippedEnv, func(node *harness.Node, _, _ string, wrapper []string) (*harness.Process, error) {
		tmpl, err := node.NodeCacheTemplate("")
		if err != nil {
			return nil, err
		}
		return node.StartNodeCacheProcess("node-cache", tmpl, wrapper)
	}},
	{"stock CoreDNS 1.15: node-cache's plugins without nodelocal, the same Corefile without nodelocal, the same environment and profile (PGO)", "169.254.20.11", shippedEnv, func(node *harness.Node, ip, dir string, wrapper []string) (*harness.Process, error) {
		corefile, err := renderedCorefile(node)
		if err != nil {
			return nil, err
		}
		return startStockCoreDNS(node, dir, "coredns-plugincfg", onIP(strings.NewReplacer("    coalesce\n", "").Replace(harness.WithoutNodeLocal(corefile)), ip), wrapper)
	}},
	{"stock CoreDNS 1.15: stock defaults (upstream node-local-dns Corefile, Go's defaults, no PGO; 14 plugins compiled in)", "169.254.20.12", nil, startStockDefaults},
	{"stock CoreDNS 1.15: stock defaults again, a second instance (A/A: how far two identical servers differ in this run)", "169.254.20.16", nil, startStockDefaults},
	{"node-cache with Go's GC defaults (-heapfloor 0, as the stock rows); nodelocal without interface and rules, on an address of its own", "169.254.20.15", shippedEnv, func(node *harness.Node, ip, _ string, wrapper []string) (*harness.Process, error) {
		tmpl, err := node.NodeCacheTemplate("")
		if err != nil {
			return nil, err
		}
		// The directive node-cache adds from its flags: no interface, no rules.
		tmpl = strings.NewReplacer("__PILLAR__LOCAL__DNS__", ip, " __PILLAR__DNS__SERVER__", "").Replace(harness.WithoutNodeLocal(tmpl))
		return node.StartNodeCacheProcess("node-cache-gc-defaults", tmpl, wrapper, "-localip", ip, "-setupinterface=false", "-setupiptables=false", "-heapfloor", "0")
	}},
	{"unbound, 1 thread", "169.254.20.13", nil, func(node *harness.Node, ip, dir string, wrapper []string) (*harness.Process, error) {
		conf := fmt.Sprintf("server:\n  interface: %s\n  port: 53\n  access-control: 0.0.0.0/0 allow\n  do-daemonize: no\n  num-threads: 1\n"+
			"  username: \"\"\n  chroot: \"\"\n  directory: %q\n  pidfile: \"\"\n  use-syslog: no\n  do-ip6: no\n  so-reuseport: yes\n"+
			"  module-config: \"iterator\"\n  msg-cache-size: 64m\n  rrset-cache-size: 128m\n  do-not-query-localhost: no\n"+
			"forward-zone:\n  name: \".\"\n  forward-addr: %s\n", ip, dir, harness.UpstreamIP)
		return startWithConfig(node, dir, "unbound", "unbound.conf", conf, wrapper, "unbound", "-d", "-c", filepath.Join(dir, "unbound.conf"))
	}},
	{"dnsmasq", "169.254.20.14", nil, func(node *harness.Node, ip, dir string, wrapper []string) (*harness.Process, error) {
		return startWithConfig(node, dir, "dnsmasq", "dnsmasq.conf", "", wrapper, "dnsmasq", "-k", "-C", filepath.Join(dir, "dnsmasq.conf"),
			"--no-resolv", "--no-hosts", "--server="+harness.UpstreamIP, "--listen-address="+ip, "--bind-interfaces",
			"--cache-size=10000", "--user=root", "--pid-file=")
	}},
}

// startStockDefaults runs stock CoreDNS as upstream's node-local-dns
// DaemonSet would, on ip.
func startStockDefaults(node *harness.Node, ip, dir string, wrapper []string) (*harness.Process, error) {
	corefile, err := upstreamCorefile(node)
	if err != nil {
		return nil, err
	}
	return startStockCoreDNS(node, dir, "coredns", onIP(corefile, ip), wrapper)
}

// The rows the ratios are taken to.
const (
	stockSameCorefile = 1
	stockDefaults     = 2
)

// serverNet holds every server's address; the bench exempts it from conntrack
// with rules ahead of node-cache's, so every server's packets take the same
// path through the raw and filter tables.
const serverNet = "169.254.20.0/24"

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
	latencies        dnsload.Histogram // every answered query of the fixed-rate turns
	cpu              time.Duration     // the server's CPU time in those turns
	missP50, missP99 time.Duration
	upstreamPerMiss  float64
}

// throughput compares the servers with the same upstream, query mix and
// client. They all run at once, pinned to the same CPU, and take turns under
// load, round after round, in an order that alternates, so a slow phase of
// this shared machine (whole seconds at two thirds of the usual rate) hits
// the servers of a round alike; no restart separates their turns. Each
// throughput ratio is the median of the ratios within a round, each rate the
// best of the rounds (interference only ever makes a round worse). Latency
// percentiles pool every query of a server's turns: the tail comes from
// stalls of a few milliseconds, a handful per turn, so one turn's p99 moves
// by a factor of two between turns, where the pool of all of them holds.
func throughput() (string, error) {
	node, err := harness.New(harness.Options{})
	if err != nil {
		return "", err
	}
	defer node.Close()
	procs, err := startServers(node, servers)
	if err != nil {
		return "", err
	}
	rows := make([]measured, len(servers))
	for i, s := range servers {
		rows[i] = measured{server: s.name, latencies: dnsload.Histogram{}}
	}
	for round := range saturatedRounds {
		fmt.Fprintf(os.Stderr, "   saturated round %d:", round+1)
		for _, i := range turns(round) {
			qps, err := saturate(node, servers[i].ip, saturateFor)
			if err != nil {
				return "", fmt.Errorf("%s: %w", servers[i].name, err)
			}
			rows[i].saturated = append(rows[i].saturated, qps)
			fmt.Fprintf(os.Stderr, " %.0f", qps)
		}
		fmt.Fprintln(os.Stderr)
	}
	for round := range latencyRounds {
		for _, i := range turns(round) {
			if err := measureLatency(node, servers[i], procs[i], &rows[i]); err != nil {
				return "", fmt.Errorf("%s: %w", servers[i].name, err)
			}
		}
	}
	for i, s := range servers {
		if err := measureMisses(node, s, &rows[i]); err != nil {
			return "", fmt.Errorf("%s: %w", s.name, err)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Each server on CPU 0 (`taskset`), the clients on CPU 1, the same upstream (the simulated kube-dns) and the same "+
		"cache-hit mix of 8 names, UDP from the pod. node-cache answers on 169.254.20.10 with its rules in place, each other server on "+
		"an address of its own in %s beside it, with the same conntrack exemption. The servers run at once and take turns under load in "+
		"an alternating order, without restarts. Saturated: dnsperf for %v, %d sockets, %d queries outstanding, %d rounds; the rate is "+
		"the best of the rounds, each ratio the median of the ratios within a round. Latency and the server's CPU time (utime+stime) "+
		"per answered query: dnsperf at a fixed %d queries/s for %v, %d rounds; the percentiles are of all the queries of the rounds "+
		"together, and so is the p99 ratio. Misses: dnsload, unique names at 2k queries/s for %v.\n\n",
		serverNet, saturateFor, dnsperfSockets, dnsperfOutstanding, saturatedRounds, fixedRate, latencyFor, latencyRounds, missFor)
	b.WriteString("| server | cache-hit qps, saturated | vs stock, same plugins and Corefile | vs stock defaults | CPU per query at 10k qps (vs stock defaults) | p50 / p99 at 10k qps (p99 vs stock defaults) | cache miss p50 / p99 at 2k qps | upstream queries per miss |\n|---|---|---|---|---|---|---|---|\n")
	ratio := func(r measured, to int) string {
		ref := rows[to].saturated
		perRound := make([]float64, len(ref))
		for i := range ref {
			perRound[i] = r.saturated[i] / ref[i]
		}
		return fmt.Sprintf("%.2fx", median(perRound))
	}
	refCPU, refP99 := rows[stockDefaults].cpuPerQuery(), rows[stockDefaults].latencies.Percentiles().P99
	for _, r := range rows {
		cpu, l := r.cpuPerQuery(), r.latencies.Percentiles()
		fmt.Fprintf(&b, "| %s | %.0f | %s | %s | %v (%.2fx) | %v / %v (%.2fx) | %v / %v | %.2f |\n", r.server, slices.Max(r.saturated),
			ratio(r, stockSameCorefile), ratio(r, stockDefaults), cpu, float64(cpu)/float64(refCPU),
			l.P50, l.P99, float64(l.P99)/float64(refP99), r.missP50.Round(time.Microsecond), r.missP99.Round(time.Microsecond), r.upstreamPerMiss)
	}
	return b.String(), nil
}

// How the servers are measured.
const (
	saturatedRounds    = 5
	saturateFor        = 2 * time.Second
	dnsperfSockets     = 8
	dnsperfOutstanding = 256
	fixedRate          = 10000
	latencyRounds      = 4
	latencyFor         = 3 * time.Second
	missFor            = 3 * time.Second
)

// turns is the order of the servers in a round: rotated by one each round,
// and reversed every other round, so no server always follows the same one.
func turns(round int) []int {
	order := make([]int, len(servers))
	for k := range order {
		order[k] = (k + round) % len(servers)
	}
	if round%2 == 1 {
		slices.Reverse(order)
	}
	return order
}

// startServers gives the servers their addresses and conntrack exemption,
// starts them, and warms their caches with the mix. node-cache's own
// 169.254.20.10 is on its interface already.
func startServers(node *harness.Node, servers []server) ([]*harness.Process, error) {
	var ips []string
	for _, s := range servers {
		if s.ip != harness.LocalIP {
			ips = append(ips, s.ip)
		}
	}
	if err := node.AddServerIPs(ips...); err != nil {
		return nil, err
	}
	for _, rule := range [][]string{
		{"-t", "raw", "-I", "PREROUTING", "-d", serverNet, "-j", "NOTRACK"},
		{"-t", "raw", "-I", "OUTPUT", "-s", serverNet, "-j", "NOTRACK"},
		{"-t", "filter", "-I", "INPUT", "-d", serverNet, "-j", "ACCEPT"},
		{"-t", "filter", "-I", "OUTPUT", "-s", serverNet, "-j", "ACCEPT"},
	} {
		if err := node.Host.Run(node.Opts.Backend.IPTables(), append([]string{"-w", "5"}, rule...)...); err != nil {
			return nil, err
		}
	}
	procs := make([]*harness.Process, len(servers))
	for i, s := range servers {
		dir, err := os.MkdirTemp(node.Dir, "srv-")
		if err != nil {
			return nil, err
		}
		wrapper := append(append([]string{"env"}, s.env...), serverCPU...)
		if procs[i], err = s.start(node, s.ip, dir, wrapper); err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		if err := node.WaitForAnswer(node.Pods[0], s.ip, harness.WebSvc, 10*time.Second); err != nil {
			return nil, fmt.Errorf("%s: %v (%s)", s.name, err, strings.TrimSpace(tailLines(procs[i].Log(), 3)))
		}
		if _, err := client(node, s.ip, "-queries", cachedMix, "-rate", "500", "-duration", "1s"); err != nil {
			return nil, err
		}
	}
	return procs, nil
}

// measureLatency adds one turn at the fixed rate to m: every answered
// query's latency, and the server's CPU time.
func measureLatency(node *harness.Node, s server, p *harness.Process, m *measured) error {
	cpuBefore, err := cpuTime(p.Pid())
	if err != nil {
		return err
	}
	out, err := dnsperf(node, s.ip, latencyFor, "-Q", fmt.Sprint(fixedRate), "-c", "32", "-q", "64", "-v")
	if err != nil {
		return err
	}
	cpuAfter, err := cpuTime(p.Pid())
	if err != nil {
		return err
	}
	turn := dnsload.Histogram{}
	// With -v, dnsperf prints a line per query; an answered one ends in its
	// latency in seconds: "> NOERROR www.example.org A 0.000188".
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] != ">" {
			continue
		}
		if secs, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			turn[int64(math.Round(secs*1e6))]++
		}
	}
	for us, n := range turn {
		m.latencies[us] += n
	}
	m.cpu += cpuAfter - cpuBefore
	l := turn.Percentiles()
	fmt.Fprintf(os.Stderr, "   %s: p50 %v, p99 %v\n", s.name[:min(len(s.name), 24)], l.P50, l.P99)
	return nil
}

// cpuPerQuery is the server's CPU time per answered query at the fixed rate.
func (m measured) cpuPerQuery() time.Duration {
	n := 0
	for _, c := range m.latencies {
		n += c
	}
	return (m.cpu / time.Duration(max(n, 1))).Round(100 * time.Nanosecond)
}

// measureMisses sends unique names through s and counts the upstream queries.
func measureMisses(node *harness.Node, s server, m *measured) error {
	before, err := node.KubeDNSQueries()
	if err != nil {
		return err
	}
	res, err := client(node, s.ip, "-queries", "A:"+dnsload.UniqueToken+"."+strings.ReplaceAll(s.ip, ".", "-")+".example.org",
		"-rate", "2000", "-workers", "32", "-duration", missFor.String())
	if err != nil {
		return err
	}
	after, err := node.KubeDNSQueries()
	if err != nil {
		return err
	}
	m.missP50, m.missP99 = res.Latencies.P50, res.Latencies.P99
	m.upstreamPerMiss = float64(after-before) / float64(res.Sent)
	return nil
}

// saturate runs dnsperf for d from the pod against ip, as fast as ip answers,
// and returns the answered queries per second.
func saturate(node *harness.Node, ip string, d time.Duration) (float64, error) {
	out, err := dnsperf(node, ip, d, "-c", fmt.Sprint(dnsperfSockets), "-q", fmt.Sprint(dnsperfOutstanding))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(out) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Queries per second:"); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("dnsperf printed no rate: %s", tailLines(out, 5))
}

// dnsperf runs dnsperf for d from the pod against ip, pinned to the client
// CPU, with the cache-hit mix and the given options, and returns its output.
func dnsperf(node *harness.Node, ip string, d time.Duration, options ...string) (string, error) {
	var data strings.Builder
	for _, q := range strings.Split(cachedMix, ",") {
		typ, name, _ := strings.Cut(q, ":")
		fmt.Fprintf(&data, "%s %s\n", name, typ)
	}
	file := filepath.Join(node.Dir, "dnsperf.queries")
	if err := os.WriteFile(file, []byte(data.String()), 0o644); err != nil {
		return "", err
	}
	return runDnsperf(node, ip, file, d, options...)
}

// runDnsperf runs dnsperf from the pod against ip with the queries in file.
func runDnsperf(node *harness.Node, ip, file string, d time.Duration, options ...string) (string, error) {
	argv := append(append([]string{}, clientCPU...), "ip", "netns", "exec", node.Pods[0].Name, "dnsperf", "-s", ip,
		"-d", file, "-l", fmt.Sprint(d.Seconds()), "-T", "1", "-t", "2")
	out, err := exec.Command(argv[0], append(argv[1:], options...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("dnsperf: %v: %s", err, tailLines(string(out), 3))
	}
	return string(out), nil
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
