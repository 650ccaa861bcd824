package nodelocal

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Carrying TCP connections over a reload. The old servers close every
// connection they accepted when they stop, so a query sent on one after that
// goes unanswered: a client slowed down between its handshake and its query,
// or one that keeps its connection open between queries. The kernel keeps a
// socket open while any descriptor of it is, so during the reload's pause this
// process takes a second descriptor of each connection the old servers hold;
// once they have stopped, a relay passes what each client sends next to the
// new servers on the same address, and their answers back.

// Held is the connections of servers that are about to stop.
type Held interface {
	// CarryOver relays the connections to the servers now listening on their
	// addresses, and returns how many it took.
	CarryOver() int
	// Release lets the connections close with their servers.
	Release()
}

// How long a carried-over connection may stay silent before the relay closes
// it, as a server closes an idle connection.
const carriedIdleTimeout = 10 * time.Second

// Bounds of the relay, whatever the clients do: at most this many
// connections carried over at once (the rest close with their servers, as
// without the relay), each relayed for at most this long (its client then
// connects again, to the servers directly). A client that stops reading
// holds its relay until then, not forever.
const (
	maxCarriedConnections = 1024
	carriedLifetime       = 30 * time.Second
)

// heldConns are duplicated descriptors of connections, by socket inode.
type heldConns map[string]*os.File

func (ownSockets) HoldConnections(listen []netip.AddrPort) (Held, error) {
	return holdConnections(listen, maxCarriedConnections-theRelay.count())
}

// holdConnections holds at most max of the connections on listen.
func holdConnections(listen []netip.AddrPort, max int) (Held, error) {
	held, skipped := heldConns{}, 0
	for _, state := range []string{tcpEstablished, tcpCloseWait} {
		conns, err := ownSocketsOn(tcpTables, state, listen)
		if err != nil {
			held.Release()
			return nil, err
		}
		for _, c := range conns {
			if _, dup := held[c.inode]; dup || theRelay.relays(c.inode) {
				continue
			}
			if len(held) >= max {
				skipped++
				continue
			}
			f, err := dupSocket(c)
			if err != nil {
				held.Release()
				return nil, fmt.Errorf("duplicate the descriptor of a TCP connection on %s (fd %d): %w", c.addr, c.fds[0], err)
			}
			if f != nil {
				held[c.inode] = f
			}
		}
	}
	if skipped > 0 {
		log.Warningf("Reload: %d open TCP connections close with the old servers: at most %d are carried over at once", skipped, maxCarriedConnections)
	}
	return held, nil
}

// dupSocket duplicates the socket's first descriptor, or returns nil if its
// server closed it since /proc was read (the number may be another file's now).
func dupSocket(c ownSocket) (*os.File, error) {
	dup, err := unix.FcntlInt(uintptr(c.fds[0]), unix.F_DUPFD_CLOEXEC, 0)
	if errors.Is(err, unix.EBADF) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(dup, &st); err != nil || strconv.FormatUint(st.Ino, 10) != c.inode {
		unix.Close(dup)
		return nil, nil
	}
	return os.NewFile(uintptr(dup), "TCP connection on "+c.addr.String()), nil
}

func (h heldConns) CarryOver() int {
	for inode, f := range h {
		theRelay.take(inode, f)
	}
	return len(h)
}

func (h heldConns) Release() {
	for _, f := range h {
		f.Close()
	}
}

// theRelay serves the connections carried over the reloads of this process.
var theRelay = &relay{serving: map[string]bool{}}

type relay struct {
	mu      sync.Mutex
	serving map[string]bool // socket inodes: held again by a later reload, a connection would have two readers
}

// count is how many connections the relay serves.
func (r *relay) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.serving)
}

func (r *relay) relays(inode string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.serving[inode]
}

// take relays the connection in f, whose servers have stopped.
func (r *relay) take(inode string, f *os.File) {
	conn, err := net.FileConn(f)
	f.Close()
	if err != nil {
		log.Warningf("Reload: could not carry %s over to the new servers: %v", f.Name(), err)
		return
	}
	r.mu.Lock()
	r.serving[inode] = true
	r.mu.Unlock()
	go func() {
		defer func() {
			conn.Close()
			r.mu.Lock()
			delete(r.serving, inode)
			r.mu.Unlock()
		}()
		if err := relayConn(conn, carriedLifetime); err != nil {
			log.Warningf("Reload: a TCP connection carried over from %s lost its query: %v", conn.RemoteAddr(), err)
		}
	}()
}

// relayConn waits for the client to send something, then connects to the
// servers on the address the client reached and copies bytes both ways until
// one side closes, or lifetime is over: the servers read the DNS messages and
// apply their own timeouts. A client that sends nothing, or closes, is not
// passed on; a query whose length the old servers read gets it back
// (framing.go).
func relayConn(client net.Conn, lifetime time.Duration) error {
	first := make([]byte, 512)
	client.SetReadDeadline(time.Now().Add(carriedIdleTimeout))
	n, _ := client.Read(first)
	if n == 0 {
		return nil // closed or idle: the close the old servers meant
	}
	client.SetReadDeadline(time.Time{})
	server, err := net.DialTimeout("tcp", client.LocalAddr().String(), time.Second)
	if err != nil {
		return fmt.Errorf("connect to the new servers: %w", err)
	}
	defer server.Close()
	end := time.Now().Add(lifetime)
	client.SetDeadline(end)
	server.SetDeadline(end)
	query, restored := restoreFraming(first[:n])
	if restored {
		log.Infof("Reload: the old servers had read only the length of a query from %s as they stopped; passed on with its length", client.RemoteAddr())
	}
	if _, err := server.Write(query); err != nil {
		return fmt.Errorf("pass the query on to %s: %w", server.RemoteAddr(), err)
	}
	clientDone := make(chan struct{})
	go func() {
		io.Copy(server, client)
		server.(*net.TCPConn).CloseWrite() // the client closed its end: the server closes in turn
		close(clientDone)
	}()
	io.Copy(client, server)
	client.Close() // the server closed (idle, or done): ends the other copy
	<-clientDone
	return nil
}
