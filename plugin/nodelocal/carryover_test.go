package nodelocal

import (
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestHeldConnectionsAreCarriedOver: connections held while their server
// stops stay open, and what their clients sent before and was never read, or
// send later, is answered by the server now on the address; a connection its
// client closed is closed; a connection the relay serves is not held again.
func TestHeldConnectionsAreCarriedOver(t *testing.T) {
	ap, l := listenTCP(t)
	listen := []netip.AddrPort{ap}
	silent, silentServed := connect(t, ap, l)
	early, earlyServed := connect(t, ap, l)
	gone, goneServed := connect(t, ap, l)
	if _, err := early.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	gone.Close()

	held, err := ownSockets{}.HoldConnections(listen)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []net.Conn{silentServed, earlyServed, goneServed} {
		c.Close() // the old server stops
	}
	go serveTCP(l, 'n', 0) // the new server, on the same listener
	if n := held.CarryOver(); n != 3 {
		t.Fatalf("carried %d connections over, want 3", n)
	}
	wantAnswer := func(name string, c net.Conn) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if answer, err := io.ReadAll(c); err != nil || string(answer) != "n" {
			t.Errorf("client %s: answer %q, %v; want the new server's n, then the close", name, answer, err)
		}
	}
	wantAnswer("that sent its query before the stop", early)

	// The relay waits for the silent client (the others' relays end as they
	// close): a later reload leaves it alone.
	relayed := func() int {
		theRelay.mu.Lock()
		defer theRelay.mu.Unlock()
		return len(theRelay.serving)
	}
	for deadline := time.Now().Add(time.Second); relayed() != 1 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if n := relayed(); n != 1 {
		t.Errorf("the relay serves %d connections, want the silent client's", n)
	}
	again, err := ownSockets{}.HoldConnections(listen)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Release()
	for inode := range again.(heldConns) {
		if theRelay.relays(inode) {
			t.Errorf("socket %s held again while the relay serves it", inode)
		}
	}

	if _, err := silent.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	wantAnswer("silent until after the stop", silent)
}

// TestDupSocketSkipsClosedDescriptors: a connection its server closes between
// the listing and the hold is skipped, also when its number now names another
// socket.
func TestDupSocketSkipsClosedDescriptors(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	var st unix.Stat_t
	if err := unix.Fstat(fds[0], &st); err != nil {
		t.Fatal(err)
	}
	first := ownSocket{inode: strconv.FormatUint(st.Ino, 10), fds: []int{fds[0]}}
	if f, err := dupSocket(first); err != nil || f == nil {
		t.Fatalf("dupSocket of an open socket: %v, %v", f, err)
	} else {
		f.Close()
	}
	reused := first
	reused.fds = []int{fds[1]} // the number now names the other end
	if f, err := dupSocket(reused); f != nil || err != nil {
		t.Fatalf("dupSocket of a number reused by another socket: %v, %v; want skipped", f, err)
	}
	unix.Close(fds[0])
	if f, err := dupSocket(first); f != nil || err != nil {
		t.Fatalf("dupSocket of a closed descriptor: %v, %v; want skipped", f, err)
	}
}

// TestCarryOverIsBounded: at most the relay's capacity is held, and a
// relayed client that stops reading while its server writes holds the relay
// for its lifetime only.
func TestCarryOverIsBounded(t *testing.T) {
	ap, l := listenTCP(t)
	for range 3 {
		connect(t, ap, l)
	}
	held, err := holdConnections([]netip.AddrPort{ap}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(held.(heldConns)); n != 2 {
		t.Errorf("held %d connections, want the bound 2", n)
	}
	held.Release()

	client, relayed := connect(t, ap, l)
	client.Write([]byte("q")) // then never reads
	// The servers after the reload answer with more than the client will ever read.
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Read(make([]byte, 1))
				c.SetWriteDeadline(time.Now().Add(10 * time.Second))
				for {
					if _, err := c.Write(make([]byte, 64<<10)); err != nil {
						return
					}
				}
			}()
		}
	}()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- relayConn(relayed, 300*time.Millisecond) }()
	select {
	case <-done:
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("the relay ended %v after the start, its lifetime is 300ms", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the relay of a client that does not read outlived its lifetime")
	}
}
