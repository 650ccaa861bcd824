package nodelocal

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// ServiceEndpoints lists the endpoints that this node's connections to a
// Service address reach: kube-proxy's DNAT targets as conntrack recorded
// them. An address nothing translates (not a Service) has none.
type ServiceEndpoints func(service netip.AddrPort) ([]netip.AddrPort, error)

// ctnetlink's dump filter (kernel 5.8 and later): only entries whose original
// tuple matches the request's come back, so a node with a large conntrack
// table costs no more than its few DNS entries. Older kernels ignore it and
// dump everything, which conntrackEndpoints filters itself.
const (
	ctaFilter          = 25     // CTA_FILTER
	ctaFilterOrigFlags = 1      // CTA_FILTER_ORIG_FLAGS
	ctaFilterIPDst     = 1 << 1 // CTA_FILTER_F_CTA_IP_DST
	ctaFilterProtoNum  = 1 << 3 // CTA_FILTER_F_CTA_PROTO_NUM
	ctaFilterProtoDst  = 1 << 5 // CTA_FILTER_F_CTA_PROTO_DST_PORT
)

// conntrackEndpoints reads the endpoints of service from the conntrack
// entries of its UDP and TCP flows.
func conntrackEndpoints(service netip.AddrPort) ([]netip.AddrPort, error) {
	var endpoints []netip.AddrPort
	for _, proto := range []uint8{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
		msgs, err := dumpConntrack(service, proto)
		if err != nil {
			return nil, fmt.Errorf("read the conntrack entries of %s: %w", service, wrapPermission(err))
		}
		for _, msg := range msgs {
			orig, reply, ok := flowTuples(msg)
			if !ok || orig != service || reply.Addr() == service.Addr() {
				continue // another flow (a kernel without the filter), or one not translated
			}
			if !slices.Contains(endpoints, reply) {
				endpoints = append(endpoints, reply)
			}
		}
	}
	slices.SortFunc(endpoints, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return endpoints, nil
}

// dumpConntrack asks for the entries whose original destination is dst over proto.
func dumpConntrack(dst netip.AddrPort, proto uint8) ([][]byte, error) {
	family, ipAttr := uint8(unix.AF_INET), nl.CTA_IP_V4_DST
	if dst.Addr().Is6() {
		family, ipAttr = unix.AF_INET6, nl.CTA_IP_V6_DST
	}
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_CTNETLINK<<8|nl.IPCTNL_MSG_CT_GET, unix.NLM_F_DUMP)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: family, Version: nl.NFNETLINK_V0})
	tuple := nl.NewRtAttr(nl.CTA_TUPLE_ORIG|unix.NLA_F_NESTED, nil)
	tuple.AddRtAttr(nl.CTA_TUPLE_IP|unix.NLA_F_NESTED, nil).AddRtAttr(ipAttr, dst.Addr().AsSlice())
	l4 := tuple.AddRtAttr(nl.CTA_TUPLE_PROTO|unix.NLA_F_NESTED, nil)
	l4.AddRtAttr(nl.CTA_PROTO_NUM, []byte{proto})
	l4.AddRtAttr(nl.CTA_PROTO_DST_PORT, nl.BEUint16Attr(dst.Port()))
	req.AddData(tuple)
	filter := nl.NewRtAttr(ctaFilter|unix.NLA_F_NESTED, nil)
	filter.AddRtAttr(ctaFilterOrigFlags, nl.Uint32Attr(ctaFilterIPDst|ctaFilterProtoNum|ctaFilterProtoDst))
	req.AddData(filter)
	return req.Execute(unix.NETLINK_NETFILTER, 0)
}

// flowTuples reads an entry's original destination and reply source: the
// address a client connected to, and the one that answered it.
func flowTuples(msg []byte) (origDst, replySrc netip.AddrPort, ok bool) {
	if len(msg) < nl.SizeofNfgenmsg {
		return origDst, replySrc, false
	}
	attrs, ok := parseAttrs(msg[nl.SizeofNfgenmsg:])
	if !ok {
		return origDst, replySrc, false
	}
	var gotOrig, gotReply bool
	for _, a := range attrs {
		switch a.kind {
		case nl.CTA_TUPLE_ORIG:
			origDst, gotOrig = tupleEnd(a.value, false)
		case nl.CTA_TUPLE_REPLY:
			replySrc, gotReply = tupleEnd(a.value, true)
		}
	}
	return origDst, replySrc, gotOrig && gotReply
}

// tupleEnd reads one end of a conntrack tuple: its source or its destination.
func tupleEnd(b []byte, source bool) (netip.AddrPort, bool) {
	ipAttrs := map[bool][2]uint16{true: {nl.CTA_IP_V4_SRC, nl.CTA_IP_V6_SRC}, false: {nl.CTA_IP_V4_DST, nl.CTA_IP_V6_DST}}[source]
	portAttr := uint16(nl.CTA_PROTO_DST_PORT)
	if source {
		portAttr = nl.CTA_PROTO_SRC_PORT
	}
	attrs, ok := parseAttrs(b)
	if !ok {
		return netip.AddrPort{}, false
	}
	var ip netip.Addr
	var port uint16
	var gotPort bool
	for _, a := range attrs {
		nested, ok := parseAttrs(a.value)
		if !ok {
			continue
		}
		for _, n := range nested {
			switch {
			case a.kind == nl.CTA_TUPLE_IP && (n.kind == ipAttrs[0] || n.kind == ipAttrs[1]):
				ip, _ = netip.AddrFromSlice(n.value)
			case a.kind == nl.CTA_TUPLE_PROTO && n.kind == portAttr && len(n.value) == 2:
				port, gotPort = binary.BigEndian.Uint16(n.value), true
			}
		}
	}
	if !ip.IsValid() || !gotPort {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ip, port), true
}

// attr is one netlink attribute: its type without the nested and byte-order
// flags, and its payload.
type attr struct {
	kind  uint16
	value []byte
}

// parseAttrs splits b into netlink attributes; ok is false if one's length
// runs past b (netlink's own parser panics there).
func parseAttrs(b []byte) (attrs []attr, ok bool) {
	for len(b) >= unix.SizeofNlAttr {
		n := int(binary.NativeEndian.Uint16(b))
		if n < unix.SizeofNlAttr || n > len(b) {
			return nil, false
		}
		kind := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		attrs = append(attrs, attr{kind: kind, value: b[unix.SizeofNlAttr:n]})
		b = b[min(nlaAlign(n), len(b)):]
	}
	return attrs, len(b) == 0
}

func nlaAlign(n int) int { return (n + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1) }
