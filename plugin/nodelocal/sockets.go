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
	// none.
	StopAccepting(listen []netip.AddrPort) error
	// LeaveUDP makes the UDP sockets on listen take no new datagrams while
	// the server goes on reading those already queued.
	LeaveUDP(listen []netip.AddrPort) error
}

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
	if err := s.PauseAccepting(listen); err != nil {
		return err
	}
	listeners, err := ownSocketsOn(tcpTables, tcpListen, listen)
	if err != nil {
		return err
	}
	stopped := 0
	for _, l := range listeners {
		for _, fd := range l.fds {
			// SHUT_RD on a listener stops it and leaves its SO_REUSEPORT group;
			// the descriptor stays valid for the server, whose Accept now fails.
			if err := syscall.Shutdown(fd, syscall.SHUT_RD); err != nil {
				return fmt.Errorf("shut down TCP listener %s (fd %d): %w", l.addr, fd, err)
			}
			stopped++
		}
	}
	if stopped == 0 {
		return fmt.Errorf("no TCP listener of this process on %v", listen)
	}
	return nil
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
	return nil
}

// waitAcceptQueuesEmpty waits until no listener of this process on listen has
// a connection waiting to be accepted. Handshakes that were under way when
// the listener started refusing SYNs complete within a round trip, so the
// queues are watched for a short while even when they start empty.
func waitAcceptQueuesEmpty(listen []netip.AddrPort, timeout time.Duration) error {
	const settle = 20 * time.Millisecond
	start := time.Now()
	for {
		listeners, err := ownSocketsOn(tcpTables, tcpListen, listen)
		if err != nil {
			return err
		}
		queued := 0
		for _, l := range listeners {
			queued += l.queue
		}
		switch {
		case queued == 0 && time.Since(start) >= settle:
			return nil
		case time.Since(start) > timeout:
			return fmt.Errorf("%d connections still queued on the TCP listeners on %v after %v", queued, listen, timeout)
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
	udpUnconnected = "07"
	udpConnected   = "01" // after LeaveUDP
)

// ownSocket is one of this process's sockets, with its descriptors (a reload
// shares the socket between the old and the new servers through dup'd ones).
type ownSocket struct {
	addr  netip.AddrPort
	fds   []int
	queue int // for a listener: connections waiting to be accepted
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
				out = append(out, ownSocket{addr: e.addr, fds: fds, queue: e.rxQueue})
			}
		}
	}
	return out, nil
}
