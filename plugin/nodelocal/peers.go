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
	"sync"
	"syscall"
	"time"
)

// Peers are the other node-cache processes of the node: during a DaemonSet
// surge the new pod serves on the same IPs (SO_REUSEPORT) before the old one
// stops, and the old one must not take the interception away from it. Only
// sockets a peer instance published count as a peer's (instances.go); any
// other socket on the cache's addresses is foreign.
type Peers interface {
	// Lock takes the node-wide instance lock, waiting up to timeout. It is
	// released by unlock or when the process dies.
	Lock(timeout time.Duration) (unlock func(), err error)
	// Publish tells peers which sockets on listen are this instance's.
	Publish(listen []netip.AddrPort) error
	// Others counts peers' listening sockets on listen.
	Others(listen []netip.AddrPort) (int, error)
	// ServingTCP counts peers' TCP listeners on listen. One that is
	// stopping without a successor has shut them (kube-dns then serves new
	// connections) but still holds its UDP sockets.
	ServingTCP(listen []netip.AddrPort) (int, error)
	// Remaining also counts those that handed their flows off (Sockets) and
	// have not exited yet: their process will decide on the teardown.
	Remaining(listen []netip.AddrPort) (int, error)
	// Foreign counts sockets on listen that are neither this instance's nor
	// a peer's: another program sharing the cache's addresses.
	Foreign(listen []netip.AddrPort) (int, error)
}

// netnsPeers finds peers through the node's network namespace, which
// hostNetwork pods share (/proc/net lists every socket), and the instance
// registry. Where the registry's directory is not mounted, every other
// socket counts as a peer's and the lock is an abstract unix socket, as
// before the registry: anyone on the node can then take either.
type netnsPeers struct {
	name     string // the abstract lock's, without a registry
	registry *instanceRegistry
}

// noRegistryWarning: a missing registry is logged once.
var noRegistryWarning sync.Once

func newNetnsPeers(name string) netnsPeers {
	p := netnsPeers{name: name}
	if dir := stateDir(); dir != "" {
		p.registry = &instanceRegistry{dir: dir}
	}
	return p
}

func (p netnsPeers) Lock(timeout time.Duration) (func(), error) {
	if p.registry != nil {
		if err := p.registry.open(); err != nil {
			return nil, err
		}
		return p.registry.lock(timeout)
	}
	noRegistryWarning.Do(func() {
		log.Warningf("Instance directory %s is not mounted: node-cache instances recognise each other by their sockets alone, "+
			"which any process on the node can open; mount it as the manifests do (hostPath, DirectoryOrCreate)", DefaultStateDir)
	})
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

func (p netnsPeers) Publish(listen []netip.AddrPort) error {
	if p.registry == nil {
		return nil
	}
	own, err := ownSocketFDs()
	if err != nil {
		return err
	}
	var inodes []string
	for _, table := range socketTables(udpUnconnected) {
		entries, err := socketEntries("/proc/net/"+table.file, table.state, listen)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if len(own[e.inode]) > 0 {
				inodes = append(inodes, e.inode)
			}
		}
	}
	return p.registry.publish(inodes)
}

func (p netnsPeers) Others(listen []netip.AddrPort) (int, error) {
	peers, _, err := p.count(listen, udpUnconnected)
	return peers, err
}

func (p netnsPeers) ServingTCP(listen []netip.AddrPort) (int, error) {
	peers, _, err := p.count(listen)
	return peers, err
}

func (p netnsPeers) Remaining(listen []netip.AddrPort) (int, error) {
	peers, _, err := p.count(listen, udpUnconnected, udpConnected)
	return peers, err
}

func (p netnsPeers) Foreign(listen []netip.AddrPort) (int, error) {
	if p.registry == nil {
		return 0, nil // nothing tells a peer from a stranger
	}
	_, foreign, err := p.count(listen, udpUnconnected, udpConnected)
	return foreign, err
}

// count counts other processes' TCP listeners and UDP sockets in udpStates
// on listen: those of peers, and the rest.
func (p netnsPeers) count(listen []netip.AddrPort, udpStates ...string) (peers, foreign int, err error) {
	own, err := ownSocketFDs()
	if err != nil {
		return 0, 0, err
	}
	var published map[string]bool
	if p.registry != nil {
		if published, err = p.registry.peerSockets(); err != nil {
			return 0, 0, err
		}
	}
	for _, table := range socketTables(udpStates...) {
		entries, err := socketEntries("/proc/net/"+table.file, table.state, listen)
		if err != nil {
			return 0, 0, err
		}
		for _, e := range entries {
			switch {
			case len(own[e.inode]) > 0:
			case p.registry == nil || published[e.inode]:
				peers++
			default:
				foreign++
			}
		}
	}
	return peers, foreign, nil
}

// socketTable is a /proc/net table and the state of the sockets wanted there.
type socketTable struct{ file, state string }

// socketTables are the TCP listeners and the UDP sockets in udpStates.
func socketTables(udpStates ...string) []socketTable {
	var tables []socketTable
	for _, file := range tcpTables {
		tables = append(tables, socketTable{file, tcpListen})
	}
	for _, state := range udpStates {
		for _, file := range udpTables {
			tables = append(tables, socketTable{file, state})
		}
	}
	return tables
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
