package nodelocal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Conntrack reads what the node's conntrack table holds about the flows to a
// Service address, which kube-proxy translated.
type Conntrack interface {
	// Endpoints lists the endpoints this node's flows to service reach:
	// kube-proxy's DNAT targets as conntrack recorded them. An address
	// nothing translates (not a Service) has none.
	Endpoints(service netip.AddrPort) ([]netip.AddrPort, error)
	// OpenClients lists the clients of the TCP connections to service that
	// an endpoint serves and that have not closed yet.
	OpenClients(service netip.AddrPort) ([]netip.AddrPort, error)
}

// kernelConntrack is Conntrack through ctnetlink.
type kernelConntrack struct{}

// ctnetlink's dump filter (kernel 5.8 and later): only entries whose original
// tuple matches the request's come back, so a node with a large conntrack
// table costs no more than its few DNS entries. Older kernels ignore it and
// dump everything, which translatedFlows filters itself.
const (
	ctaFilter          = 25     // CTA_FILTER
	ctaFilterOrigFlags = 1      // CTA_FILTER_ORIG_FLAGS
	ctaFilterIPDst     = 1 << 1 // CTA_FILTER_F_CTA_IP_DST
	ctaFilterProtoNum  = 1 << 3 // CTA_FILTER_F_CTA_PROTO_NUM
	ctaFilterProtoDst  = 1 << 5 // CTA_FILTER_F_CTA_PROTO_DST_PORT
)

// Bounds of what one read of conntrack keeps. The clients on the node choose
// how many flows to a Service there are (a flood of UDP queries from random
// ports makes one entry each): every check reads them all, streamed, but keeps
// only this many.
const (
	maxEndpoints   = 64   // distinct endpoints of one Service (kube-dns runs a handful)
	maxOpenClients = 1024 // open connections to one Service: 4 x what a takeover leaves to kube-dns
)

func (kernelConntrack) Endpoints(service netip.AddrPort) ([]netip.AddrPort, error) {
	var endpoints []netip.AddrPort
	for _, proto := range []uint8{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
		err := eachTranslatedFlow(dumpConntrack(service, proto), service, endpointsOf(&endpoints))
		if err != nil {
			return nil, err
		}
	}
	slices.SortFunc(endpoints, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return endpoints, nil
}

func (kernelConntrack) OpenClients(service netip.AddrPort) ([]netip.AddrPort, error) {
	var clients []netip.AddrPort
	if err := eachTranslatedFlow(dumpConntrack(service, unix.IPPROTO_TCP), service, openClientsOf(&clients)); err != nil {
		return nil, err
	}
	slices.SortFunc(clients, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return clients, nil
}

// endpointsOf adds each flow's distinct endpoint to endpoints, up to maxEndpoints.
func endpointsOf(endpoints *[]netip.AddrPort) func(flow) bool {
	return func(f flow) bool {
		if !slices.Contains(*endpoints, f.replySrc) {
			*endpoints = append(*endpoints, f.replySrc)
		}
		return len(*endpoints) < maxEndpoints
	}
}

// openClientsOf adds the client of each open TCP flow to clients, up to maxOpenClients.
func openClientsOf(clients *[]netip.AddrPort) func(flow) bool {
	return func(f flow) bool {
		if f.open() {
			*clients = append(*clients, f.origSrc)
		}
		return len(*clients) < maxOpenClients
	}
}

// eachTranslatedFlow calls keep with each flow to service that something
// (kube-proxy) translated, as dump streams them, until keep returns false;
// the rest of the dump is read and dropped.
func eachTranslatedFlow(dump func(func([]byte) bool) error, service netip.AddrPort, keep func(flow) bool) error {
	more := true
	err := dump(func(msg []byte) bool {
		f, ok := parseFlow(msg)
		if !ok || f.origDst != service || f.replySrc.Addr() == service.Addr() {
			return true // another flow (a kernel without the filter), or one not translated
		}
		more = more && keep(f)
		return more
	})
	if errors.Is(err, nl.ErrDumpInterrupted) {
		err = nil // the table changed during the dump: what was read is as good as the next check's
	}
	if err != nil {
		return fmt.Errorf("read the conntrack entries of %s: %w", service, wrapPermission(err))
	}
	return nil
}

// dumpConntrack is the dump of the entries whose original destination is dst
// over proto, each message given to a callback as it arrives.
func dumpConntrack(dst netip.AddrPort, proto uint8) func(func([]byte) bool) error {
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
	return func(each func([]byte) bool) error { return req.ExecuteIter(unix.NETLINK_NETFILTER, 0, each) }
}

// flow is what a conntrack entry says about a connection.
type flow struct {
	origSrc, origDst netip.AddrPort // the client, and the address it connected to
	replySrc         netip.AddrPort // who answers it: the endpoint, if translated
	tcpState         uint8          // conntrack's TCP state; 0 for other protocols
}

// conntrack's TCP states (enum tcp_conntrack) past the connection's use.
const (
	tcpConntrackTimeWait = 7
	tcpConntrackClose    = 8
)

// open: a TCP connection whose client may still send (neither in TIME_WAIT
// nor closed).
func (f flow) open() bool {
	return f.tcpState != 0 && f.tcpState != tcpConntrackTimeWait && f.tcpState != tcpConntrackClose
}

// parseFlow reads a conntrack entry: its original tuple, its reply's source
// and its TCP state.
func parseFlow(msg []byte) (f flow, ok bool) {
	if len(msg) < nl.SizeofNfgenmsg {
		return f, false
	}
	attrs, ok := parseAttrs(msg[nl.SizeofNfgenmsg:])
	if !ok {
		return f, false
	}
	var gotOrig, gotReply bool
	for _, a := range attrs {
		switch a.kind {
		case nl.CTA_TUPLE_ORIG:
			var gotSrc, gotDst bool
			f.origSrc, gotSrc = tupleEnd(a.value, true)
			f.origDst, gotDst = tupleEnd(a.value, false)
			gotOrig = gotSrc && gotDst
		case nl.CTA_TUPLE_REPLY:
			f.replySrc, gotReply = tupleEnd(a.value, true)
		case nl.CTA_PROTOINFO:
			f.tcpState = tcpState(a.value)
		}
	}
	return f, gotOrig && gotReply
}

// tcpState reads the TCP state from an entry's protocol information.
func tcpState(protoinfo []byte) uint8 {
	attrs, _ := parseAttrs(protoinfo)
	for _, a := range attrs {
		if a.kind != nl.CTA_PROTOINFO_TCP {
			continue
		}
		tcp, _ := parseAttrs(a.value)
		for _, n := range tcp {
			if n.kind == nl.CTA_PROTOINFO_TCP_STATE && len(n.value) == 1 {
				return n.value[0]
			}
		}
	}
	return 0
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
