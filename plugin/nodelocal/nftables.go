package nodelocal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// NFTables writes and reads our own nf_tables tables, each replaced whole in
// one transaction. Rules are told apart by their text, which each carries as
// its userdata: the kernel gives it back as written.
type NFTables interface {
	// Replace makes t exactly as given, atomically: created if missing.
	Replace(t nftTable) error
	// Delete removes a table; a missing one is no error.
	Delete(name string) error
	// Rules lists a table's rules by chain, as their texts; a missing table
	// lists nothing.
	Rules(name string) (map[string][]string, error)
}

// nftOwner is the table flag that ties a table to the netlink socket that
// made it: the kernel deletes it when that socket closes, that is when the
// process exits, however it exits (Linux 5.12).
const nftOwner = 0x2

// nftNetlink is NFTables on one netlink socket, kept open for the life of the
// process: the tables it makes with nftOwner live exactly as long.
type nftNetlink struct {
	mu  sync.Mutex
	fd  int // -1 until first used
	seq uint32
}

func newNFTNetlink() *nftNetlink { return &nftNetlink{fd: -1} }

func (n *nftNetlink) Replace(t nftTable) error {
	flags := uint32(0)
	if t.owned {
		flags = nftOwner
	}
	table := func(msg uint16, msgFlags uint16) nlMessage {
		return nlMessage{typ: msg, flags: msgFlags, attrs: nlAttrs(strAttr(unix.NFTA_TABLE_NAME, t.name), u32Attr(unix.NFTA_TABLE_FLAGS, flags))}
	}
	// Add (a no-op if it exists), delete, add again: the one-transaction
	// replacement that needs no listing first.
	msgs := []nlMessage{table(unix.NFT_MSG_NEWTABLE, unix.NLM_F_CREATE), table(unix.NFT_MSG_DELTABLE, 0), table(unix.NFT_MSG_NEWTABLE, unix.NLM_F_CREATE)}
	for _, c := range t.chains {
		hook := nlAttrs(u32Attr(unix.NFTA_HOOK_HOOKNUM, c.hook), u32Attr(unix.NFTA_HOOK_PRIORITY, uint32(c.priority)))
		msgs = append(msgs, nlMessage{typ: unix.NFT_MSG_NEWCHAIN, flags: unix.NLM_F_CREATE, attrs: nlAttrs(
			strAttr(unix.NFTA_CHAIN_TABLE, t.name), strAttr(unix.NFTA_CHAIN_NAME, c.name),
			nestedAttr(unix.NFTA_CHAIN_HOOK, hook), strAttr(unix.NFTA_CHAIN_TYPE, c.kind))})
		for _, r := range c.rules {
			var list []byte
			for _, e := range r.exprs {
				elem := strAttr(unix.NFTA_EXPR_NAME, e.name)
				if len(e.data) > 0 {
					elem = append(elem, nestedAttr(unix.NFTA_EXPR_DATA, e.data)...)
				}
				list = append(list, nestedAttr(unix.NFTA_LIST_ELEM, elem)...)
			}
			msgs = append(msgs, nlMessage{typ: unix.NFT_MSG_NEWRULE, flags: unix.NLM_F_CREATE | unix.NLM_F_APPEND, attrs: nlAttrs(
				strAttr(unix.NFTA_RULE_TABLE, t.name), strAttr(unix.NFTA_RULE_CHAIN, c.name),
				nestedAttr(unix.NFTA_RULE_EXPRESSIONS, list), nlAttr(unix.NFTA_RULE_USERDATA, []byte(r.text)))})
		}
	}
	if err := n.transact(msgs); err != nil {
		return fmt.Errorf("write nf_tables table inet %s: %w", t.name, err)
	}
	return nil
}

func (n *nftNetlink) Delete(name string) error {
	err := n.transact([]nlMessage{{typ: unix.NFT_MSG_DELTABLE, attrs: strAttr(unix.NFTA_TABLE_NAME, name)}})
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete nf_tables table inet %s: %w", name, err)
	}
	return nil
}

func (n *nftNetlink) Rules(name string) (map[string][]string, error) {
	replies, err := n.dump(nlMessage{typ: unix.NFT_MSG_GETRULE, attrs: strAttr(unix.NFTA_RULE_TABLE, name)})
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list nf_tables table inet %s: %w", name, err)
	}
	out := map[string][]string{}
	for _, msg := range replies {
		as, ok := parseAttrs(msg)
		if !ok {
			return nil, fmt.Errorf("list nf_tables table inet %s: a malformed answer", name)
		}
		var chain, text string
		for _, a := range as {
			switch a.kind {
			case unix.NFTA_RULE_CHAIN:
				chain = cString(a.value)
			case unix.NFTA_RULE_USERDATA:
				text = string(a.value)
			}
		}
		out[chain] = append(out[chain], text)
	}
	return out, nil
}

// nlMessage is one nf_tables request, inet family.
type nlMessage struct {
	typ   uint16 // NFT_MSG_*
	flags uint16
	attrs []byte
}

// socket opens the netlink socket once; a process keeps it to the end.
func (n *nftNetlink) socket() (int, error) {
	if n.fd >= 0 {
		return n.fd, nil
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return -1, fmt.Errorf("open a netfilter netlink socket: %w", wrapPermission(err))
	}
	tv := unix.NsecToTimeval((2 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err == nil {
		err = unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind a netfilter netlink socket: %w", err)
	}
	n.fd = fd
	return fd, nil
}

// transact sends msgs as one batch, which the kernel applies whole or not
// at all, and waits for every acknowledgement.
func (n *nftNetlink) transact(msgs []nlMessage) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	fd, err := n.socket()
	if err != nil {
		return err
	}
	first := n.seq + 1
	buf := n.encode(unix.NFNL_MSG_BATCH_BEGIN, unix.NLM_F_REQUEST, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, nil)
	for _, m := range msgs {
		buf = append(buf, n.encode(unix.NFNL_SUBSYS_NFTABLES<<8|m.typ, unix.NLM_F_REQUEST|unix.NLM_F_ACK|m.flags, unix.NFPROTO_INET, 0, m.attrs)...)
	}
	buf = append(buf, n.encode(unix.NFNL_MSG_BATCH_END, unix.NLM_F_REQUEST, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, nil)...)
	if err := unix.Sendto(fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return wrapPermission(err)
	}
	last := n.seq - 1 // the batch's end carries no acknowledgement
	for {
		replies, err := n.receive(fd)
		if err != nil {
			return err
		}
		for _, r := range replies {
			if r.Header.Seq < first || r.Header.Seq > last || r.Header.Type != unix.NLMSG_ERROR {
				continue // an earlier request's late answer
			}
			if errno := ackErrno(r.Data); errno != 0 {
				return wrapPermission(errno)
			}
			if r.Header.Seq == last {
				return nil
			}
		}
	}
}

// dump runs one dump request and returns its answers' attributes.
func (n *nftNetlink) dump(m nlMessage) ([][]byte, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	fd, err := n.socket()
	if err != nil {
		return nil, err
	}
	buf := n.encode(unix.NFNL_SUBSYS_NFTABLES<<8|m.typ, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, unix.NFPROTO_INET, 0, m.attrs)
	seq := n.seq
	if err := unix.Sendto(fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, wrapPermission(err)
	}
	var out [][]byte
	for {
		replies, err := n.receive(fd)
		if err != nil {
			return nil, err
		}
		for _, r := range replies {
			if r.Header.Seq != seq {
				continue
			}
			switch r.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if errno := ackErrno(r.Data); errno != 0 {
					return nil, errno
				}
			default:
				if len(r.Data) >= nfgenmsgLen {
					out = append(out, r.Data[nfgenmsgLen:])
				}
			}
		}
	}
}

// encode is one netlink message with nfnetlink's header (the batch markers
// name the subsystem in resID), numbered in sequence.
func (n *nftNetlink) encode(typ, flags uint16, family byte, resID uint16, payload []byte) []byte {
	n.seq++
	length := unix.NLMSG_HDRLEN + nfgenmsgLen + len(payload)
	b := make([]byte, unix.NLMSG_HDRLEN, length)
	binary.NativeEndian.PutUint32(b[0:], uint32(length))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	binary.NativeEndian.PutUint32(b[8:], n.seq)
	b = append(b, family, unix.NFNETLINK_V0, byte(resID>>8), byte(resID))
	return append(b, payload...)
}

func (n *nftNetlink) receive(fd int) ([]syscall.NetlinkMessage, error) {
	buf := make([]byte, 1<<16)
	for {
		nr, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read nf_tables' answer: %w", err)
		}
		return syscall.ParseNetlinkMessage(buf[:nr])
	}
}

// ackErrno is the error an acknowledgement carries (0: success).
func ackErrno(data []byte) unix.Errno {
	if len(data) < 4 {
		return 0
	}
	return unix.Errno(-int32(binary.NativeEndian.Uint32(data)))
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
