package chart

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"

	"github.com/nodelocal/nodelocal/test/harness"
)

// monitoringExpressions are the PromQL expressions of every dashboard panel
// and every alert, by where they are used. Grafana's $__rate_interval is
// replaced by a duration so that the expressions parse as Prometheus sees them.
func monitoringExpressions(t *testing.T) map[string]string {
	t.Helper()
	exprs := map[string]string{}
	b, err := os.ReadFile(repoPath(t, "manifests/components/monitoring/dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ RefID, Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs["dashboard panel "+p.Title+" "+tg.RefID] = strings.ReplaceAll(tg.Expr, "$__rate_interval", "5m")
		}
	}
	b, err = os.ReadFile(repoPath(t, "manifests/components/monitoring/prometheusrule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rule struct {
		Spec struct {
			Groups []struct {
				Rules []struct{ Alert, Expr string }
			}
		}
	}
	if err := yaml.Unmarshal(b, &rule); err != nil {
		t.Fatal(err)
	}
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			exprs["alert "+r.Alert] = r.Expr
		}
	}
	if len(exprs) < 10 {
		t.Fatalf("only %d expressions found: %v", len(exprs), exprs)
	}
	return exprs
}

// metricNames parses expr and returns the metric names it selects.
func metricNames(expr string) ([]string, error) {
	node, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names, nil
}

// TestAlertsAndPanelsParse: every expression is valid PromQL and selects
// metrics by name.
func TestAlertsAndPanelsParse(t *testing.T) {
	for where, expr := range monitoringExpressions(t) {
		names, err := metricNames(expr)
		if err != nil {
			t.Errorf("%s does not parse: %v\n%s", where, err, expr)
		} else if len(names) == 0 || slices.Contains(names, "") {
			t.Errorf("%s selects series without a metric name: %s", where, expr)
		}
	}
}

// TestMonitoringMetricsExist scrapes node-cache running the shipped Corefile
// in the simulated node, after cache hits, misses, answers from kube-dns and
// SERVFAILs from an upstream that refuses, and checks that every metric that
// a dashboard panel or an alert uses is in the scrape.
func TestMonitoringMetricsExist(t *testing.T) {
	node := harness.NewNode(t, harness.Options{})
	objs := kustomize(t, "manifests/base")
	corefile := objs["ConfigMap/kube-system/node-local-dns"]["data"].(map[string]any)["Corefile"].(string)
	// External names go to a resolver that refuses (kube-dns's pod on a closed
	// port): SERVFAILs and failed upstream health checks, as when it is down.
	p, err := node.StartNodeCache("node-cache", strings.ReplaceAll(corefile, "__PILLAR__UPSTREAM__SERVERS__", harness.KubeDNSPodIP+":5353"))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // a miss, then a hit
		if _, err := harness.Query(node.Pods[0], "udp", harness.LocalIP, harness.WebSvc, dns.TypeA); err != nil {
			t.Fatal(err)
		}
	}
	if m, err := harness.QueryTimeout(node.Pods[0], "udp", harness.LocalIP, "refused.example.", dns.TypeA, 10*time.Second); err != nil || m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("an external name with its upstream refusing: %v, %v; want SERVFAIL", m, err)
	}
	var scrape map[string]bool
	deadline := time.Now().Add(10 * time.Second)
	for {
		scrape = scrapeNames(t, node)
		if scrape["coredns_proxy_healthcheck_failures_total"] || time.Now().After(deadline) {
			break // the failed query starts health checks; they fail within a second
		}
		time.Sleep(200 * time.Millisecond)
	}
	for where, expr := range monitoringExpressions(t) {
		names, err := metricNames(expr)
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		for _, name := range names {
			if !scrape[name] {
				t.Errorf("%s uses %s, which node-cache does not export:\n%s", where, name, expr)
			}
		}
	}
	p.Stop(15 * time.Second)
}

// scrapeNames are the metric names node-cache exports, with the series
// names of histograms and summaries.
func scrapeNames(t *testing.T, node *harness.Node) map[string]bool {
	t.Helper()
	body, err := node.Host.HTTPGet("http://" + harness.NodeCacheMetrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	tp := expfmt.NewTextParser(model.UTF8Validation)
	families, err := tp.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for name, f := range families {
		if len(f.GetMetric()) == 0 {
			continue
		}
		names[name] = true
		for _, suffix := range map[string][]string{"HISTOGRAM": {"_bucket", "_sum", "_count"}, "SUMMARY": {"_sum", "_count"}}[f.GetType().String()] {
			names[name+suffix] = true
		}
	}
	return names
}
