package nodelocal

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startHelper runs TestHelperInstance in another process, listening on a
// loopback TCP port; with publishDir it publishes that socket as an
// instance's. It returns the port's address once the helper listens.
func startHelper(t *testing.T, publishDir string) (netip.AddrPort, *exec.Cmd) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	ready := filepath.Join(t.TempDir(), "ready")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperInstance$")
	cmd.Env = append(os.Environ(), "NODELOCAL_HELPER_LISTEN="+ap.String(), "NODELOCAL_HELPER_PUBLISH="+publishDir, "NODELOCAL_HELPER_READY="+ready)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			return ap, cmd
		}
		if time.Now().After(deadline) {
			t.Fatal("the helper process did not start listening")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHelperInstance is the other process of the registry tests.
func TestHelperInstance(t *testing.T) {
	addr := os.Getenv("NODELOCAL_HELPER_LISTEN")
	if addr == "" {
		t.Skip("helper process only")
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if dir := os.Getenv("NODELOCAL_HELPER_PUBLISH"); dir != "" {
		p := netnsPeers{registry: &instanceRegistry{dir: dir}}
		if err := p.Publish([]netip.AddrPort{netip.MustParseAddrPort(addr)}); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(os.Getenv("NODELOCAL_HELPER_READY"), nil, 0o600)
	time.Sleep(20 * time.Second)
}

// TestOnlyPublishedSocketsArePeers: a process that listens on the cache's
// addresses is a peer only if it published its socket in the instance
// directory; any other is foreign, and stops counting as a peer's with its
// instance's death.
func TestOnlyPublishedSocketsArePeers(t *testing.T) {
	dir := t.TempDir()
	peerAP, peer := startHelper(t, dir)
	foreignAP, _ := startHelper(t, "")
	listen := []netip.AddrPort{peerAP, foreignAP}
	p := netnsPeers{registry: &instanceRegistry{dir: dir}}
	for name, count := range map[string]func([]netip.AddrPort) (int, error){"Others": p.Others, "ServingTCP": p.ServingTCP, "Remaining": p.Remaining} {
		if n, err := count(listen); err != nil || n != 1 {
			t.Errorf("%s: %d, %v; want the published peer's socket only", name, n, err)
		}
	}
	if n, err := p.Foreign(listen); err != nil || n != 1 {
		t.Errorf("Foreign: %d, %v; want the unpublished socket", n, err)
	}
	// Without a registry, every other socket is a peer's (upstream's manifest).
	if n, err := (netnsPeers{}).Others(listen); err != nil || n != 2 {
		t.Errorf("without a registry: %d peers, %v; want 2", n, err)
	}
	peer.Process.Kill()
	peer.Wait()
	if n, err := p.Others(listen); err != nil || n != 0 {
		t.Errorf("after the peer's death: %d peers, %v", n, err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, f := range left {
		if strings.HasSuffix(f, ".sockets") || strings.HasSuffix(f, ".alive") {
			t.Errorf("a dead instance's file left: %s", f)
		}
	}
}

// TestRegistryLockIgnoresTheAbstractSocket: the instance lock is a file lock
// in the directory only the DaemonSet mounts; a process holding the abstract
// socket that served as the lock before does not delay a start.
func TestRegistryLockIgnoresTheAbstractSocket(t *testing.T) {
	squatter, err := net.Listen("unix", "@nodelocal/instance")
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	p := netnsPeers{name: "instance", registry: &instanceRegistry{dir: t.TempDir()}}
	start := time.Now()
	unlock, err := p.Lock(time.Second)
	if err != nil || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("lock with the abstract socket taken: %v after %v", err, time.Since(start))
	}
	unlock()
	if fi, err := os.Stat(p.registry.dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("instance directory mode %v, %v; want 0700", fi.Mode().Perm(), err)
	}
}
