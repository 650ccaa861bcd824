package cluster

import (
	"strings"
	"testing"
	"time"

	"github.com/nodelocal/nodelocal/test/dnsload"
)

func TestStopWatchReadsLogsAndEvents(t *testing.T) {
	w := &stopWatch{cancel: func() {}, containers: map[string]string{"abc": "node-local-dns-x"}, signalled: map[string]time.Time{}, exits: map[string]Stop{}}
	w.logLine("abc", "2026-12-02T06:05:27.200417754Z [INFO] plugin/nodelocal: Installed 24 IPv4 iptables rules")
	w.logLine("abc", "2026-12-02T06:05:30.000000000Z [INFO] SIGTERM: Shutting down servers then terminating")
	w.taskExit("node-1", `2026-12-02 06:05:35.1 +0000 UTC k8s.io /tasks/exit {"container_id":"abc","id":"exec1","pid":9,"exit_status":1}`)
	w.taskExit("node-1", `2026-12-02 06:05:35.2 +0000 UTC k8s.io /tasks/exit {"container_id":"abc","id":"abc","pid":7,"exit_status":0}`)
	w.taskExit("node-1", `2026-12-02 06:05:36 +0000 UTC k8s.io /tasks/start {"container_id":"def","pid":8}`)
	stops := w.stop()
	if len(stops) != 1 || stops[0].Pod != "node-local-dns-x" || stops[0].Node != "node-1" || stops[0].ExitStatus != 0 || stops[0].SignalToExit() != 5200*time.Millisecond {
		t.Fatalf("got %+v", stops)
	}
	if got := stops[0].String(); got != "SIGTERM→exit 5.2s, exit 0" {
		t.Fatalf("String() = %q", got)
	}
}

func TestScenarioChecks(t *testing.T) {
	start := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	// A query failed halfway through each of seconds.
	failedAt := func(target string, seconds ...int) LoadRun {
		r := &dnsload.Result{Started: start, Sent: 100, PerSecond: make([]dnsload.Second, 30)}
		for _, s := range seconds {
			r.PerSecond[s].Failed++
			r.Outcomes[dnsload.Timeout]++
			r.Failures = append(r.Failures, dnsload.Failure{Sent: start.Add(time.Duration(s)*time.Second + 500*time.Millisecond), Outcome: "timeout"})
		}
		return LoadRun{Client: "client", Target: target, Transport: dnsload.UDP, Result: r}
	}
	fromHost := func(r LoadRun) LoadRun {
		r.Client = HostClient
		return r
	}
	// The same with the failures not listed one by one.
	unlisted := func(r LoadRun) LoadRun {
		r.Result.Failures = nil
		return r
	}
	killedAt8s := []Stop{{Exited: start.Add(8500 * time.Millisecond), ExitStatus: 137}}
	crashLoop := []Stop{{Exited: start.Add(8500 * time.Millisecond), ExitStatus: 137}, {Pod: "a container started during the run", Exited: start.Add(20500 * time.Millisecond), ExitStatus: 137}}
	for _, tc := range []struct {
		name  string
		check func(ScenarioRun) error
		run   ScenarioRun
		want  string // in the error; "" for none
	}{
		{"nothing failed", noFailures(LoadTargets...), ScenarioRun{Load: PodLoad{Runs: []LoadRun{failedAt(KubeDNSIP)}}}, ""},
		{"one failed", noFailures(LoadTargets...), ScenarioRun{Load: PodLoad{Runs: []LoadRun{failedAt("169.254.20.10", 3)}}}, "1 of 100 queries to 169.254.20.10"},
		{"link-local not checked", noFailures(KubeDNSIP), ScenarioRun{Load: PodLoad{Runs: []LoadRun{failedAt("169.254.20.10", 3)}}}, ""},
		{"an nslookup", noFailures(KubeDNSIP), ScenarioRun{ClusterDNS: KubeDNSIP, Load: PodLoad{NslookupSent: 10, NslookupFail: 1}}, "1 of 10 nslookups"},
		{"an nslookup through the address not checked", noFailures(KubeDNSIP), ScenarioRun{ClusterDNS: "169.254.20.10", Load: PodLoad{NslookupSent: 10, NslookupFail: 1}}, ""},
		{"at the kill", onlyInFlightAtTheKill, ScenarioRun{Start: start, Stops: killedAt8s, Load: PodLoad{Runs: []LoadRun{failedAt(KubeDNSIP, 6, 7, 8)}}}, ""},
		{"after the kill", onlyInFlightAtTheKill, ScenarioRun{Start: start, Stops: killedAt8s, Load: PodLoad{Runs: []LoadRun{failedAt(KubeDNSIP, 8, 9)}}}, "client to 198.18.0.10 udp: 1 failed queries sent outside the 3 s before a kill (kills at 8.5s into the load), at 9.5s"},
		{"long before the kill", onlyInFlightAtTheKill, ScenarioRun{Start: start, Stops: killedAt8s, Load: PodLoad{Runs: []LoadRun{failedAt(KubeDNSIP, 4)}}}, "1 failed queries sent outside the 3 s before a kill"},
		{"the link-local IP after the kill", onlyInFlightAtTheKill, ScenarioRun{Start: start, Stops: killedAt8s, Load: PodLoad{Runs: []LoadRun{failedAt("169.254.20.10", 9)}}}, "client to 169.254.20.10 udp: 1 failed"},
		{"a hostNetwork pod after the kill", onlyInFlightAtTheKill, ScenarioRun{Start: start, Stops: killedAt8s, Load: PodLoad{Runs: []LoadRun{fromHost(failedAt(KubeDNSIP, 9))}}}, "host-client to 198.18.0.10 udp: 1 failed"},
		{"crash loop: at each kill", onlyInFlightAtTheKill, ScenarioRun{Start: start, Stops: crashLoop, Load: PodLoad{Runs: []LoadRun{failedAt("169.254.20.10", 7, 19), fromHost(failedAt(KubeDNSIP, 8, 20))}}}, ""},
		{"crash loop: between kills", onlyInFlightAtTheKill, ScenarioRun{Start: start, Stops: crashLoop, Load: PodLoad{Runs: []LoadRun{failedAt("169.254.20.10", 7, 14)}}}, "at 14.5s"},
		{"crash loop: an nslookup per client and kill", onlyInFlightAtTheKill, ScenarioRun{Start: start, Stops: crashLoop, Load: PodLoad{Runs: []LoadRun{failedAt(KubeDNSIP), fromHost(failedAt(KubeDNSIP))}, NslookupSent: 100, NslookupFail: 4}}, ""},
		{"crash loop: more nslookups", onlyInFlightAtTheKill, ScenarioRun{Start: start, Stops: crashLoop, Load: PodLoad{Runs: []LoadRun{failedAt(KubeDNSIP), fromHost(failedAt(KubeDNSIP))}, NslookupSent: 100, NslookupFail: 5}}, "5 of 100 nslookups failed, want at most the 4"},
		{"by the second, at the kill", onlyInFlightAtTheKill, ScenarioRun{Start: start, Stops: killedAt8s, Load: PodLoad{Runs: []LoadRun{unlisted(failedAt(KubeDNSIP, 6, 7, 8))}}}, ""},
		{"by the second, long before", onlyInFlightAtTheKill, ScenarioRun{Start: start, Stops: killedAt8s, Load: PodLoad{Runs: []LoadRun{unlisted(failedAt(KubeDNSIP, 4))}}}, "1 failed queries sent outside the 3 s before a kill"},
		{"no kill", onlyInFlightAtTheKill, ScenarioRun{Start: start, Stops: []Stop{{Signalled: start, Exited: start, ExitStatus: 0}}}, "no container was killed"},
	} {
		err := tc.check(tc.run)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestFailuresOnlyInOwnGaps(t *testing.T) {
	start := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	failedAt := func(client string, seconds ...int) LoadRun {
		r := &dnsload.Result{Started: start, Sent: 100, PerSecond: make([]dnsload.Second, 60)}
		for _, s := range seconds {
			r.PerSecond[s].Failed++
			r.Outcomes[dnsload.Refused]++
		}
		return LoadRun{Client: client, Target: "169.254.20.10", Transport: dnsload.UDP, Result: r}
	}
	at := func(s int) time.Time { return start.Add(time.Duration(s) * time.Second) }
	nodes := map[string]string{"client-w1": "n-w1", "client-w2": "n-w2"}
	gaps := map[string]gap{"n-w1": {at(10), at(20)}, "n-w2": {at(30), at(40)}}
	for _, tc := range []struct {
		name string
		runs []LoadRun
		want int
	}{
		{"each in its own gap", []LoadRun{failedAt("client-w1", 8, 12, 22), failedAt("client-w2", 31, 39)}, 0},
		{"in another node's gap", []LoadRun{failedAt("client-w1", 31)}, 1},
		{"long after its gap", []LoadRun{failedAt("client-w2", 45, 50)}, 2},
		{"a node without a gap", []LoadRun{failedAt("client-w3", 12)}, 1},
	} {
		nodes := nodes
		nodes["client-w3"] = "n-w3"
		if got := outsideOwnGaps(tc.runs, "169.254.20.10", nodes, gaps); len(got) != tc.want {
			t.Errorf("%s: %d outside, want %d: %v", tc.name, len(got), tc.want, got)
		}
	}
}
