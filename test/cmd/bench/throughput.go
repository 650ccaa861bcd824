package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
	start func(node *harness.Node, dir string) (*harness.Process, error)
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

func startWithConfig(node *harness.Node, dir, name, file, config string, argv ...string) (*harness.Process, error) {
	if err := os.WriteFile(filepath.Join(dir, file), []byte(config), 0o644); err != nil {
		return nil, err
	}
	return node.Start(node.Host, name, append(append([]string{}, serverCPU...), argv...))
}

var servers = []server{
	{"node-cache (corefile.tmpl)", func(node *harness.Node, dir string) (*harness.Process, error) {
		tmpl, err := node.NodeCacheTemplate("skip_teardown") // the rules stay for the servers after it
		if err != nil {
			return nil, err
		}
		return node.StartNodeCacheProcess("node-cache", tmpl, serverCPU)
	}},
	{"stock CoreDNS 1.15, same Corefile without nodelocal", func(node *harness.Node, dir string) (*harness.Process, error) {
		corefile, err := renderedCorefile(node)
		if err != nil {
			return nil, err
		}
		corefile = strings.ReplaceAll(corefile, "    nodelocal\n", "")
		bin, err := harness.Binary("coredns")
		if err != nil {
			return nil, err
		}
		return startWithConfig(node, dir, "coredns", "Corefile.stock", corefile, bin, "-conf", filepath.Join(dir, "Corefile.stock"))
	}},
	{"unbound, 1 thread", func(node *harness.Node, dir string) (*harness.Process, error) {
		conf := fmt.Sprintf("server:\n  interface: %s\n  port: 53\n  access-control: 0.0.0.0/0 allow\n  do-daemonize: no\n  num-threads: 1\n"+
			"  username: \"\"\n  chroot: \"\"\n  directory: %q\n  pidfile: \"\"\n  use-syslog: no\n  do-ip6: no\n  so-reuseport: yes\n"+
			"  module-config: \"iterator\"\n  msg-cache-size: 64m\n  rrset-cache-size: 128m\n  do-not-query-localhost: no\n"+
			"forward-zone:\n  name: \".\"\n  forward-addr: %s\n", harness.LocalIP, dir, harness.UpstreamIP)
		return startWithConfig(node, dir, "unbound", "unbound.conf", conf, "unbound", "-d", "-c", filepath.Join(dir, "unbound.conf"))
	}},
	{"dnsmasq", func(node *harness.Node, dir string) (*harness.Process, error) {
		return startWithConfig(node, dir, "dnsmasq", "dnsmasq.conf", "", "dnsmasq", "-k", "-C", filepath.Join(dir, "dnsmasq.conf"),
			"--no-resolv", "--no-hosts", "--server="+harness.UpstreamIP, "--listen-address="+harness.LocalIP, "--bind-interfaces",
			"--cache-size=10000", "--user=root", "--pid-file=")
	}},
}

type measured struct {
	server           string
	saturated        float64
	p50, p99         time.Duration
	missP50, missP99 time.Duration
	upstreamPerMiss  float64
	err              error
}

// throughput compares the servers one after the other with the same upstream,
// query mix and client.
func throughput() (string, error) {
	node, err := harness.New(harness.Options{})
	if err != nil {
		return "", err
	}
	defer node.Close()
	var rows []measured
	for _, s := range servers {
		fmt.Fprintf(os.Stderr, "   %s\n", s.name)
		rows = append(rows, measure(node, s))
	}
	var b strings.Builder
	b.WriteString("Each server in turn on CPU 0 (`taskset`), the client on CPU 1, the same upstream (the simulated kube-dns) and the same " +
		"cache-hit mix of 8 names; UDP from the pod to 169.254.20.10 with the node-cache rules in place.\n\n")
	b.WriteString("| server | cache-hit qps, saturated (vs stock) | p50 / p99 at 10k qps | cache miss p50 / p99 at 2k qps | upstream queries per miss |\n|---|---|---|---|---|\n")
	stock := rows[1].saturated
	for _, r := range rows {
		if r.err != nil {
			fmt.Fprintf(&b, "| %s | not measured: %v | | | |\n", r.server, r.err)
			continue
		}
		ratio := ""
		if stock > 0 {
			ratio = fmt.Sprintf(" (%.2fx)", r.saturated/stock)
		}
		fmt.Fprintf(&b, "| %s | %.0f%s | %v / %v | %v / %v | %.2f |\n", r.server, r.saturated, ratio,
			r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond), r.missP50.Round(time.Microsecond), r.missP99.Round(time.Microsecond), r.upstreamPerMiss)
	}
	b.WriteString("\nThe client is dnsload (Go) on one core; where the servers come close to it, the client is the limit, not the server.\n")
	return b.String(), nil
}

func measure(node *harness.Node, s server) measured {
	m := measured{server: s.name}
	dir, err := os.MkdirTemp(node.Dir, "srv-")
	if err != nil {
		m.err = err
		return m
	}
	p, err := s.start(node, dir)
	if err != nil {
		m.err = err
		return m
	}
	defer p.Kill()
	if err := node.WaitForAnswer(node.Pods[0], harness.LocalIP, harness.WebSvc, 10*time.Second); err != nil {
		m.err = fmt.Errorf("%v (%s)", err, strings.TrimSpace(tailLines(p.Log(), 3)))
		return m
	}
	if _, m.err = client(node, "-queries", cachedMix, "-rate", "500", "-duration", "2s"); m.err != nil {
		return m
	}
	res, err := client(node, "-queries", cachedMix, "-rate", "0", "-workers", "64", "-duration", "8s", "-timeout", "2s")
	if err != nil {
		m.err = err
		return m
	}
	m.saturated = res.QPS()
	if res, m.err = client(node, "-queries", cachedMix, "-rate", "10000", "-workers", "32", "-duration", "8s"); m.err != nil {
		return m
	}
	m.p50, m.p99 = res.Latencies.P50, res.Latencies.P99
	before, _ := node.KubeDNSQueries()
	if res, m.err = client(node, "-queries", "A:"+dnsload.UniqueToken+"."+strings.ReplaceAll(strings.ToLower(s.name[:4]), " ", "")+".example.org",
		"-rate", "2000", "-workers", "32", "-duration", "8s"); m.err != nil {
		return m
	}
	after, _ := node.KubeDNSQueries()
	m.missP50, m.missP99 = res.Latencies.P50, res.Latencies.P99
	m.upstreamPerMiss = float64(after-before) / float64(res.Sent)
	return m
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
