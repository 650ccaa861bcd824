package nodelocal

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Sockets moves flows off this process's own DNS sockets before they close.
// SO_REUSEPORT lets a peer, or after a reload the new servers, share our
// addresses, but a socket that closes loses what it holds: the kernel resets
// the connections in a TCP listener's queues and drops the datagrams queued on
// a UDP socket (unless the node sets net.ipv4.tcp_migrate_req, which we leave
// to the operator).
type Sockets interface {
	// PauseAccepting makes the TCP listeners on listen refuse new connections
	// and returns once the connections they had queued are accepted. Refused
	// clients resend their SYN after 1 s (Linux's initial retransmission
	// timeout), so nothing is lost while the pause is short.
	PauseAccepting(listen []netip.AddrPort) error
	// ResumeAccepting undoes PauseAccepting.
	ResumeAccepting(listen []netip.AddrPort) error
	// StopAccepting pauses the TCP listeners on listen, then shuts them:
	// accepted connections go on, new ones find the listeners of a peer, or
	// none. Its error wraps errNotShut when the listeners were not shut.
	StopAccepting(listen []netip.AddrPort) error
	// LeaveUDP makes the UDP sockets on listen take no new datagrams, and
	// returns once the server has read those already queued.
	LeaveUDP(listen []netip.AddrPort) error
	// WaitAnswered returns once every connection this process accepted on
	// listen has been answered since its client last sent a query, or after
	// a second: an exit closes the connections still waited on.
	WaitAnswered(listen []netip.AddrPort) error
	// CloseAnswered closes each connection this process accepted on listen
	// once it has been answered (a second at most), as a server closes an
	// idle one: its client sends its next query on a new connection.
	CloseAnswered(listen []netip.AddrPort) error
	// HoldConnections keeps the TCP connections this process accepted on
	// listen open past the servers that accepted them, until the returned
	// Held carries them over to the servers that follow or releases them.
	HoldConnections(listen []netip.AddrPort) (Held, error)
}

// errNotShut marks a StopAccepting whose listeners still take connections.
var errNotShut = errors.New("TCP listeners not shut")

// ownSockets acts on the sockets of this process, found through /proc.
type ownSockets struct{}

// How long a paused listener may take to have its queue accepted.
const acceptDrainTimeout = time.Second

// refuseSYN is a classic BPF socket filter on the TCP header: it drops a
// segment that opens a connection (SYN without ACK) and passes everything
// else, so handshakes under way complete and open connections (which inherit
// the filter) are untouched.
var refuseSYN = []unix.SockFilter{
	{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 13}, // the flags byte
	{Code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, K: 0x12},
	{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: 0x02, Jt: 0, Jf: 1}, // SYN, no ACK
	{Code: unix.BPF_RET | unix.BPF_K, K: 0},
	{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},
}

func (ownSockets) PauseAccepting(listen []netip.AddrPort) error {
	listeners, err := ownSocketsOn(tcpTables, tcpListen, listen)
	if err != nil {
		return err
	}
	prog := unix.SockFprog{Len: uint16(len(refuseSYN)), Filter: &refuseSYN[0]}
	for _, l := range listeners {
		for _, fd := range l.fds {
			if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
				return fmt.Errorf("attach the SYN filter to TCP listener %s (fd %d): %w", l.addr, fd, err)
			}
		}
	}
	return waitAcceptQueuesEmpty(listen, acceptDrainTimeout)
}

func (ownSockets) ResumeAccepting(listen []netip.AddrPort) error {
	listeners, err := ownSocketsOn(tcpTables, tcpListen, listen)
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range listeners {
		for _, fd := range l.fds {
			// ENOENT: no filter on this socket (a new one, or detached before).
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DETACH_FILTER, 0); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("detach the SYN filter from TCP listener %s (fd %d): %w", l.addr, fd, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (s ownSockets) StopAccepting(listen []netip.AddrPort) error {
	// Shut even when the queue did not drain in time: a listener left in its
	// group with the filter on would drop its share of new SYNs, and their
	// retransmissions, until the process exits.
	pauseErr := s.PauseAccepting(listen)
	listeners, err := ownSocketsOn(tcpTables, tcpListen, listen)
	if err != nil {
		return errors.Join(pauseErr, fmt.Errorf("%w: %w", errNotShut, err))
	}
	stopped := 0
	for _, l := range listeners {
		for _, fd := range l.fds {
			// SHUT_RD on a listener stops it and leaves its SO_REUSEPORT group;
			// the descriptor stays valid for the server, whose Accept now fails.
			if err := syscall.Shutdown(fd, syscall.SHUT_RD); err != nil {
				return errors.Join(pauseErr, fmt.Errorf("%w: shut down TCP listener %s (fd %d): %w", errNotShut, l.addr, fd, err))
			}
			stopped++
		}
	}
	if stopped == 0 {
		return errors.Join(pauseErr, fmt.Errorf("%w: no TCP listener of this process on %v", errNotShut, listen))
	}
	return pauseErr
}

func (ownSockets) LeaveUDP(listen []netip.AddrPort) error {
	sockets, err := ownSocketsOn(udpTables, udpUnconnected, listen)
	if err != nil {
		return err
	}
	for _, s := range sockets {
		// A connected UDP socket is no longer picked for datagrams from other
		// sources (reuseport selection skips it, and the lookup scores it
		// out), but what is queued stays readable and replies with an explicit
		// address still go out. Connecting to itself: nothing sends from there.
		var sa unix.Sockaddr
		if s.addr.Addr().Is4() {
			sa = &unix.SockaddrInet4{Port: int(s.addr.Port()), Addr: s.addr.Addr().As4()}
		} else {
			sa = &unix.SockaddrInet6{Port: int(s.addr.Port()), Addr: s.addr.Addr().As16()}
		}
		for _, fd := range s.fds {
			if err := unix.Connect(fd, sa); err != nil {
				return fmt.Errorf("take UDP socket %s (fd %d) out of its SO_REUSEPORT group: %w", s.addr, fd, err)
			}
		}
	}
	return waitUDPQueuesRead(listen, acceptDrainTimeout)
}

// waitAcceptQueuesEmpty waits until no listener of this process on listen has
// a connection waiting to be accepted. Handshakes that were under way when
// the listener started refusing SYNs complete within a round trip, so the
// queues are watched for a short while even when they start empty.
func waitAcceptQueuesEmpty(listen []netip.AddrPort, timeout time.Duration) error {
	return waitOwnSockets(tcpTables, tcpListen, listen, 20*time.Millisecond, timeout,
		"connections still queued on the TCP listeners", func(l ownSocket) int { return l.queue })
}

// waitUDPQueuesRead waits until the UDP sockets that left their groups on
// listen hold no unread datagram.
func waitUDPQueuesRead(listen []netip.AddrPort, timeout time.Duration) error {
	return waitOwnSockets(udpTables, udpConnected, listen, 0, timeout,
		"bytes of datagrams still unread on the UDP sockets", func(s ownSocket) int { return s.queue })
}

func (ownSockets) WaitAnswered(listen []netip.AddrPort) error {
	return waitOwnSockets(tcpTables, tcpEstablished, listen, 0, acceptDrainTimeout,
		"accepted connections still awaited an answer", func(c ownSocket) int {
			if c.queue > 0 || awaitsAnswer(c.fds[0]) {
				return 1
			}
			return 0
		})
}

func (ownSockets) CloseAnswered(listen []netip.AddrPort) error {
	start := time.Now()
	for {
		conns, err := ownSocketsOn(tcpTables, tcpEstablished, listen)
		if err != nil {
			return err
		}
		late := time.Since(start) > acceptDrainTimeout
		for _, c := range conns {
			// After the wait, a query in flight is reset: its client resends it
			// on a new connection, as after an idle close.
			if late || (c.queue == 0 && !awaitsAnswer(c.fds[0])) {
				_ = unix.Shutdown(c.fds[0], unix.SHUT_RDWR)
			}
		}
		if len(conns) == 0 || late {
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// awaitsAnswer reports whether the client of the connection on fd has sent
// nothing yet, or sent something after this end last did.
func awaitsAnswer(fd int) bool {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return false // closed meanwhile
	}
	// Times since the last data received and sent, in ms; until data moves,
	// since the handshake.
	return info.Bytes_received == 0 || info.Last_data_recv < info.Last_data_sent
}

// waitOwnSockets polls this process's sockets in state on listen until
// pending counts nothing on them, for settle at least, or timeout passes;
// what says what pending counts, for the error.
func waitOwnSockets(tables []string, state string, listen []netip.AddrPort, settle, timeout time.Duration, what string, pending func(ownSocket) int) error {
	start := time.Now()
	for {
		sockets, err := ownSocketsOn(tables, state, listen)
		if err != nil {
			return err
		}
		n := 0
		for _, s := range sockets {
			n += pending(s)
		}
		switch {
		case n == 0 && time.Since(start) >= settle:
			return nil
		case time.Since(start) > timeout:
			return fmt.Errorf("%d %s on %v after %v", n, what, listen, timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// The /proc/net tables and socket states the handoff looks at.
var (
	tcpTables = []string{"tcp", "tcp6"}
	udpTables = []string{"udp", "udp6"}
)

const (
	tcpListen      = "0A"
	tcpEstablished = "01"
	udpUnconnected = "07"
	udpConnected   = "01" // after LeaveUDP
	tcpCloseWait   = "08" // the client closed its end, perhaps after a query
)

// ownSocket is one of this process's sockets, with its descriptors (a reload
// shares the socket between the old and the new servers through dup'd ones).
type ownSocket struct {
	addr  netip.AddrPort
	inode string
	fds   []int
	queue int // for a listener: connections waiting to be accepted; else bytes unread
}

// ownSocketsOn returns this process's sockets in state bound to one of listen.
func ownSocketsOn(tables []string, state string, listen []netip.AddrPort) ([]ownSocket, error) {
	own, err := ownSocketFDs()
	if err != nil {
		return nil, err
	}
	var out []ownSocket
	for _, table := range tables {
		entries, err := socketEntries("/proc/net/"+table, state, listen)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if fds := own[e.inode]; len(fds) > 0 {
				out = append(out, ownSocket{addr: e.addr, inode: e.inode, fds: fds, queue: e.rxQueue})
			}
		}
	}
	return out, nil
}
