package manifests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

	"github.com/nodelocal/nodelocal/test/harness"
)

func decode(t *testing.T, name string, data []byte) []any {
	t.Helper()
	objs, err := Decode(data)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return objs
}

func render(t *testing.T, dir string) []any {
	t.Helper()
	out, err := Render(dir)
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, dir, out)
}

func daemonSet(t *testing.T, objs []any) *appsv1.DaemonSet {
	t.Helper()
	for _, o := range objs {
		if ds, ok := o.(*appsv1.DaemonSet); ok {
			return ds
		}
	}
	t.Fatal("no DaemonSet")
	return nil
}

func configMapCorefile(t *testing.T, objs []any) string {
	t.Helper()
	for _, o := range objs {
		if cm, ok := o.(*corev1.ConfigMap); ok && cm.Name == "node-local-dns" {
			return cm.Data["Corefile"]
		}
	}
	t.Fatal("no node-local-dns ConfigMap")
	return ""
}

func TestGeneratedFilesAreFresh(t *testing.T) {
	tmpl, err := os.ReadFile("../corefile.tmpl")
	if err != nil {
		t.Fatal(err)
	}
	cm, err := ConfigMap(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	rendered, err := Render("base")
	if err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string][]byte{"base/configmap.yaml": cm, "nodelocaldns.yaml": rendered} {
		got, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("manifests/%s is stale: run `make manifests` and commit the result", file)
		}
	}
}

func TestEveryManifestDecodesStrictly(t *testing.T) {
	files, _ := filepath.Glob("base/*.yaml")
	files = append(files, "nodelocaldns.yaml")
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(decode(t, f, data)) == 0 {
			t.Errorf("%s: no documents", f)
		}
	}
	for _, overlay := range []string{"overlays/ipvs", "overlays/ondelete", "overlays/iptables-legacy", "overlays/node-readiness"} {
		render(t, overlay)
	}
}

// lameduck reads the health plugin's lameduck from the Corefile.
func lameduck(t *testing.T, corefile string) time.Duration {
	t.Helper()
	m := regexp.MustCompile(`lameduck\s+(\S+)`).FindStringSubmatch(corefile)
	if m == nil {
		t.Fatal("no lameduck in the Corefile: SIGTERM would stop serving at once")
	}
	d, err := time.ParseDuration(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// The capabilities node-cache needs, each proven by test/e2e's capability
// test: on nf_tables nodes (the base), and on iptables-legacy nodes (its overlay).
var (
	neededCapabilities       = []corev1.Capability{"NET_ADMIN", "NET_BIND_SERVICE"}
	neededLegacyCapabilities = []corev1.Capability{"NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW"}
)

// peakRSS is the resident memory measured in the simulated node with every
// cache full and during an NXDOMAIN storm (`make bench`, memory table), rounded up.
var peakRSS = resource.MustParse("100Mi")

func TestDaemonSetInvariants(t *testing.T) {
	objs := render(t, "base")
	ds := daemonSet(t, objs)
	spec := ds.Spec.Template.Spec
	ru := ds.Spec.UpdateStrategy.RollingUpdate
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ru == nil ||
		ru.MaxSurge.String() != "1" || ru.MaxUnavailable.String() != "0" {
		t.Errorf("update strategy %+v, want RollingUpdate with maxSurge 1, maxUnavailable 0", ds.Spec.UpdateStrategy)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("automountServiceAccountToken %v: the base never talks to the API server (only with the node-readiness component), the pod needs no token", spec.AutomountServiceAccountToken)
	}
	if spec.SecurityContext == nil || spec.SecurityContext.SeccompProfile == nil || spec.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod security context %+v, want seccompProfile RuntimeDefault", spec.SecurityContext)
	}
	if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSDefault || spec.PriorityClassName != "system-node-critical" {
		t.Errorf("hostNetwork %v, dnsPolicy %s, priorityClassName %s", spec.HostNetwork, spec.DNSPolicy, spec.PriorityClassName)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v, want to tolerate everything", spec.Tolerations)
	}
	grace := time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
	// lameduck, then the teardown and CoreDNS's server shutdown (up to 5s each).
	if ld := lameduck(t, configMapCorefile(t, objs)); grace < ld+15*time.Second {
		t.Errorf("terminationGracePeriodSeconds %v leaves no room after lameduck %v", grace, ld)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	if len(c.Ports) != 0 {
		t.Errorf("container ports %v: on a hostNetwork pod they become hostPorts and block the surge pod", c.Ports)
	}
	for name, probe := range map[string]*corev1.Probe{"/health": c.LivenessProbe, "/ready": c.ReadinessProbe} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != name || probe.HTTPGet.Host != "169.254.20.10" {
			t.Errorf("probe for %s: %+v, want an HTTP GET on 169.254.20.10", name, probe)
		}
	}
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Fatalf("security context %+v: want unprivileged, no privilege escalation, read-only root", sc)
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || !slices.Equal(sc.Capabilities.Add, neededCapabilities) {
		t.Errorf("capabilities drop %v add %v, want drop ALL, add %v", sc.Capabilities.Drop, sc.Capabilities.Add, neededCapabilities)
	}
	limit, ok := c.Resources.Limits[corev1.ResourceMemory]
	if !ok || limit.Cmp(peakRSS) <= 0 {
		t.Errorf("memory limit %v, want one above the measured peak %v", limit.String(), peakRSS.String())
	}
	if ds.Spec.Template.Annotations["prometheus.io/scrape"] != "true" || ds.Spec.Template.Annotations["prometheus.io/port"] != "9253" {
		t.Errorf("prometheus annotations %v", ds.Spec.Template.Annotations)
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	if mounts["xtables-lock"] != "/run/xtables.lock" || mounts["config"] != "/etc/coredns" || mounts["kube-dns-config"] != "/etc/kube-dns" ||
		mounts["instances"] != "/run/node-local-dns" {
		t.Errorf("volume mounts %v", mounts)
	}
	for _, v := range spec.Volumes {
		if v.Name == "kube-dns-config" && (v.ConfigMap == nil || v.ConfigMap.Optional == nil || !*v.ConfigMap.Optional) {
			t.Errorf("the kube-dns ConfigMap must be optional: %+v", v)
		}
	}
}

func TestOverlays(t *testing.T) {
	ipvs := daemonSet(t, render(t, "overlays/ipvs"))
	if args := ipvs.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "-ipvs") {
		t.Errorf("ipvs overlay args %v", args)
	}
	legacy := daemonSet(t, render(t, "overlays/iptables-legacy"))
	if caps := legacy.Spec.Template.Spec.Containers[0].SecurityContext.Capabilities.Add; !slices.Equal(caps, neededLegacyCapabilities) {
		t.Errorf("iptables-legacy overlay capabilities %v, want %v", caps, neededLegacyCapabilities)
	}
	ondelete := daemonSet(t, render(t, "overlays/ondelete"))
	if ondelete.Spec.UpdateStrategy.Type != appsv1.OnDeleteDaemonSetStrategyType {
		t.Errorf("ondelete overlay strategy %+v", ondelete.Spec.UpdateStrategy)
	}
	condition := render(t, "overlays/node-readiness")
	spec := daemonSet(t, condition).Spec.Template.Spec
	c := spec.Containers[0]
	var nodeName string
	for _, e := range c.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			nodeName = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if !slices.Contains(c.Args, "-nodecondition") || !slices.Contains(c.Args, "-startuptaint") || nodeName != "spec.nodeName" || spec.AutomountServiceAccountToken == nil || !*spec.AutomountServiceAccountToken {
		t.Errorf("node-readiness overlay: args %v, NODE_NAME from %q, automountServiceAccountToken %v", c.Args, nodeName, spec.AutomountServiceAccountToken)
	}
	kinds := map[string]bool{}
	for _, o := range condition {
		kinds[fmt.Sprintf("%T", o)] = true
	}
	for _, kind := range []string{"*v1.ClusterRole", "*v1.ClusterRoleBinding", "*v1.ValidatingAdmissionPolicy", "*v1.ValidatingAdmissionPolicyBinding"} {
		if !kinds[kind] {
			t.Errorf("node-readiness overlay lacks a %s", kind)
		}
	}
}

// TestConfigMapRendersWithTheDaemonSetArgs runs node-cache -render with the
// DaemonSet's args and the environment Kubernetes gives a kube-system pod, in
// iptables and IPVS mode: every flag exists and no placeholder is left.
func TestConfigMapRendersWithTheDaemonSetArgs(t *testing.T) {
	bin, err := harness.Binary("node-cache")
	if err != nil {
		t.Fatal(err)
	}
	for _, overlay := range []string{"base", "overlays/ipvs", "overlays/node-readiness"} {
		objs := render(t, overlay)
		dir := t.TempDir()
		base := filepath.Join(dir, "Corefile.base")
		resolv := filepath.Join(dir, "resolv.conf")
		os.WriteFile(base, []byte(configMapCorefile(t, objs)), 0o644)
		os.WriteFile(resolv, []byte("nameserver 198.18.9.1\n"), 0o644)
		args := append(daemonSet(t, objs).Spec.Template.Spec.Containers[0].Args,
			"-basecorefile", base, "-resolvconf", resolv, "-kubednscm", filepath.Join(dir, "none"), "-render")
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "KUBE_DNS_SERVICE_HOST=198.18.0.10", "KUBE_DNS_UPSTREAM_SERVICE_HOST=198.18.0.11", "NODE_NAME=node-a")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: node-cache %v: %v\n%s", overlay, args, err, out)
		}
		corefile := string(out)
		if strings.Contains(corefile, "__PILLAR__") {
			t.Fatalf("%s: placeholder left:\n%s", overlay, corefile)
		}
		if wantCondition := "node_condition " + map[bool]string{false: "off", true: "on"}[overlay == "overlays/node-readiness"]; !strings.Contains(corefile, wantCondition) {
			t.Fatalf("%s: the Corefile lacks %q:\n%s", overlay, wantCondition, corefile)
		}
		wantBind := "bind 169.254.20.10 198.18.0.10\n"
		if overlay == "overlays/ipvs" {
			wantBind = "bind 169.254.20.10 \n"
		}
		if !strings.Contains(corefile, wantBind) || !strings.Contains(corefile, "forward . 198.18.0.11 {") {
			t.Fatalf("%s: rendered Corefile lacks %q or the upstream Service:\n%s", overlay, wantBind, corefile)
		}
	}
}

// TestEveryAlertHasARunbook: each alert links to a runbook paragraph of
// manifests/README.md that exists.
func TestEveryAlertHasARunbook(t *testing.T) {
	b, err := os.ReadFile("components/monitoring/prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rule struct {
		Spec struct {
			Groups []struct {
				Rules []struct {
					Alert       string
					Annotations map[string]string
				}
			}
		}
	}
	if err := yaml.Unmarshal(b, &rule); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			n++
			if !strings.Contains(string(readme), "\n#### "+r.Alert+"\n") {
				t.Errorf("alert %s has no runbook section in manifests/README.md", r.Alert)
			}
			if want := "manifests/README.md#" + strings.ToLower(r.Alert); !strings.HasSuffix(r.Annotations["runbook_url"], want) {
				t.Errorf("alert %s: runbook_url %q, want one ending in %s", r.Alert, r.Annotations["runbook_url"], want)
			}
		}
	}
	if n == 0 {
		t.Fatal("no alert found")
	}
}
