package nodelocal

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestProcNetAddr(t *testing.T) {
	if got := procNetAddr(netip.MustParseAddrPort("169.254.20.10:53")); got != "0A14FEA9:0035" {
		t.Fatalf("got %s, want 0A14FEA9:0035 (as /proc/net/udp prints it on little-endian machines)", got)
	}
}

// TestOthersSeesOnlyOtherProcesses binds real loopback sockets: ours do not
// count, another process's do (without a registry, every other socket is a
// peer's).
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
	tcpAP, _ := startHelper(t, "")
	if n, err := peers.Others([]netip.AddrPort{tcpAP}); err != nil || n != 1 {
		t.Fatalf("the other process's listener not seen: %d %v", n, err)
	}
}

// TestLockIsExclusive: either lock, the registry's file lock or the abstract
// socket where there is no registry, is taken once at a time.
func TestLockIsExclusive(t *testing.T) {
	for name, peers := range map[string]netnsPeers{
		"registry":        {name: "lock-test", registry: &instanceRegistry{dir: t.TempDir()}},
		"abstract socket": {name: "lock-test"},
	} {
		t.Run(name, func(t *testing.T) {
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
		})
	}
}
