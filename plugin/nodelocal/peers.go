package nodelocal

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Peers are the other node-cache processes of the node: during a DaemonSet
// surge the new pod serves on the same IPs (SO_REUSEPORT) before the old one
// stops, and the old one must not take the interception away from it.
type Peers interface {
	// Lock takes the node-wide instance lock, waiting up to timeout. It is
	// released by unlock or when the process dies.
	Lock(timeout time.Duration) (unlock func(), err error)
	// Others counts listening sockets on listen that belong to other processes.
	Others(listen []netip.AddrPort) (int, error)
	// ServingTCP counts other processes' TCP listeners on listen. One that is
	// stopping without a successor has shut them (kube-dns then serves new
	// connections) but still holds its UDP sockets.
	ServingTCP(listen []netip.AddrPort) (int, error)
	// Remaining also counts those that handed their flows off (Sockets) and
	// have not exited yet: their process will decide on the teardown.
	Remaining(listen []netip.AddrPort) (int, error)
}

// netnsPeers finds peers through the node's network namespace, which
// hostNetwork pods share: an abstract unix socket is the lock (no file, and
// the kernel frees it with the process), and /proc/net lists every socket.
type netnsPeers struct{ name string }

func (p netnsPeers) Lock(timeout time.Duration) (func(), error) {
	deadline := time.Now().Add(timeout)
	for {
		l, err := net.Listen("unix", "@nodelocal/"+p.name)
		if err == nil {
			return func() { l.Close() }, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return nil, fmt.Errorf("instance lock @nodelocal/%s: %w", p.name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (netnsPeers) Others(listen []netip.AddrPort) (int, error) {
	return countOthers(listen, udpUnconnected)
}

func (netnsPeers) ServingTCP(listen []netip.AddrPort) (int, error) {
	return countOthers(listen)
}

func (netnsPeers) Remaining(listen []netip.AddrPort) (int, error) {
	return countOthers(listen, udpUnconnected, udpConnected)
}

// countOthers counts other processes' TCP listeners and UDP sockets in
// udpStates on listen.
func countOthers(listen []netip.AddrPort, udpStates ...string) (int, error) {
	own, err := ownSocketFDs()
	if err != nil {
		return 0, err
	}
	others := 0
	count := func(files []string, state string) error {
		for _, file := range files {
			entries, err := socketEntries("/proc/net/"+file, state, listen)
			if err != nil {
				return err
			}
			for _, e := range entries {
				if len(own[e.inode]) == 0 {
					others++
				}
			}
		}
		return nil
	}
	if err := count(tcpTables, tcpListen); err != nil {
		return 0, err
	}
	for _, state := range udpStates {
		if err := count(udpTables, state); err != nil {
			return 0, err
		}
	}
	return others, nil
}

// socketEntry is a line of a /proc/net socket table.
type socketEntry struct {
	addr    netip.AddrPort
	inode   string
	rxQueue int // for a listener, the connections waiting to be accepted
}

// socketEntries reads a /proc/net socket table and returns the sockets in
// state that are bound to one of listen.
func socketEntries(path, state string, listen []netip.AddrPort) ([]socketEntry, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // no IPv6 on this node
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	want := map[string]netip.AddrPort{}
	for _, ap := range listen {
		want[procNetAddr(ap)] = ap
	}
	var entries []socketEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[3] != state {
			continue
		}
		ap, ok := want[fields[1]]
		if !ok {
			continue
		}
		_, rx, _ := strings.Cut(fields[4], ":")
		rxQueue, _ := strconv.ParseInt(rx, 16, 64)
		entries = append(entries, socketEntry{addr: ap, inode: fields[9], rxQueue: int(rxQueue)})
	}
	return entries, sc.Err()
}

// procNetAddr writes an address the way /proc/net tables do: each 32-bit word
// of the address in host byte order, in hex, then the port.
func procNetAddr(ap netip.AddrPort) string {
	var b strings.Builder
	raw := ap.Addr().AsSlice()
	for i := 0; i < len(raw); i += 4 {
		word := binary.BigEndian.Uint32(raw[i : i+4])
		var host [4]byte
		binary.NativeEndian.PutUint32(host[:], word)
		fmt.Fprintf(&b, "%08X", binary.BigEndian.Uint32(host[:]))
	}
	fmt.Fprintf(&b, ":%04X", ap.Port())
	return b.String()
}

// ownSocketFDs maps the inodes of this process's sockets to its descriptors.
func ownSocketFDs() (map[string][]int, error) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	fds := map[string][]int{}
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue
		}
		if inode, ok := strings.CutPrefix(target, "socket:["); ok {
			fd, err := strconv.Atoi(e.Name())
			if err == nil {
				fds[strings.TrimSuffix(inode, "]")] = append(fds[strings.TrimSuffix(inode, "]")], fd)
			}
		}
	}
	return fds, nil
}
