// Package cluster runs a real Kubernetes node inside network namespaces of
// its own: etcd, kube-apiserver, kube-controller-manager and kube-scheduler,
// containerd with Debian's runc and CNI plugins, kubelet and kube-proxy, all
// built from the Go module proxy (pinned in tools/) and cached by version
// outside the repository. Every image is built here and imported.
package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/nodelocal/nodelocal/build/image"
	"github.com/nodelocal/nodelocal/test/harness"
)

// KubernetesVersion is the version of the node's components (tools/kubernetes).
const KubernetesVersion = "v1.37.2"

// toolModule is a module under tools/ that pins some of the node's programs.
type toolModule struct {
	dir      string   // under tools/
	packages []string // main packages to build
	tags     string
	ldflags  string
}

var toolModules = []toolModule{
	{dir: "kubernetes", packages: []string{"k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager",
		"k8s.io/kubernetes/cmd/kube-scheduler", "k8s.io/kubernetes/cmd/kubelet", "k8s.io/kubernetes/cmd/kube-proxy", "k8s.io/kubernetes/cmd/kubectl"},
		// Stamped, or the components report v0.0.0 and version-skew checks fail.
		ldflags: "-X k8s.io/component-base/version.gitVersion=" + KubernetesVersion +
			" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"},
	{dir: "containerd", packages: []string{"github.com/containerd/containerd/v2/cmd/containerd",
		"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2", "github.com/containerd/containerd/v2/cmd/ctr"}, tags: "no_btrfs"},
	{dir: "etcd", packages: []string{"."}},
	{dir: "coredns", packages: []string{"github.com/coredns/coredns"}},
	// Not the node's: the scanner test/e2e reads the image with.
	{dir: "syft", packages: []string{"github.com/anchore/syft/cmd/syft"}},
}

// Binaries builds what is missing and returns the directory that holds
// every program of the node. It lives under the user cache directory, one
// per version of the tool modules and of Go, so only a cold machine pays.
func Binaries(logf func(string, ...any)) (string, error) {
	root, err := harness.RepoRoot()
	if err != nil {
		return "", err
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	unlock, err := image.LockDir(filepath.Join(cache, "nodelocal", "cluster"))
	if err != nil {
		return "", err
	}
	defer unlock()
	bin := filepath.Join(cache, "nodelocal", "cluster", "bin")
	for _, m := range toolModules {
		dir := filepath.Join(root, "test", "cluster", "tools", m.dir)
		key, err := moduleKey(dir)
		if err != nil {
			return "", err
		}
		out := filepath.Join(cache, "nodelocal", "cluster", m.dir+"-"+key)
		if _, err := os.Stat(filepath.Join(out, ".done")); err != nil {
			logf("building %s into %s (a few minutes, once per version)", m.dir, out)
			if err := buildTool(m, dir, out); err != nil {
				return "", err
			}
		}
		entries, err := os.ReadDir(out)
		if err != nil {
			return "", err
		}
		if err := os.MkdirAll(bin, 0o755); err != nil {
			return "", err
		}
		for _, e := range entries {
			if e.Name() == ".done" {
				continue
			}
			link := filepath.Join(bin, e.Name())
			os.Remove(link)
			if err := os.Symlink(filepath.Join(out, e.Name()), link); err != nil {
				return "", err
			}
		}
	}
	return bin, nil
}

// moduleKey identifies a tool module's build: its files and Go's version.
func moduleKey(dir string) (string, error) {
	h := sha256.New()
	h.Write([]byte(runtime.Version()))
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", e.Name(), len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

func buildTool(m toolModule, dir, out string) error {
	tmp := out + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	args := []string{"build", "-trimpath", "-ldflags", strings.TrimSpace("-s -w " + m.ldflags), "-o", tmp + "/"}
	if m.tags != "" {
		args = append(args, "-tags", m.tags)
	}
	cmd := exec.Command("go", append(args, m.packages...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=readonly")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %v\n%s", m.dir, err, b)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".done"), nil, 0o644); err != nil {
		return err
	}
	os.RemoveAll(out)
	return os.Rename(tmp, out)
}
