package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/nodelocal/nodelocal/test/harness"
)

const repeats = 5

// untilAnswered polls the link-local IP from the pod (50 ms per attempt, every
// 2 ms) and returns how long it took to get an answer.
func untilAnswered(node *harness.Node, start time.Time, timeout time.Duration) (time.Duration, error) {
	for time.Since(start) < timeout {
		r, err := harness.QueryTimeout(node.Pods[0], "udp", harness.LocalIP, harness.WebSvc, dns.TypeA, 50*time.Millisecond)
		if err == nil && r.Rcode == dns.RcodeSuccess {
			return time.Since(start), nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return 0, fmt.Errorf("no answer within %v", timeout)
}

func summary(ds []time.Duration) string {
	slices.Sort(ds)
	return fmt.Sprintf("median %v, max %v (%d runs)", ds[len(ds)/2].Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond), len(ds))
}

// wrapIPTables puts logging wrappers of the iptables binaries first in PATH,
// so every iptables process node-cache starts is counted.
func wrapIPTables(dir string) (env, logPath string, err error) {
	logPath = filepath.Join(dir, "iptables-calls.log")
	for _, name := range []string{"iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy"} {
		script := fmt.Sprintf("#!/bin/sh\necho \"$0 $*\" >> %s\nexec /usr/sbin/%s \"$@\"\n", logPath, name)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			return "", "", err
		}
	}
	return "PATH=" + dir + ":" + os.Getenv("PATH"), logPath, nil
}

func countLines(path string) int {
	b, _ := os.ReadFile(path)
	return strings.Count(string(b), "\n")
}

// selfHealing measures repairs, start-up and the steady-state cost, with the
// default Corefile (check_interval 5s).
func selfHealing() (string, error) {
	node, tmpl, err := newNode()
	if err != nil {
		return "", err
	}
	defer node.Close()
	wrapDir := filepath.Join(node.Dir, "wrap")
	if err := os.Mkdir(wrapDir, 0o755); err != nil {
		return "", err
	}
	pathEnv, callLog, err := wrapIPTables(wrapDir)
	if err != nil {
		return "", err
	}
	nodeArgs, err := node.NodeCacheArgs()
	if err != nil {
		return "", err
	}
	bin, err := harness.Binary("node-cache")
	if err != nil {
		return "", err
	}
	tmplPath := filepath.Join(node.Dir, "bench.Corefile.tmpl")
	if err := os.WriteFile(tmplPath, []byte(tmpl), 0o644); err != nil {
		return "", err
	}
	start := func(i int) (*harness.Process, time.Duration, error) {
		t0 := time.Now()
		p, err := node.Start(node.Host, fmt.Sprintf("node-cache-%d", i), append([]string{bin, "-basecorefile", tmplPath}, nodeArgs...), pathEnv)
		if err != nil {
			return nil, 0, err
		}
		d, err := untilAnswered(node, t0, 10*time.Second)
		return p, d, err
	}

	var startups []time.Duration
	var p *harness.Process
	for i := 0; i < repeats; i++ {
		var d time.Duration
		if p, d, err = start(i); err != nil {
			return "", err
		}
		startups = append(startups, d)
		if i < repeats-1 {
			if err := p.Stop(30 * time.Second); err != nil {
				return "", err
			}
		}
	}
	if err := node.WaitReady(p, 10*time.Second); err != nil {
		return "", err
	}

	var linkHeals, addrHeals, ruleHeals []time.Duration
	for i := 0; i < repeats; i++ {
		t0 := time.Now()
		if err := node.Host.Run("ip", "link", "del", "nodelocaldns"); err != nil {
			return "", err
		}
		d, err := untilAnswered(node, t0, 10*time.Second)
		if err != nil {
			return "", fmt.Errorf("after ip link del: %w", err)
		}
		linkHeals = append(linkHeals, d)

		t0 = time.Now()
		if err := node.Host.Run("ip", "addr", "del", harness.LocalIP+"/32", "dev", "nodelocaldns"); err != nil {
			return "", err
		}
		if d, err = untilAnswered(node, t0, 10*time.Second); err != nil {
			return "", fmt.Errorf("after ip addr del: %w", err)
		}
		addrHeals = append(addrHeals, d)

		t0 = time.Now()
		if err := node.Host.Run("/usr/sbin/iptables-nft", "-w", "5", "-t", "raw", "-F"); err != nil {
			return "", err
		}
		for {
			rules, err := node.NodeLocalRules()
			if err == nil && len(rules) == 24 {
				break
			}
			if time.Since(t0) > 20*time.Second {
				return "", fmt.Errorf("rules not restored within 20s of a raw flush")
			}
			time.Sleep(20 * time.Millisecond)
		}
		ruleHeals = append(ruleHeals, time.Since(t0))
	}

	// Steady state: nothing changes; count the iptables processes.
	const window = 30 * time.Second
	time.Sleep(6 * time.Second)
	before := countLines(callLog)
	time.Sleep(window)
	perMinute := float64(countLines(callLog)-before) * float64(time.Minute) / float64(window)

	var b strings.Builder
	b.WriteString("node-cache with the default corefile.tmpl (check_interval 5s), as seen from the pod.\n\n")
	b.WriteString("| measure | result | goal |\n|---|---|---|\n")
	fmt.Fprintf(&b, "| `ip link del nodelocaldns` to answering again | %s | < 1 s |\n", summary(linkHeals))
	fmt.Fprintf(&b, "| `ip addr del 169.254.20.10/32` to answering again | %s | < 1 s |\n", summary(addrHeals))
	fmt.Fprintf(&b, "| `iptables -t raw -F` to all rules back | %s | one check interval (5 s) |\n", summary(ruleHeals))
	fmt.Fprintf(&b, "| start-up: exec to the first answer on 169.254.20.10 | %s | < 500 ms |\n", summary(startups))
	fmt.Fprintf(&b, "| iptables processes per minute, steady state (counted over %v) | %.0f | 0 with the nft backend, which counts ruleset changes (read over netlink each check); legacy: one listing per table per check, 24 |\n", window, perMinute)
	return b.String(), nil
}
