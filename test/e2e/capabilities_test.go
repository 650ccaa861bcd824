package e2e

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/nodelocal/nodelocal/manifests"
	"github.com/nodelocal/nodelocal/test/harness"
)

// manifestCapabilities are the capabilities the DaemonSet of a kustomize
// directory under manifests/ adds (it drops all others).
func manifestCapabilities(t *testing.T, dir string) []string {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out, err := manifests.Render(filepath.Join(root, "manifests", dir))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := manifests.Decode(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if ds, ok := o.(*appsv1.DaemonSet); ok {
			var caps []string
			for _, c := range ds.Spec.Template.Spec.Containers[0].SecurityContext.Capabilities.Add {
				caps = append(caps, strings.ToLower(string(c)))
			}
			return caps
		}
	}
	t.Fatalf("manifests/%s has no DaemonSet", dir)
	return nil
}

// withCapabilities runs node-cache as root with only caps (as the container
// runtime does with drop ALL and these added).
func withCapabilities(caps []string) []string {
	set := "-all"
	for _, c := range caps {
		set += ",+" + c
	}
	return []string{"setpriv", "--bounding-set", set, "--inh-caps", "-all"}
}

// TestManifestCapabilities proves the DaemonSet's capability sets: with
// exactly the base's node-cache works on an nf_tables node, with exactly the
// iptables-legacy overlay's on a legacy node, and without any one of them it
// fails with a clear message.
func TestManifestCapabilities(t *testing.T) {
	manifestFor := map[harness.Backend]string{harness.BackendNFT: "base", harness.BackendLegacy: "overlays/iptables-legacy"}
	want := map[harness.Backend][]string{
		harness.BackendNFT:    {"net_admin", "net_bind_service"},
		harness.BackendLegacy: {"net_admin", "net_bind_service", "net_raw"},
	}
	for _, backend := range harness.Backends {
		t.Run(string(backend), func(t *testing.T) {
			caps := manifestCapabilities(t, manifestFor[backend])
			if !slices.Equal(caps, want[backend]) {
				t.Fatalf("manifests/%s capabilities %v changed: prove the new set here", manifestFor[backend], caps)
			}
			node := harness.NewNode(t, harness.Options{Backend: backend})
			tmpl := mustTemplate(t, node, "")
			p, err := node.StartNodeCacheProcess("exact-caps", tmpl, withCapabilities(caps))
			if err != nil {
				t.Fatal(err)
			}
			if err := node.WaitReady(p, 10*time.Second); err != nil {
				t.Fatalf("with exactly %v: %v\n%s", caps, err, p.Log())
			}
			mustQuery(t, node, "udp", harness.ClusterIP, harness.WebSvc)
			assertRules(t, node, rulesBoth)
			if err := p.Stop(15 * time.Second); err != nil {
				t.Fatal(err)
			}
			assertClean(t, node)

			for _, missing := range caps {
				wantMsg := map[string]string{
					"net_admin":        "missing NET_ADMIN capability",
					"net_bind_service": "permission denied",
					"net_raw":          "add NET_RAW to the container's securityContext.capabilities (the manifests' overlays/iptables-legacy",
				}[missing]
				rest := slices.DeleteFunc(slices.Clone(caps), func(c string) bool { return c == missing })
				p, err := node.StartNodeCacheProcess("without-"+missing, tmpl, withCapabilities(rest))
				if err != nil {
					t.Fatal(err)
				}
				err = p.Wait(15 * time.Second)
				if !p.Exited() || err == nil {
					p.Kill()
					t.Fatalf("without %s node-cache kept running (%v)\n%s", missing, err, p.Log())
				}
				if !strings.Contains(p.Log(), wantMsg) {
					t.Fatalf("without %s: the log does not say %q:\n%s", missing, wantMsg, p.Log())
				}
				if missing == "net_admin" {
					if out, err := node.Host.Output("ip", "link", "show", "nodelocaldns"); err == nil {
						t.Fatalf("interface created despite the missing NET_ADMIN: %s", out)
					}
				}
			}
		})
	}
}
