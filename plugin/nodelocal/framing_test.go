package nodelocal

import (
	"bytes"
	"encoding/binary"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// packQuery is a query for name with an EDNS record, as clients send it.
func packQuery(t *testing.T, name string) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.SetEdns0(1232, false)
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func framed(msg []byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...)
}

func TestRestoreFraming(t *testing.T) {
	first, second := packQuery(t, "web.default.svc.cluster.local."), packQuery(t, "u1.example.org.")
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name         string
		in, want     []byte
		wantRestored bool
	}{
		{"a framed query", framed(first), framed(first), false},
		{"framed queries in a row", cat(framed(first), framed(second)), cat(framed(first), framed(second)), false},
		{"a query whose length was read", first, framed(first), true},
		{"then another framed one", cat(first, framed(second)), cat(framed(first), framed(second)), true},
		{"a framed query not all arrived", framed(first)[:20], framed(first)[:20], false},
		{"a message not all arrived, its length read", first[:20], first[:20], false},
		{"not DNS", []byte("q"), []byte("q"), false},
		{"nothing", nil, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, restored := restoreFraming(tt.in)
			if !bytes.Equal(got, tt.want) || restored != tt.wantRestored {
				t.Errorf("restoreFraming = %x, %v; want %x, %v", got, restored, tt.want, tt.wantRestored)
			}
		})
	}
}

// FuzzMessageLength: any bytes give a length within them, or none.
func FuzzMessageLength(f *testing.F) {
	m := new(dns.Msg)
	m.SetQuestion("web.default.svc.cluster.local.", dns.TypeA)
	m.SetEdns0(1232, false)
	b, _ := m.Pack()
	f.Add(b)
	f.Add(b[:14])
	f.Fuzz(func(t *testing.T, b []byte) {
		if n, ok := messageLength(b); ok && (n < 12 || n > len(b)) {
			t.Fatalf("messageLength = %d of %d bytes", n, len(b))
		}
		restoreFraming(b)
	})
}

// TestCarriedOverQueryWhoseLengthWasRead: a query that reached the old server
// as it stopped, caught between reading its length and its message, is
// answered by the new server.
func TestCarriedOverQueryWhoseLengthWasRead(t *testing.T) {
	ap, l := listenTCP(t)
	client, served := connect(t, ap, l)
	query := packQuery(t, "web.default.svc.cluster.local.")
	if _, err := client.Write(framed(query)); err != nil {
		t.Fatal(err)
	}
	held, err := ownSockets{}.HoldConnections([]netip.AddrPort{ap})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(served, make([]byte, 2)); err != nil { // the old server reads the length, then stops
		t.Fatal(err)
	}
	served.Close()

	newServer := &dns.Server{Listener: l, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		w.WriteMsg(m)
	})}
	go newServer.ActivateAndServe()
	defer newServer.Shutdown()
	if n := held.CarryOver(); n != 1 {
		t.Fatalf("carried %d connections over, want 1", n)
	}
	conn := &dns.Conn{Conn: client}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	answer, err := conn.ReadMsg()
	if err != nil {
		t.Fatalf("no answer to the query whose length the old server read: %v", err)
	}
	if id := binary.BigEndian.Uint16(query); answer.Id != id {
		t.Fatalf("answer to query %d, want %d", answer.Id, id)
	}
}
