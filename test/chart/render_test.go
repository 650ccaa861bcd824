// Package chart tests the Helm chart against the kustomize manifests, its
// values schema, and the dashboard's and alerts' metric names against a
// running node-cache. It is a module of its own so that helm's and
// Prometheus's dependency graphs stay out of the product's go.mod.
package chart

import (
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	"sigs.k8s.io/yaml"

	"github.com/nodelocal/nodelocal/manifests"
	"github.com/nodelocal/nodelocal/test/harness"
)

func repoPath(t *testing.T, rel string) string {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, rel)
}

// renderChart renders the chart with values as `helm template` would for a
// release named node-local-dns, validating values against the schema.
func renderChart(t *testing.T, values map[string]any) (string, error) {
	t.Helper()
	ch, err := loader.Load(repoPath(t, "charts/node-local-dns"))
	if err != nil {
		t.Fatal(err)
	}
	vals, err := util.ToRenderValuesWithSchemaValidation(ch, values,
		common.ReleaseOptions{Name: "node-local-dns", Namespace: "kube-system", IsInstall: true}, common.DefaultCapabilities, false)
	if err != nil {
		return "", err
	}
	files, err := engine.Render(ch, vals)
	if err != nil {
		return "", err
	}
	var names []string
	for name := range files {
		if strings.HasSuffix(name, ".yaml") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var out strings.Builder
	for _, name := range names {
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", name, files[name])
	}
	return out.String(), nil
}

// objects decodes a multi-document manifest into generic objects by
// kind/namespace/name (documents with only comments are skipped).
func objects(t *testing.T, what, manifest string) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(manifest, -1) {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, doc)
		}
		if obj == nil {
			continue
		}
		meta, _ := obj["metadata"].(map[string]any)
		key := fmt.Sprintf("%s/%s/%s", obj["kind"], meta["namespace"], meta["name"])
		if _, dup := out[key]; dup {
			t.Fatalf("%s: %s twice", what, key)
		}
		out[key] = obj
	}
	return out
}

func mustRenderChart(t *testing.T, values map[string]any) map[string]map[string]any {
	t.Helper()
	out, err := renderChart(t, values)
	if err != nil {
		t.Fatal(err)
	}
	return objects(t, "chart", out)
}

func kustomize(t *testing.T, dir string) map[string]map[string]any {
	t.Helper()
	out, err := manifests.Render(repoPath(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	return objects(t, dir, string(out))
}

// assertSameObjects compares two renders object by object.
func assertSameObjects(t *testing.T, chartWhat string, chart map[string]map[string]any, kustWhat string, kust map[string]map[string]any) {
	t.Helper()
	for key, want := range kust {
		got, ok := chart[key]
		if !ok {
			t.Errorf("%s lacks %s, which %s has", chartWhat, key, kustWhat)
			continue
		}
		if diffs := diff("", got, want); len(diffs) > 0 {
			t.Errorf("%s differs between %s and %s (%s vs %s):\n%s", key, chartWhat, kustWhat, "chart", "kustomize", strings.Join(diffs, "\n"))
		}
	}
	for key := range chart {
		if _, ok := kust[key]; !ok {
			t.Errorf("%s has %s, which %s lacks", chartWhat, key, kustWhat)
		}
	}
}

// TestChartEqualsKustomize: the chart's defaults are manifests/base, and the
// values that match an overlay give that overlay's objects.
func TestChartEqualsKustomize(t *testing.T) {
	for _, tc := range []struct {
		dir    string
		values map[string]any
	}{
		{"manifests/base", nil},
		{"manifests/overlays/ipvs", map[string]any{"interception": "ipvs"}},
		{"manifests/overlays/ondelete", map[string]any{"updateStrategy": map[string]any{"type": "OnDelete"}}},
		{"manifests/overlays/iptables-legacy", map[string]any{"iptablesLegacy": true}},
		{"manifests/overlays/node-readiness", map[string]any{"nodeReadiness": true}},
		{"manifests/overlays/monitoring", map[string]any{
			"serviceMonitor": map[string]any{"enabled": true},
			"prometheusRule": map[string]any{"enabled": true},
			"dashboard":      map[string]any{"enabled": true},
		}},
	} {
		t.Run(filepath.Base(tc.dir), func(t *testing.T) {
			assertSameObjects(t, fmt.Sprintf("the chart with %v", tc.values), mustRenderChart(t, tc.values), tc.dir, kustomize(t, tc.dir))
		})
	}
}

// diff lists where two decoded objects differ, by path.
func diff(path string, a, b any) []string {
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if aok && bok {
		var out []string
		keys := map[string]bool{}
		for k := range am {
			keys[k] = true
		}
		for k := range bm {
			keys[k] = true
		}
		for _, k := range slices.Sorted(maps.Keys(keys)) {
			out = append(out, diff(path+"."+k, am[k], bm[k])...)
		}
		return out
	}
	as, aok := a.([]any)
	bs, bok := b.([]any)
	if aok && bok && len(as) == len(bs) {
		var out []string
		for i := range as {
			out = append(out, diff(fmt.Sprintf("%s[%d]", path, i), as[i], bs[i])...)
		}
		return out
	}
	if reflect.DeepEqual(a, b) {
		return nil
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return []string{fmt.Sprintf("  %s: %s vs %s", path, ja, jb)}
}
