package chart

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/nodelocal/nodelocal/test/harness"
)

// typed converts a rendered object into its API type.
func typed(t *testing.T, obj map[string]any, into any) {
	t.Helper()
	b, err := yaml.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, into); err != nil {
		t.Fatal(err)
	}
}

// renderedCorefile runs node-cache -render on the chart's Corefile template
// with the chart's args, as the pod would start: it must render and parse.
func renderedCorefile(t *testing.T, objs map[string]map[string]any, hostIP string) (string, *appsv1.DaemonSet) {
	t.Helper()
	var ds appsv1.DaemonSet
	var cm corev1.ConfigMap
	typed(t, objs["DaemonSet/kube-system/node-local-dns"], &ds)
	typed(t, objs["ConfigMap/kube-system/node-local-dns"], &cm)
	bin, err := harness.Binary("node-cache")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "Corefile.base")
	resolv := filepath.Join(dir, "resolv.conf")
	os.WriteFile(base, []byte(cm.Data["Corefile"]), 0o644)
	os.WriteFile(resolv, []byte("nameserver 198.18.9.1\n"), 0o644)
	var args []string
	for _, a := range ds.Spec.Template.Spec.Containers[0].Args {
		args = append(args, strings.ReplaceAll(a, "$(HOST_IP)", hostIP)) // kubelet expands it from status.hostIP
	}
	args = append(args, "-basecorefile", base, "-resolvconf", resolv, "-kubednscm", filepath.Join(dir, "none"), "-render")
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "KUBE_DNS_SERVICE_HOST=198.18.0.10", "KUBE_DNS_UPSTREAM_SERVICE_HOST=198.18.0.11")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node-cache %v: %v\n%s", args, err, out)
	}
	return string(out), &ds
}

// TestChartValues: every value operators set has its effect, and the
// Corefile it gives is one node-cache renders and CoreDNS parses.
func TestChartValues(t *testing.T) {
	for _, tc := range []struct {
		name     string
		values   map[string]any
		hostIP   string                         // the node's, default 198.18.5.1
		corefile []string                       // in the rendered Corefile
		check    func(*appsv1.DaemonSet) string // what is wrong, or ""
	}{
		{name: "defaults", corefile: []string{"bind 169.254.20.10 198.18.0.10\n", "force_tcp"}},
		{name: "image", values: map[string]any{"image": map[string]any{"repository": "registry.example/nc", "tag": "1.2.3", "pullPolicy": "Always"}},
			check: func(ds *appsv1.DaemonSet) string {
				if c := ds.Spec.Template.Spec.Containers[0]; c.Image != "registry.example/nc:1.2.3" || c.ImagePullPolicy != corev1.PullAlways {
					return "image " + c.Image + " " + string(c.ImagePullPolicy)
				}
				return ""
			}},
		{name: "local IP", values: map[string]any{"localIP": "169.254.25.10"}, corefile: []string{"bind 169.254.25.10 198.18.0.10\n", "health 169.254.25.10:8080"},
			check: func(ds *appsv1.DaemonSet) string {
				if h := ds.Spec.Template.Spec.Containers[0].ReadinessProbe.HTTPGet.Host; h != "169.254.25.10" {
					return "readiness probe host " + h
				}
				return ""
			}},
		{name: "ipvs", values: map[string]any{"interception": "ipvs"}, corefile: []string{"bind 169.254.20.10 \n"}},
		{name: "prefer_udp", values: map[string]any{"upstreamProtocol": "prefer_udp"}, corefile: []string{"prefer_udp"}},
		{name: "serve stale and prefetch set", values: map[string]any{"cache": map[string]any{"serveStale": "2h immediate 30s", "prefetch": "10 1m 10%"}},
			corefile: []string{"        prefetch 10 1m 10%\n        serve_stale 2h immediate 30s\n    }"}},
		{name: "serve stale and prefetch off", values: map[string]any{"cache": map[string]any{"serveStale": "off", "prefetch": "off"}},
			corefile: []string{"    cache {\n        success 9984 30\n        denial 9984 5\n    }", "    cache 30 {\n    }"}},
		{name: "extra server block", values: map[string]any{"extraServerBlocks": "corp.example:53 {\n    bind __PILLAR__LOCAL__DNS__\n    forward . 198.18.9.2\n}\n"},
			corefile: []string{"corp.example:53 {\n    bind 169.254.20.10\n    forward . 198.18.9.2\n}"}},
		{name: "whole Corefile", values: map[string]any{"corefile": ".:53 {\n    bind __PILLAR__LOCAL__DNS__\n    forward . __PILLAR__UPSTREAM__SERVERS__\n}\n"},
			corefile: []string{".:53 {\n    bind 169.254.20.10\n"}},
		{name: "ServiceMonitor: metrics on the node's IP", values: map[string]any{"serviceMonitor": map[string]any{"enabled": true}},
			corefile: []string{"prometheus 198.18.5.1:9253"}},
		{name: "ServiceMonitor on an IPv6 node", values: map[string]any{"serviceMonitor": map[string]any{"enabled": true}}, hostIP: "2001:2::5",
			corefile: []string{"prometheus [2001:2::5]:9253"}},
		{name: "iptables-legacy nodes: NET_RAW", values: map[string]any{"iptablesLegacy": true},
			check: func(ds *appsv1.DaemonSet) string {
				if caps := ds.Spec.Template.Spec.Containers[0].SecurityContext.Capabilities.Add; !slices.Contains(caps, "NET_RAW") {
					return fmt.Sprintf("capabilities %v lack NET_RAW", caps)
				}
				return ""
			}},
		{name: "scheduling", values: map[string]any{
			"priorityClassName": "my-critical", "tolerations": []any{map[string]any{"key": "dedicated", "operator": "Exists"}},
			"nodeSelector": map[string]any{"kubernetes.io/os": "linux"},
			"affinity":     map[string]any{"nodeAffinity": map[string]any{"requiredDuringSchedulingIgnoredDuringExecution": map[string]any{"nodeSelectorTerms": []any{map[string]any{"matchExpressions": []any{map[string]any{"key": "dns", "operator": "NotIn", "values": []any{"off"}}}}}}}},
			"resources":    map[string]any{"limits": map[string]any{"memory": "512Mi"}, "requests": map[string]any{"cpu": "50m", "memory": "64Mi"}},
		},
			check: func(ds *appsv1.DaemonSet) string {
				s := ds.Spec.Template.Spec
				switch {
				case s.PriorityClassName != "my-critical", len(s.Tolerations) != 1 || s.Tolerations[0].Key != "dedicated",
					s.NodeSelector["kubernetes.io/os"] != "linux", s.Affinity == nil || s.Affinity.NodeAffinity == nil,
					s.Containers[0].Resources.Limits.Memory().String() != "512Mi":
					return "scheduling or resources not applied"
				}
				return ""
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			corefile, ds := renderedCorefile(t, mustRenderChart(t, tc.values), cmp.Or(tc.hostIP, "198.18.5.1"))
			for _, want := range tc.corefile {
				if !strings.Contains(corefile, want) {
					t.Errorf("the rendered Corefile lacks %q:\n%s", want, corefile)
				}
			}
			if tc.check != nil {
				if msg := tc.check(ds); msg != "" {
					t.Error(msg)
				}
			}
		})
	}
}

// TestChartSchema: values of the wrong type or out of range are refused
// before anything renders, naming the value.
func TestChartSchema(t *testing.T) {
	for _, tc := range []struct {
		values map[string]any
		want   string
	}{
		{map[string]any{"localIP": "not-an-ip"}, "localIP"},
		{map[string]any{"localIP": 169}, "localIP"},
		{map[string]any{"interception": "userspace"}, "interception"},
		{map[string]any{"upstreamProtocol": "tls"}, "upstreamProtocol"},
		{map[string]any{"cache": map[string]any{"serveStale": "forever"}}, "serveStale"},
		{map[string]any{"cache": map[string]any{"prefetch": 10}}, "prefetch"},
		{map[string]any{"cache": map[string]any{"prefetch": "often"}}, "prefetch"},
		{map[string]any{"image": map[string]any{"tag": 1}}, "tag"},
		{map[string]any{"image": map[string]any{"pullPolicy": "Sometimes"}}, "pullPolicy"},
		{map[string]any{"updateStrategy": map[string]any{"type": "Recreate"}}, "updateStrategy"},
		{map[string]any{"serviceMonitor": map[string]any{"enabled": "yes"}}, "enabled"},
		{map[string]any{"tolerations": map[string]any{"operator": "Exists"}}, "tolerations"},
		{map[string]any{"nodeSelector": map[string]any{"zone": 1}}, "nodeSelector"},
		{map[string]any{"locaIP": "169.254.20.10"}, "locaIP"},
	} {
		_, err := renderChart(t, tc.values)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("values %v: error %v, want one naming %s", tc.values, err, tc.want)
		}
	}
}
