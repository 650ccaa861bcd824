package nodelocal

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests run the handoff against the kernel on loopback: this process
// is the stopping instance, a helper process the peer that shares its
// addresses through SO_REUSEPORT.

var reuseport = net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
	var err error
	c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
	return err
}}

// freeAddr returns a loopback address with a port that is free for TCP and UDP.
func freeAddr(t *testing.T) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return netip.MustParseAddrPort(l.Addr().String())
}

// startPeer runs TestHelperPeer on ap and waits until it serves.
func startPeer(t *testing.T, ap netip.AddrPort) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperPeer$")
	cmd.Env = append(os.Environ(), "NODELOCAL_HELPER_PEER="+ap.String())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "serving\n" {
		t.Fatalf("peer did not start: %q %v", line, err)
	}
}

// TestHelperPeer is the peer process: it answers every TCP connection and
// every datagram on the address with "p".
func TestHelperPeer(t *testing.T) {
	addr := os.Getenv("NODELOCAL_HELPER_PEER")
	if addr == "" {
		t.Skip("helper process only")
	}
	l, err := reuseport.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := reuseport.ListenPacket(context.Background(), "udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go serveTCP(l, 'p', 0)
	go serveUDP(pc, 'p')
	fmt.Println("serving")
	time.Sleep(30 * time.Second)
}

// serveTCP answers each connection's one-byte query with reply, accepting a
// connection every pace at most.
func serveTCP(l net.Listener, reply byte, pace time.Duration) {
	for {
		time.Sleep(pace)
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				c.Write([]byte{reply})
			}
		}()
	}
}

// serveUDP answers each datagram with reply.
func serveUDP(pc net.PacketConn, reply byte) int {
	buf := make([]byte, 16)
	answered := 0
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return answered
		}
		pc.WriteTo([]byte{reply}, from)
		answered++
	}
}

// TestStopAcceptingLosesNoConnection: a storm of one-query connections while
// the listener hands off to the peer. This listener accepts slowly, so
// connections queue on it; shut as it is, the kernel would reset them. Drained
// first, it shuts with nothing queued, and the connections it refused
// meanwhile get through to the peer on their SYN retransmission.
func TestStopAcceptingLosesNoConnection(t *testing.T) {
	ap := freeAddr(t)
	l, err := reuseport.Listen(context.Background(), "tcp", ap.String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go serveTCP(l, 'o', 4*time.Millisecond)
	startPeer(t, ap)

	var failed, ours, peers atomic.Int64
	var wg sync.WaitGroup
	const clients, perClient = 20, 40 // 800 connections in about 1.2 s
	for range clients {
		wg.Go(func() {
			for range perClient {
				c, err := net.DialTimeout("tcp", ap.String(), 3*time.Second)
				if err != nil {
					failed.Add(1)
					continue
				}
				c.SetDeadline(time.Now().Add(3 * time.Second))
				reply := make([]byte, 1)
				if _, err := c.Write([]byte{'q'}); err != nil {
					failed.Add(1)
				} else if _, err := c.Read(reply); err != nil {
					failed.Add(1)
				} else if reply[0] == 'o' {
					ours.Add(1)
				} else {
					peers.Add(1)
				}
				c.Close()
				time.Sleep(30 * time.Millisecond)
			}
		})
	}
	time.Sleep(400 * time.Millisecond)
	if err := (ownSockets{}).StopAccepting([]netip.AddrPort{ap}); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", ap.String(), time.Second); err != nil {
		t.Fatalf("the peer does not take new connections: %v", err)
	} else {
		c.Close()
	}
	wg.Wait()
	t.Logf("ours %d, the peer's %d, failed %d", ours.Load(), peers.Load(), failed.Load())
	if failed.Load() != 0 || ours.Load() == 0 {
		t.Fatalf("%d connections failed across the handoff (want 0), %d answered here", failed.Load(), ours.Load())
	}
}

// TestLeaveUDPKeepsQueuedDatagrams: datagrams queued on a socket that leaves
// its group are still read and answered; new ones all go to the peer.
func TestLeaveUDPKeepsQueuedDatagrams(t *testing.T) {
	ap := freeAddr(t)
	pc, err := reuseport.ListenPacket(context.Background(), "udp", ap.String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	startPeer(t, ap)

	// Each query from its own port, so the kernel's hash spreads them.
	send := func(n int) []net.Conn {
		var conns []net.Conn
		for range n {
			c, err := net.Dial("udp", ap.String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			if _, err := c.Write([]byte{'q'}); err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		return conns
	}
	before := send(100) // some queue here: nothing reads this socket yet
	time.Sleep(50 * time.Millisecond)
	served := make(chan int, 1)
	go func() {
		time.Sleep(100 * time.Millisecond) // a busy server: LeaveUDP waits for it to read the queue
		pc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		served <- serveUDP(pc, 'o')
	}()
	if err := (ownSockets{}).LeaveUDP([]netip.AddrPort{ap}); err != nil {
		t.Fatal(err)
	}
	after := send(100)
	answered := <-served

	replies := func(conns []net.Conn) (ours, peers int) {
		for _, c := range conns {
			c.SetReadDeadline(time.Now().Add(time.Second))
			b := make([]byte, 1)
			if _, err := c.Read(b); err != nil {
				t.Fatalf("query from %s unanswered: %v", c.LocalAddr(), err)
			}
			if b[0] == 'o' {
				ours++
			} else {
				peers++
			}
		}
		return ours, peers
	}
	oursBefore, _ := replies(before)
	oursAfter, _ := replies(after)
	t.Logf("answered here: %d queued before leaving, %d after", oursBefore, oursAfter)
	if oursBefore == 0 || oursAfter != 0 || answered != oursBefore {
		t.Fatalf("answered here %d of the first 100 and %d of the next 100 (want some, then none)", oursBefore, oursAfter)
	}
}

// TestPauseAcceptingRefusesOnlyNewConnections: a paused listener completes
// nothing new, keeps open connections working, and takes new ones once
// resumed.
func TestPauseAcceptingRefusesOnlyNewConnections(t *testing.T) {
	ap, l := listenTCP(t)
	open, served := connect(t, ap, l)
	sockets := ownSockets{}
	listen := []netip.AddrPort{ap}
	if err := sockets.PauseAccepting(listen); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", ap.String(), 300*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("a paused listener completed a handshake")
	}
	if _, err := open.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	served.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := served.Read(make([]byte, 1)); err != nil {
		t.Fatalf("open connection broken by the pause: %v", err)
	}
	if err := sockets.ResumeAccepting(listen); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", ap.String(), time.Second)
	if err != nil {
		t.Fatalf("no connection after resuming: %v", err)
	}
	c.Close()
	if err := sockets.StopAccepting([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")}); !errors.Is(err, errNotShut) {
		t.Fatalf("StopAccepting with no listener to shut: %v, want errNotShut", err)
	}
}

// TestStopAcceptingShutsAStalledListener: a listener whose server accepts
// nothing more is shut anyway once the drain times out; left in its group
// with the filter on, it would drop its share of new SYNs until exit.
func TestStopAcceptingShutsAStalledListener(t *testing.T) {
	ap, _ := listenTCP(t) // nobody accepts
	queued, err := net.Dial("tcp", ap.String())
	if err != nil {
		t.Fatal(err)
	}
	defer queued.Close()
	err = ownSockets{}.StopAccepting([]netip.AddrPort{ap})
	if err == nil || errors.Is(err, errNotShut) {
		t.Fatalf("StopAccepting with a connection that stays queued: %v, want the drain's timeout only", err)
	}
	if c, err := net.DialTimeout("tcp", ap.String(), 300*time.Millisecond); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("a new connection to the stalled listener: %v, want it refused (the listener shut)", err)
	}
}

// listenTCP listens on a free loopback address, as CoreDNS does (SO_REUSEPORT).
func listenTCP(t *testing.T) (netip.AddrPort, net.Listener) {
	t.Helper()
	ap := freeAddr(t)
	l, err := reuseport.Listen(context.Background(), "tcp", ap.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return ap, l
}

// connect opens a connection to l and accepts it: the client's end and the
// server's.
func connect(t *testing.T, ap netip.AddrPort, l net.Listener) (client, served net.Conn) {
	t.Helper()
	client, err := net.Dial("tcp", ap.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	served, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { served.Close() })
	return client, served
}

// TestWaitAnsweredWaitsForTheQueryAndItsAnswer: before an exit, a connection
// whose client has not sent its query yet, or whose query is read but not
// answered, is waited for; an answered one that stays open is not.
func TestWaitAnsweredWaitsForTheQueryAndItsAnswer(t *testing.T) {
	ap, l := listenTCP(t)
	listen := []netip.AddrPort{ap}
	client, served := connect(t, ap, l)
	answered := make(chan time.Time, 1)
	go func() {
		time.Sleep(150 * time.Millisecond) // a client slow to send
		client.Write([]byte("q"))
		time.Sleep(150 * time.Millisecond)
		served.Read(make([]byte, 1))
		time.Sleep(150 * time.Millisecond) // an answer slow to come
		// Taken before the write: the wait may end as soon as the answer is
		// sent, before a time taken after it.
		at := time.Now()
		served.Write([]byte("n"))
		answered <- at
	}()
	if err := (ownSockets{}).WaitAnswered(listen); err != nil {
		t.Fatal(err)
	}
	returned := time.Now()
	if at := <-answered; returned.Before(at) {
		t.Fatalf("returned %v before the answer", at.Sub(returned))
	}
	start := time.Now()
	if err := (ownSockets{}).WaitAnswered(listen); err != nil || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("waited %v (%v) for an answered connection that stays open", time.Since(start), err)
	}
}
