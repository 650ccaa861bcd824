package nodelocal

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Our nf_tables tables as data: what failopen.go wants, what nftables.go
// writes. A rule is built from parts, each its text as `nft list` prints it
// and the expressions that do it, so the text names the rule exactly.

type nftTable struct {
	name   string // in the inet family
	owned  bool   // deleted by the kernel when this process exits (nftOwner)
	chains []nftChain
}

type nftChain struct {
	name     string
	kind     string // filter, route or nat
	hook     uint32 // unix.NF_INET_*
	priority int32
	rules    []nftRule
}

type nftRule struct {
	text  string
	exprs []nftExpr
}

type nftExpr struct {
	name string
	data []byte // NFTA_EXPR_DATA's attributes
}

// nftPart is a piece of a rule: a match or a statement.
type nftPart struct {
	text  string
	exprs []nftExpr
}

func nftRuleOf(parts ...nftPart) nftRule {
	var r nftRule
	var texts []string
	for _, p := range parts {
		texts = append(texts, p.text)
		r.exprs = append(r.exprs, p.exprs...)
	}
	r.text = strings.Join(texts, " ")
	return r
}

// ipField is where an address is in the network header, with nft's name
// for it.
func ipField(ip netip.Addr, dst bool) (name string, offset uint32) {
	switch {
	case ip.Is4() && dst:
		return "ip daddr", 16
	case ip.Is4():
		return "ip saddr", 12
	case dst:
		return "ip6 daddr", 24
	default:
		return "ip6 saddr", 8
	}
}

func nfproto(ip netip.Addr) byte {
	if ip.Is4() {
		return unix.NFPROTO_IPV4
	}
	return unix.NFPROTO_IPV6
}

// matchAddr: the packet's destination (or source) is ip.
func matchAddr(ip netip.Addr, dst bool) nftPart {
	name, offset := ipField(ip, dst)
	return nftPart{name + " " + ip.String(), []nftExpr{
		metaLoad(unix.NFT_META_NFPROTO), compare(unix.NFT_CMP_EQ, []byte{nfproto(ip)}),
		payloadLoad(unix.NFT_PAYLOAD_NETWORK_HEADER, offset, uint32(ip.BitLen()/8)), compare(unix.NFT_CMP_EQ, ip.AsSlice()),
	}}
}

// matchPort: the protocol is proto (tcp or udp) and its destination (or
// source) port is port.
func matchPort(proto string, dst bool, port uint16) nftPart {
	number, field, offset := byte(unix.IPPROTO_UDP), "sport", uint32(0)
	if proto == "tcp" {
		number = unix.IPPROTO_TCP
	}
	if dst {
		field, offset = "dport", 2
	}
	return nftPart{proto + " " + field + " " + strconv.Itoa(int(port)), []nftExpr{
		metaLoad(unix.NFT_META_L4PROTO), compare(unix.NFT_CMP_EQ, []byte{number}),
		payloadLoad(unix.NFT_PAYLOAD_TRANSPORT_HEADER, offset, 2), compare(unix.NFT_CMP_EQ, binary.BigEndian.AppendUint16(nil, port)),
	}}
}

// matchTracked: conntrack tracks the packet, so no interception took it
// (the interception's NOTRACK leaves it untracked).
func matchTracked() nftPart {
	const mask = 0x2 | 0x8 // NF_CT_STATE_BIT(ESTABLISHED) | NF_CT_STATE_BIT(NEW)
	return nftPart{"ct state established,new", []nftExpr{
		ctLoad(unix.NFT_CT_STATE, -1),
		{"bitwise", nlAttrs(u32Attr(unix.NFTA_BITWISE_SREG, unix.NFT_REG_1), u32Attr(unix.NFTA_BITWISE_DREG, unix.NFT_REG_1), u32Attr(unix.NFTA_BITWISE_LEN, 4),
			dataAttr(unix.NFTA_BITWISE_MASK, binary.NativeEndian.AppendUint32(nil, mask)), dataAttr(unix.NFTA_BITWISE_XOR, make([]byte, 4)))},
		compare(unix.NFT_CMP_NEQ, make([]byte, 4)),
	}}
}

// matchSYN: a TCP segment that opens a connection (iptables' --syn).
func matchSYN() nftPart {
	const fin, syn, rst, ack = 0x01, 0x02, 0x04, 0x10
	return nftPart{"tcp flags syn / fin,syn,rst,ack", []nftExpr{
		payloadLoad(unix.NFT_PAYLOAD_TRANSPORT_HEADER, 13, 1),
		{"bitwise", nlAttrs(u32Attr(unix.NFTA_BITWISE_SREG, unix.NFT_REG_1), u32Attr(unix.NFTA_BITWISE_DREG, unix.NFT_REG_1), u32Attr(unix.NFTA_BITWISE_LEN, 1),
			dataAttr(unix.NFTA_BITWISE_MASK, []byte{fin | syn | rst | ack}), dataAttr(unix.NFTA_BITWISE_XOR, []byte{0}))},
		compare(unix.NFT_CMP_EQ, []byte{syn}),
	}}
}

// matchReplyTo: the packet answers a connection first sent to ip.
func matchReplyTo(ip netip.Addr) nftPart {
	key, family := uint32(unix.NFT_CT_DST_IP), "ip"
	if ip.Is6() {
		key, family = unix.NFT_CT_DST_IP6, "ip6"
	}
	return nftPart{"ct direction reply ct original " + family + " daddr " + ip.String(), []nftExpr{
		ctLoad(unix.NFT_CT_DIRECTION, -1), compare(unix.NFT_CMP_EQ, []byte{ctDirReply}),
		ctLoad(key, ctDirOriginal), compare(unix.NFT_CMP_EQ, ip.AsSlice()),
	}}
}

// setAddr rewrites the destination (or source) to ip, and the checksums with it.
func setAddr(ip netip.Addr, dst bool) nftPart {
	name, offset := ipField(ip, dst)
	write := nlAttrs(u32Attr(unix.NFTA_PAYLOAD_SREG, unix.NFT_REG_1), u32Attr(unix.NFTA_PAYLOAD_BASE, unix.NFT_PAYLOAD_NETWORK_HEADER),
		u32Attr(unix.NFTA_PAYLOAD_OFFSET, offset), u32Attr(unix.NFTA_PAYLOAD_LEN, uint32(ip.BitLen()/8)))
	if ip.Is4() { // IPv6 has no header checksum
		write = append(write, nlAttrs(u32Attr(unix.NFTA_PAYLOAD_CSUM_TYPE, unix.NFT_PAYLOAD_CSUM_INET), u32Attr(unix.NFTA_PAYLOAD_CSUM_OFFSET, 10))...)
	}
	write = append(write, u32Attr(unix.NFTA_PAYLOAD_CSUM_FLAGS, unix.NFT_PAYLOAD_L4CSUM_PSEUDOHDR)...)
	return nftPart{name + " set " + ip.String(), []nftExpr{
		{"immediate", nlAttrs(u32Attr(unix.NFTA_IMMEDIATE_DREG, unix.NFT_REG_1), dataAttr(unix.NFTA_IMMEDIATE_DATA, ip.AsSlice()))},
		{"payload", write},
	}}
}

// nfAccept is netfilter's verdict that lets a packet go on (NF_ACCEPT).
const nfAccept = 1

// Conntrack's directions (enum ip_conntrack_dir).
const (
	ctDirOriginal = 0
	ctDirReply    = 1
)

var (
	notrack    = nftPart{"notrack", []nftExpr{{name: "notrack"}}}
	masquerade = nftPart{"masquerade", []nftExpr{{name: "masq"}}}
	// accept ends our chain: the packet goes on to conntrack and kube-proxy.
	accept = nftPart{"accept", []nftExpr{{"immediate", nlAttrs(u32Attr(unix.NFTA_IMMEDIATE_DREG, unix.NFT_REG_VERDICT),
		nestedAttr(unix.NFTA_IMMEDIATE_DATA, nestedAttr(unix.NFTA_DATA_VERDICT, u32Attr(unix.NFTA_VERDICT_CODE, nfAccept))))}}}
)

func metaLoad(key uint32) nftExpr {
	return nftExpr{"meta", nlAttrs(u32Attr(unix.NFTA_META_DREG, unix.NFT_REG_1), u32Attr(unix.NFTA_META_KEY, key))}
}

// ctLoad loads a conntrack key, of one direction if dir >= 0.
func ctLoad(key uint32, dir int) nftExpr {
	data := nlAttrs(u32Attr(unix.NFTA_CT_DREG, unix.NFT_REG_1), u32Attr(unix.NFTA_CT_KEY, key))
	if dir >= 0 {
		data = append(data, nlAttr(unix.NFTA_CT_DIRECTION, []byte{byte(dir)})...)
	}
	return nftExpr{"ct", data}
}

func payloadLoad(base, offset, length uint32) nftExpr {
	return nftExpr{"payload", nlAttrs(u32Attr(unix.NFTA_PAYLOAD_DREG, unix.NFT_REG_1), u32Attr(unix.NFTA_PAYLOAD_BASE, base),
		u32Attr(unix.NFTA_PAYLOAD_OFFSET, offset), u32Attr(unix.NFTA_PAYLOAD_LEN, length))}
}

func compare(op uint32, value []byte) nftExpr {
	return nftExpr{"cmp", nlAttrs(u32Attr(unix.NFTA_CMP_SREG, unix.NFT_REG_1), u32Attr(unix.NFTA_CMP_OP, op), dataAttr(unix.NFTA_CMP_DATA, value))}
}

// Netlink attributes: length, type, value, padded to 4 bytes.

func nlAttr(typ uint16, value []byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(value)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, value...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func nlAttrs(as ...[]byte) []byte {
	var b []byte
	for _, a := range as {
		b = append(b, a...)
	}
	return b
}

func strAttr(typ uint16, s string) []byte        { return nlAttr(typ, append([]byte(s), 0)) }
func u32Attr(typ uint16, v uint32) []byte        { return nlAttr(typ, binary.BigEndian.AppendUint32(nil, v)) }
func nestedAttr(typ uint16, inner []byte) []byte { return nlAttr(typ|unix.NLA_F_NESTED, inner) }
func dataAttr(typ uint16, value []byte) []byte {
	return nestedAttr(typ, nlAttr(unix.NFTA_DATA_VALUE, value))
}
