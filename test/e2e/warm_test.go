package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/nodelocal/nodelocal/test/harness"
)

// TestSuccessorStartsWarm: the names a pod asks all the time (here 100
// names, each asked every second) are fetched into a surge successor's
// cache from its predecessor before the successor's listeners open, so once
// the predecessor is gone they are answered without a query to kube-dns.
func TestSuccessorStartsWarm(t *testing.T) {
	waitsMostly(t)
	node := harness.NewNode(t, harness.Options{})
	tmpl := mustTemplate(t, node, "")
	old, err := node.StartNodeCache("node-cache-old", tmpl)
	if err != nil {
		t.Fatal(err)
	}
	const hot = 100
	askAll := func() {
		t.Helper()
		for i := range hot {
			name := fmt.Sprintf("hot-%d.example.org.", i)
			if m, err := harness.Query(node.Pods[0], "udp", harness.LocalIP, name, dns.TypeA); err != nil || m.Rcode != dns.RcodeSuccess {
				t.Fatalf("%s: %v %v", name, err, m)
			}
		}
	}
	// Until the record has them: each is fetched again at its prefetch
	// (the cache's 30 s TTL), and the record is saved every 10 s at most,
	// as misses come (here a new name every second).
	record := filepath.Join(node.StateDir(), "hot-names-root-53")
	deadline := time.Now().Add(60 * time.Second)
	for round := 0; ; round++ {
		askAll()
		harness.Query(node.Pods[0], "udp", harness.LocalIP, fmt.Sprintf("once-%d.example.org.", round), dns.TypeA)
		b, _ := os.ReadFile(record)
		if strings.Count(string(b), ".example.org.\n") >= hot {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 60 s the record %s lists %d of the %d names asked every second:\n%s\nnode-cache:\n%s", record, strings.Count(string(b), "\n"), hot, b, old.Log())
		}
		time.Sleep(time.Second)
	}

	before, err := node.KubeDNSQueries()
	if err != nil {
		t.Fatal(err)
	}
	next := startPeer(t, node, "node-cache-new", tmpl)
	m := regexp.MustCompile(`Warmed \.:53 from the serving instance: (\d+) of its (\d+) names`).FindStringSubmatch(next.Log())
	if m == nil || m[1] != m[2] || len(m[1]) < 3 {
		t.Fatalf("the successor did not warm its cache with all %d hot names:\n%s", hot, next.Log())
	}
	t.Logf("the successor fetched %s names from its predecessor before it listened", m[1])
	old.Signal(syscall.SIGTERM)
	if err := old.Wait(20 * time.Second); err != nil {
		t.Fatalf("old instance: %v\n%s", err, old.Log())
	}
	askAll() // the successor alone answers now
	after, err := node.KubeDNSQueries()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-dns got %d queries from the successor's start to its answers to the %d hot names", after-before, hot)
	if after-before > hot/10 {
		t.Errorf("kube-dns got %d queries for %d names the successor should have had in its cache, want at most %d", after-before, hot, hot/10)
	}
	next.Signal(syscall.SIGTERM)
	if err := next.Wait(20 * time.Second); err != nil {
		t.Fatal(err)
	}
}
