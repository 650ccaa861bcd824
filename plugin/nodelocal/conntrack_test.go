package nodelocal

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// TestServiceEndpointsFromConntrack reads real conntrack entries, in a child
// process with a network namespace of its own.
func TestServiceEndpointsFromConntrack(t *testing.T) {
	inNewNetns(t, "TestHelperConntrack", "NODELOCAL_HELPER_CONNTRACK")
}

// TestHelperConntrack is the child: a Service address DNATed by a rule as
// kube-proxy's, flows to it over UDP and TCP, and a flow nothing translates.
func TestHelperConntrack(t *testing.T) {
	if os.Getenv("NODELOCAL_HELPER_CONNTRACK") == "" {
		t.Skip("helper process only")
	}
	service, endpoint := netip.MustParseAddrPort("198.18.7.7:53"), netip.MustParseAddrPort("169.254.7.2:5353")
	plain := netip.MustParseAddrPort("169.254.7.2:53")
	for _, args := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "addr", "add", "169.254.7.2/32", "dev", "lo"},
		{"ip", "route", "add", "198.18.7.0/24", "dev", "lo"},
		{"iptables", "-t", "nat", "-A", "OUTPUT", "-d", "198.18.7.7", "-p", "udp", "--dport", "53", "-j", "DNAT", "--to-destination", endpoint.String()},
		{"iptables", "-t", "nat", "-A", "OUTPUT", "-d", "198.18.7.7", "-p", "tcp", "--dport", "53", "-j", "DNAT", "--to-destination", endpoint.String()},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	ln, err := net.Listen("tcp", endpoint.String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conn, err := net.Dial("tcp", service.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, dst := range []netip.AddrPort{service, plain} {
		udp, err := net.Dial("udp", dst.String())
		if err != nil {
			t.Fatal(err)
		}
		_, _ = udp.Write([]byte("q"))
		udp.Close()
	}

	var ct kernelConntrack
	got, err := ct.Endpoints(service)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []netip.AddrPort{endpoint}) {
		t.Fatalf("endpoints of %s: %v, want [%s]", service, got, endpoint)
	}
	if got, err := ct.Endpoints(plain); err != nil || len(got) != 0 {
		t.Fatalf("endpoints of %s, which nothing translates: %v, %v; want none", plain, got, err)
	}
	client := netip.MustParseAddrPort(conn.LocalAddr().String())
	if got, err := ct.OpenClients(service); err != nil || !slices.Equal(got, []netip.AddrPort{client}) {
		t.Fatalf("clients of %s: %v (%v), want [%s]", service, got, err, client)
	}
	// Once closed by both ends, the connection is in TIME_WAIT: no longer open.
	accepted, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	accepted.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, err := ct.OpenClients(service)
		if err == nil && len(got) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("clients of %s after the connection closed: %v (%v), want none", service, got, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The kernel filters the dump: only the service's UDP flow comes back.
	var msgs int
	err = dumpConntrack(service, unix.IPPROTO_UDP)(func([]byte) bool { msgs++; return true })
	if err != nil || msgs != 1 {
		t.Fatalf("filtered dump: %d entries (%v), want 1", msgs, err)
	}
}

// flowMessage is a conntrack entry as the kernel sends it, with the fields
// parseFlow reads.
func flowMessage(origSrc, origDst, replySrc, replyDst netip.AddrPort, tcpState uint8) []byte {
	tuple := func(kind int, src, dst netip.AddrPort) []byte {
		a := nl.NewRtAttr(kind|unix.NLA_F_NESTED, nil)
		ip := a.AddRtAttr(nl.CTA_TUPLE_IP|unix.NLA_F_NESTED, nil)
		ip.AddRtAttr(nl.CTA_IP_V4_SRC, src.Addr().AsSlice())
		ip.AddRtAttr(nl.CTA_IP_V4_DST, dst.Addr().AsSlice())
		l4 := a.AddRtAttr(nl.CTA_TUPLE_PROTO|unix.NLA_F_NESTED, nil)
		l4.AddRtAttr(nl.CTA_PROTO_NUM, []byte{unix.IPPROTO_TCP})
		l4.AddRtAttr(nl.CTA_PROTO_SRC_PORT, nl.BEUint16Attr(src.Port()))
		l4.AddRtAttr(nl.CTA_PROTO_DST_PORT, nl.BEUint16Attr(dst.Port()))
		return a.Serialize()
	}
	msg := []byte{unix.AF_INET, nl.NFNETLINK_V0, 0, 0}
	msg = append(msg, tuple(nl.CTA_TUPLE_ORIG, origSrc, origDst)...)
	msg = append(msg, tuple(nl.CTA_TUPLE_REPLY, replySrc, replyDst)...)
	protoinfo := nl.NewRtAttr(nl.CTA_PROTOINFO|unix.NLA_F_NESTED, nil)
	protoinfo.AddRtAttr(nl.CTA_PROTOINFO_TCP|unix.NLA_F_NESTED, nil).AddRtAttr(nl.CTA_PROTOINFO_TCP_STATE, []byte{tcpState})
	return append(msg, protoinfo.Serialize()...)
}

func TestParseFlow(t *testing.T) {
	client, service := netip.MustParseAddrPort("198.19.255.1:40000"), netip.MustParseAddrPort("198.18.0.20:53")
	endpoint := netip.MustParseAddrPort("198.19.0.5:53")
	for _, tc := range []struct {
		state uint8
		open  bool
	}{{1, true}, {3, true}, {4, true}, {tcpConntrackTimeWait, false}, {tcpConntrackClose, false}} {
		f, ok := parseFlow(flowMessage(client, service, endpoint, client, tc.state))
		want := flow{origSrc: client, origDst: service, replySrc: endpoint, tcpState: tc.state}
		if !ok || f != want || f.open() != tc.open {
			t.Errorf("state %d: parseFlow: %+v %v (open %v), want %+v true (open %v)", tc.state, f, ok, f.open(), want, tc.open)
		}
	}
	if _, ok := parseFlow([]byte{unix.AF_INET, 0, 0, 0}); ok {
		t.Fatal("an entry without tuples parsed")
	}
}

func FuzzParseFlow(f *testing.F) {
	f.Add(flowMessage(netip.MustParseAddrPort("198.19.255.1:40000"), netip.MustParseAddrPort("198.18.0.20:53"),
		netip.MustParseAddrPort("198.19.0.5:53"), netip.MustParseAddrPort("198.19.255.1:40000"), 3))
	f.Fuzz(func(t *testing.T, msg []byte) {
		f, ok := parseFlow(msg)
		if ok && (!f.origSrc.IsValid() || !f.origDst.IsValid() || !f.replySrc.IsValid()) {
			t.Fatalf("ok with an invalid tuple end: %+v", f)
		}
	})
}

// TestConntrackReadsAreBounded: a dump of 100,000 flows to a Service (a
// flood's) is read through, and what is kept stays within the bounds.
func TestConntrackReadsAreBounded(t *testing.T) {
	service := netip.MustParseAddrPort("198.18.0.20:53")
	const flows = 100_000
	flood := func(each func([]byte) bool) error {
		for i := range flows {
			client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), uint16(1024+i%60000))
			endpoint := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, 100, byte(i % 200)}), 53)
			if !each(flowMessage(client, service, endpoint, client, 3)) {
				return nil // ExecuteIter drops the rest
			}
		}
		return nil
	}
	var endpoints, clients []netip.AddrPort
	if err := eachTranslatedFlow(flood, service, endpointsOf(&endpoints)); err != nil {
		t.Fatal(err)
	}
	if len(endpoints) != maxEndpoints {
		t.Errorf("%d endpoints kept of 200, want the bound %d", len(endpoints), maxEndpoints)
	}
	if err := eachTranslatedFlow(flood, service, openClientsOf(&clients)); err != nil {
		t.Fatal(err)
	}
	if len(clients) != maxOpenClients {
		t.Errorf("%d open clients kept of %d, want the bound %d", len(clients), flows, maxOpenClients)
	}
}
