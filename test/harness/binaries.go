package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// binaryPackages maps the programs the harness runs to their packages and
// build flags. go build optimises ./build with build/default.pgo by itself;
// coredns-plugincfg is stock CoreDNS with node-cache's plugins and order minus
// nodelocal, built with that same profile, so a comparison of the two
// isolates what the nodelocal plugin costs. Every program is built as `make
// build` builds node-cache and CoreDNS's Makefile builds coredns: static
// (CGO_ENABLED=0), stripped, so the references are built like what ships.
var binaryPackages = map[string][]string{
	"node-cache":        {"./build"},
	"coredns":           {"./test/cmd/coredns"},
	"coredns-plugincfg": {"-pgo=build/default.pgo", "./test/cmd/coredns-plugincfg"},
	"dnsload":           {"./test/cmd/dnsload"},
	"pause":             {"./test/cmd/pause"},
}

var (
	buildMu sync.Mutex
	built   = map[string]string{}
)

// Binary returns the path of a program, building it from this checkout into
// bin/test/ once per process so tests never run a stale binary. Environment
// NODELOCAL_<NAME>_BIN (for example NODELOCAL_NODE_CACHE_BIN) overrides it.
func Binary(name string) (string, error) {
	buildMu.Lock()
	defer buildMu.Unlock()
	if path, ok := built[name]; ok {
		return path, nil
	}
	if path := os.Getenv(envName(name)); path != "" {
		built[name] = path
		return path, nil
	}
	args, ok := binaryPackages[name]
	if !ok {
		return "", fmt.Errorf("unknown program %q", name)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(root, "bin", "test", name)
	tmp := fmt.Sprintf("%s.%d", out, os.Getpid())
	cmd := exec.Command("go", append([]string{"build", "-trimpath", "-ldflags=-s -w", "-o", tmp}, args...)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
	// Rename is atomic, so test packages building in parallel never see half a file.
	if err := os.Rename(tmp, out); err != nil {
		return "", err
	}
	built[name] = out
	return out, nil
}

func envName(name string) string {
	b := []byte("NODELOCAL_" + name + "_BIN")
	for i, c := range b {
		switch {
		case c == '-':
			b[i] = '_'
		case c >= 'a' && c <= 'z':
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// RepoRoot is the directory of the nodelocal module's go.mod, also from a
// test module nested in it (test/chart).
func RepoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the nodelocal module")
	}
	for dir := filepath.Dir(mod); ; dir = filepath.Dir(dir) {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(b), "module github.com/nodelocal/nodelocal\n") {
			return dir, nil
		}
		if dir == filepath.Dir(dir) {
			return "", fmt.Errorf("no nodelocal module above %s", mod)
		}
	}
}

// RequirePrivileges skips a test that needs root and the simulated node, and
// fails it instead under CI=true, where a skip would hide a broken setup.
func RequirePrivileges(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("privileged end-to-end test skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("privileged end-to-end test needs root, and CI=true forbids skipping it")
		}
		t.Skip("privileged end-to-end test needs root (network namespaces, iptables): run `sudo make test`")
	}
}

// NewNode builds a simulated node for a test and removes it when the test ends.
func NewNode(t testing.TB, opts Options) *Node {
	t.Helper()
	RequirePrivileges(t)
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	n, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range n.procs {
				t.Logf("--- log of %s:\n%s", p.Name, tail(p.Log(), 60))
			}
			for _, c := range n.containers {
				t.Logf("--- log of container %s:\n%s", c.ID, tail(c.Log(), 60))
			}
		}
		n.Close()
	})
	return n
}

func tail(s string, lines int) string {
	n := 0
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			n++
			if n > lines {
				return s[i+1:]
			}
		}
	}
	return s
}
