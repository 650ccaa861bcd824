package nodelocal

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestProcNetAddr(t *testing.T) {
	if got := procNetAddr(netip.MustParseAddrPort("169.254.20.10:53")); got != "0A14FEA9:0035" {
		t.Fatalf("got %s, want 0A14FEA9:0035 (as /proc/net/udp prints it on little-endian machines)", got)
	}
}

// TestOthersSeesOnlyOtherProcesses binds real loopback sockets: ours do not
// count, another process's do.
func TestOthersSeesOnlyOtherProcesses(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ap := netip.MustParseAddrPort(pc.LocalAddr().String())
	peers := netnsPeers{name: "test"}
	if n, err := peers.Others([]netip.AddrPort{ap}); err != nil || n != 0 {
		t.Fatalf("own socket counted as another's: %d %v", n, err)
	}
	// Another process listening on a TCP port of the same address.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcpAP := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperListener$")
	cmd.Env = append(os.Environ(), "NODELOCAL_HELPER_LISTEN="+tcpAP.String())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := peers.Others([]netip.AddrPort{tcpAP})
		if err == nil && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the other process's listener not seen: %d %v", n, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestLockIsExclusive(t *testing.T) {
	peers := netnsPeers{name: "lock-test"}
	unlock, err := peers.Lock(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := peers.Lock(100 * time.Millisecond); err == nil {
		t.Fatal("lock taken twice")
	}
	unlock()
	unlock2, err := peers.Lock(time.Second)
	if err != nil {
		t.Fatalf("lock not free after unlock: %v", err)
	}
	unlock2()
}

// TestHelperListener is the other process of TestOthersSeesOnlyOtherProcesses.
func TestHelperListener(t *testing.T) {
	addr := os.Getenv("NODELOCAL_HELPER_LISTEN")
	if addr == "" {
		t.Skip("helper process only")
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	time.Sleep(10 * time.Second)
}
