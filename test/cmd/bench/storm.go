package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nodelocal/nodelocal/test/cluster"
	"github.com/nodelocal/nodelocal/test/dnsload"
)

// The storm section's timing. Each client first looks its working set up
// slowly, over stormSpread (about a TTL), so that each name's refreshes come
// at a time of its own rather than all in one wave; then at full rate for
// stormSettle, long enough for each name to be fetched again (a prefetch
// before its 30 s TTL ends) and the record saved. The rollout takes at most
// stormRollout, and kube-dns's rate is followed stormAfter longer, past
// every name's next refresh.
const (
	stormSpread  = 31 * time.Second
	stormSettle  = 50 * time.Second
	stormRollout = 90 * time.Second
	stormAfter   = 35 * time.Second
)

// storm measures, in each kube-proxy mode, what a rollout of node-local-dns
// across the fleet costs kube-dns when each successor starts warm (the
// shipped Corefile, with warm) and when it starts cold (warm taken out of
// the ConfigMap): only the working set runs, so that kube-dns's rate is the
// caches' refreshes, and a successor's empty cache shows.
func storm() (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "A control plane node and %d workers, kube-dns's two pods on the control plane's node; the client on each worker looks up the same "+
		"working set of %d names (`%s`, kube-dns's TTL 30 s) at %d/s over UDP to the kube-dns ClusterIP, and nothing else, from %v before the "+
		"rollout to %v after it; the first lookups spread over 31 s, so that each name's refreshes come at a time of its own. node-cache is installed with manifests/overlays/node-readiness; for the cold successor, `warm` is taken out of "+
		"its ConfigMap just before the rollout. Queries kube-dns's pods count per second: before (the mean from %v after the working set "+
		"began to the rollout), during (mean / peak), and the queries above the mean before, summed over the rollout and %v after it "+
		"(past every name's next refresh): the storm.\n\n",
		fleetWorkers, workingSetSize, workingSet, workingSetRate, stormSpread+stormSettle, stormAfter, stormSpread+5*time.Second, stormAfter)
	b.WriteString("| kube-proxy | successor | names warmed per node | before | during (mean / peak) | peak / before | queries above the mean before | failed |\n|---|---|---|---|---|---|---|---|\n")
	for _, opts := range []cluster.Options{{ProxyMode: "iptables"}, {ProxyMode: "nftables", ClusterDNS: "169.254.20.10"}} {
		opts.Workers = fleetWorkers
		opts.Dir, opts.Name = cluster.TestDir(1), fmt.Sprintf("nlc%dx1", os.Getpid())
		opts.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, "   "+f+"\n", a...) }
		c, err := cluster.Up(opts)
		if err != nil {
			return b.String(), err
		}
		err = func() error {
			defer c.Down()
			pods, err := c.StartFleetClients()
			if err != nil {
				return err
			}
			if _, err := c.ApplyKustomizeOf("overlays/node-readiness"); err != nil {
				return err
			}
			f := fleetRun{c: c, mode: opts.ProxyMode, pods: pods}
			if err := f.rolledOut(); err != nil {
				return err
			}
			for _, successor := range []string{"warm (shipped)", "cold (`warm` taken out)"} {
				if strings.HasPrefix(successor, "cold") {
					if err := withoutWarm(c); err != nil {
						return err
					}
				}
				row, err := f.stormRollout()
				if err != nil {
					return fmt.Errorf("%s successor: %w", successor, err)
				}
				fmt.Fprintf(&b, "| %s | %s | %s |\n", opts.ProxyMode, successor, row)
				fmt.Fprintf(os.Stderr, "   %s successor: %s\n", successor, row)
			}
			return nil
		}()
		if err != nil {
			return b.String(), fmt.Errorf("%s mode: %w", opts.ProxyMode, err)
		}
	}
	return b.String(), nil
}

// withoutWarm takes the warm plugin out of node-local-dns's ConfigMap: the
// pods that start from now on start cold.
func withoutWarm(c *cluster.Cluster) error {
	corefile, err := c.KubectlOutput("-n", "kube-system", "get", "configmap", "node-local-dns", "-o", "jsonpath={.data.Corefile}")
	if err != nil {
		return err
	}
	cold := strings.ReplaceAll(corefile, "    warm\n", "")
	if cold == corefile {
		return fmt.Errorf("no warm line in node-local-dns's Corefile")
	}
	patch, err := json.Marshal(map[string]any{"data": map[string]string{"Corefile": cold}})
	if err != nil {
		return err
	}
	_, err = c.KubectlOutput("-n", "kube-system", "patch", "configmap", "node-local-dns", "-p", string(patch))
	return err
}

// warmedRE is what warm logs at a warm-up of the cluster zone.
var warmedRE = regexp.MustCompile(`Warmed cluster\.local\.:53 from the serving instance: (\d+) of`)

// stormRollout runs the working set, a rollout restart of node-local-dns
// across the fleet in its midst, and returns the row's cells after the
// first two.
func (f *fleetRun) stormRollout() (string, error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	lookUp := func(pod string, rate int, d time.Duration) {
		out, _ := f.c.Exec(pod, "dnsload", "-json", "-target", cluster.KubeDNSIP+":53", "-queries", workingSet, "-set", strconv.Itoa(workingSetSize),
			"-rate", strconv.Itoa(rate), "-duration", d.String(), "-timeout", "2s")
		var res dnsload.Result
		mu.Lock()
		defer mu.Unlock()
		if json.Unmarshal([]byte(out), &res) == nil {
			failed += res.Failed()
		} else {
			failed = -1 // the load did not report: say so rather than 0
		}
	}
	for _, pod := range f.pods {
		wg.Go(func() {
			lookUp(pod, max(1, workingSetSize/int(stormSpread.Seconds())), stormSpread)
			lookUp(pod, workingSetRate, stormSettle+stormRollout+stormAfter)
		})
	}
	defer wg.Wait()
	time.Sleep(stormSpread + 5*time.Second)
	stop, err := f.c.SampleKubeDNSRate()
	if err != nil {
		return "", err
	}
	time.Sleep(stormSettle - 5*time.Second)
	eventStart := time.Now()
	if _, err := f.c.KubectlOutput("-n", "kube-system", "rollout", "restart", "ds/node-local-dns"); err != nil {
		stop()
		return "", err
	}
	err = f.rolledOut()
	eventEnd := time.Now()
	time.Sleep(stormAfter)
	samples := stop()
	if err != nil {
		return "", err
	}
	var before, during, extraFrom []float64
	for _, s := range samples {
		switch {
		case s.At.Before(eventStart):
			before = append(before, s.PerSecond)
		case !s.At.After(eventEnd):
			during = append(during, s.PerSecond)
			extraFrom = append(extraFrom, s.PerSecond)
		default:
			extraFrom = append(extraFrom, s.PerSecond)
		}
	}
	if len(before) == 0 || len(during) == 0 {
		return "", fmt.Errorf("%d samples of kube-dns's rate: none before or during the rollout", len(samples))
	}
	// The storm is what the rollout's window sent above the mean before.
	base := mean(before)
	var extra float64
	for _, r := range extraFrom {
		extra += r - base
	}
	series := make([]string, len(samples))
	for i, s := range samples {
		series[i] = fmt.Sprintf("%.0f", s.PerSecond)
	}
	fmt.Fprintf(os.Stderr, "   kube-dns's queries per second, the rollout from sample %d to %d: %s\n", len(before), len(before)+len(during), strings.Join(series, " "))
	logs, _ := f.c.KubectlOutput("-n", "kube-system", "logs", "-l", "k8s-app=node-local-dns", "--tail=-1")
	var warmed []string
	for _, m := range warmedRE.FindAllStringSubmatch(logs, -1) {
		warmed = append(warmed, m[1])
	}
	slices.Sort(warmed)
	if len(warmed) == 0 {
		warmed = []string{"none"}
	}
	wg.Wait()
	peak := slices.Max(during)
	return fmt.Sprintf("%s | %.0f/s | %.0f/s / %.0f/s | %.1f | %.0f | %d", strings.Join(warmed, ", "), base, mean(during), peak, peak/base, extra, failed), nil
}
