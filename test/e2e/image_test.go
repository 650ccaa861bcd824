package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/nodelocal/nodelocal/build/image"
	"github.com/nodelocal/nodelocal/manifests"
	"github.com/nodelocal/nodelocal/test/cluster"
	"github.com/nodelocal/nodelocal/test/harness"
)

// manifestsOf are the objects `kubectl apply -k manifests/DIR` creates.
func manifestsOf(t *testing.T, dir string) (*appsv1.DaemonSet, map[string]map[string]string) {
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
	var ds *appsv1.DaemonSet
	configMaps := map[string]map[string]string{}
	for _, o := range objs {
		switch o := o.(type) {
		case *appsv1.DaemonSet:
			ds = o
		case *corev1.ConfigMap:
			configMaps[o.Name] = o.Data
		}
	}
	if ds == nil {
		t.Fatalf("manifests/%s has no DaemonSet", dir)
	}
	return ds, configMaps
}

// serviceEnv is what kubelet puts in the environment of a pod in the
// Service's namespace.
func serviceEnv(name, ip string) []string {
	prefix := strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
	return []string{prefix + "_SERVICE_HOST=" + ip, prefix + "_SERVICE_PORT=53"}
}

func probeURL(p *corev1.Probe) string {
	return fmt.Sprintf("http://%s:%d%s", p.HTTPGet.Host, p.HTTPGet.Port.IntValue(), p.HTTPGet.Path)
}

// TestImageRunsAsTheDaemonSetRunsIt runs the shipping image (`make image`)
// with runc the way kubelet runs the DaemonSet's container: in the node's
// network namespace, with exactly the manifest's capabilities, a read-only
// root, no privilege escalation, its args and environment, the ConfigMap at
// /etc/coredns, the node's xtables lock and instance directory (the base on
// an nf_tables node, the iptables-legacy overlay on a legacy one). It must
// serve both IPs, pass its probes, and leave the node as it was on SIGTERM.
// A missing library, a wrong path or a write to the root fails it.
func TestImageRunsAsTheDaemonSetRunsIt(t *testing.T) {
	harness.RequirePrivileges(t)
	archive, err := harness.ImageArchive()
	if err != nil {
		t.Fatal(err)
	}
	for _, backend := range harness.Backends {
		t.Run(string(backend), func(t *testing.T) {
			// Legacy nodes take the overlay that adds NET_RAW.
			ds, configMaps := manifestsOf(t, map[harness.Backend]string{harness.BackendNFT: "base", harness.BackendLegacy: "overlays/iptables-legacy"}[backend])
			pod := &ds.Spec.Template.Spec
			container := &pod.Containers[0]
			node := harness.NewNode(t, harness.Options{Backend: backend})
			img, err := harness.UnpackImage(archive, filepath.Join(node.Dir, "image"))
			if err != nil {
				t.Fatal(err)
			}
			if img.Ref != container.Image {
				t.Fatalf("the archive's image is %q, the DaemonSet runs %q", img.Ref, container.Image)
			}
			resolv, err := node.ResolvConf()
			if err != nil {
				t.Fatal(err)
			}
			spec, err := harness.OCISpec(pod, container, img, harness.PodRuntime{
				Node:       node,
				ServiceEnv: append(serviceEnv("kube-dns", harness.ClusterIP), serviceEnv("kube-dns-upstream", harness.UpstreamIP)...),
				ConfigMaps: configMaps, // the kube-dns ConfigMap is absent, as on most clusters
				ResolvConf: resolv,
				VolumeDir:  filepath.Join(node.Dir, "volumes"),
			})
			if err != nil {
				t.Fatal(err)
			}
			ctr, err := node.RunContainer("node-cache", spec)
			if err != nil {
				t.Fatal(err)
			}
			ready := probeURL(container.ReadinessProbe)
			deadline := time.Now().Add(20 * time.Second)
			for {
				if _, err := node.Host.HTTPGetTimeout(ready, time.Second); err == nil {
					break
				} else if ctr.Exited() || time.Now().After(deadline) {
					t.Fatalf("readiness probe %s: %v (container exited: %v)\n%s", ready, err, ctr.Exited(), ctr.Log())
				}
				time.Sleep(100 * time.Millisecond)
			}
			if _, err := node.Host.HTTPGet(probeURL(container.LivenessProbe)); err != nil {
				t.Fatalf("liveness probe: %v", err)
			}
			for _, ip := range []string{harness.LocalIP, harness.ClusterIP} {
				for _, network := range []string{"udp", "tcp"} {
					mustQuery(t, node, network, ip, harness.WebSvc)
				}
			}
			assertRules(t, node, rulesBoth)

			if err := ctr.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			grace := time.Duration(*ds.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
			if err := ctr.Wait(grace); err != nil {
				t.Fatalf("after SIGTERM, within the %v grace period: %v\n%s", grace, err, ctr.Log())
			}
			assertClean(t, node)
			for _, bad := range []string{"read-only file system", "[ERROR]", "not found"} {
				if strings.Contains(ctr.Log(), bad) {
					t.Errorf("the container's log says %q:\n%s", bad, ctr.Log())
				}
			}
		})
	}
}

// TestImageArchiveReadByOtherTools: skopeo (the containers/image library that
// podman also loads with) reads the archive both as an OCI archive and as a
// Docker archive (manifest.json, what `docker load` reads), and finds the
// DaemonSet's image in it.
func TestImageArchiveReadByOtherTools(t *testing.T) {
	harness.RequirePrivileges(t)
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Fatal("skopeo not found: install Debian's skopeo package (make deps)")
	}
	archive, err := harness.ImageArchive()
	if err != nil {
		t.Fatal(err)
	}
	ds, _ := manifestsOf(t, "base")
	ref := ds.Spec.Template.Spec.Containers[0].Image
	for _, transport := range []string{"oci-archive:" + archive + ":" + ref, "docker-archive:" + archive + ":" + ref} {
		out, err := exec.Command("skopeo", "inspect", "--config", transport).CombinedOutput()
		if err != nil {
			t.Fatalf("skopeo inspect %s: %v\n%s", transport, err, out)
		}
		var cfg struct {
			Architecture string
			Config       struct{ Entrypoint []string }
		}
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatalf("skopeo inspect %s: %v\n%s", transport, err, out)
		}
		if cfg.Architecture != "amd64" || !slices.Equal(cfg.Config.Entrypoint, []string{"/node-cache"}) {
			t.Fatalf("skopeo inspect %s: architecture %q, entrypoint %q", transport, cfg.Architecture, cfg.Config.Entrypoint)
		}
	}
}

// TestImageScannedBySyft: a scanner finds every package of the image: syft
// (pinned in test/cluster/tools/syft) reads the OCI archive and lists the
// Debian packages of the base layer, through their dpkg records, and the Go
// modules of node-cache, through its build information; each package of the
// image's own SBOM is among them, at the same version.
func TestImageScannedBySyft(t *testing.T) {
	harness.RequirePrivileges(t)
	archive, err := harness.ImageArchive()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := cluster.Binaries(t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "syft"), "scan", "oci-archive:"+archive, "-o", "syft-json", "-q")
	cmd.Env = append(cmd.Environ(), "SYFT_CHECK_FOR_APP_UPDATE=false")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("syft scan: %v", err)
	}
	var scan struct {
		Artifacts []struct{ Name, Version, Type string }
	}
	if err := json.Unmarshal(out, &scan); err != nil {
		t.Fatalf("syft's output: %v", err)
	}
	found := map[string]bool{}
	var listing []string
	for _, a := range scan.Artifacts {
		found[a.Type+" "+a.Name+" "+strings.TrimPrefix(a.Version, "go")] = true
		listing = append(listing, fmt.Sprintf("%-10s %-50s %s", a.Type, a.Name, a.Version))
	}
	slices.Sort(listing)
	t.Logf("syft found %d packages:\n%s", len(listing), strings.Join(listing, "\n"))

	img, err := harness.UnpackImage(archive, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sbom, err := os.ReadFile(filepath.Join(img.Rootfs, image.SBOMPath))
	if err != nil {
		t.Fatalf("the image's SBOM: %v", err)
	}
	var doc struct {
		Packages []struct {
			Name, VersionInfo string
			ExternalRefs      []struct{ ReferenceLocator string }
		}
	}
	if err := json.Unmarshal(sbom, &doc); err != nil {
		t.Fatal(err)
	}
	debs, modules := 0, 0
	for _, p := range doc.Packages {
		if len(p.ExternalRefs) == 0 {
			continue // the image itself
		}
		purl := p.ExternalRefs[0].ReferenceLocator
		kind := "go-module"
		switch {
		case strings.HasPrefix(purl, "pkg:deb/"):
			kind = "deb"
			debs++
		case strings.HasPrefix(purl, "pkg:golang/github.com/nodelocal/nodelocal@"):
			continue // the main module: syft reads its version from the linker's flags, its own way
		default:
			modules++
		}
		if !found[kind+" "+p.Name+" "+p.VersionInfo] {
			t.Errorf("syft did not find %s %s %s, which the image's SBOM lists", kind, p.Name, p.VersionInfo)
		}
	}
	if debs < 6 || modules < 20 {
		t.Fatalf("the SBOM lists %d Debian packages and %d Go modules: too few", debs, modules)
	}
}
