package dnsload

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// testServer answers A queries for *.ok. with NOERROR and everything else
// with NXDOMAIN, on UDP and TCP at the same loopback port.
type testServer struct {
	addr      string
	names     sync.Map // query names seen
	queries   atomic.Int64
	closeConn bool // close each TCP connection after one answer
	silent    bool // never answer
	delay     time.Duration
}

func startServer(t *testing.T, s *testServer) {
	t.Helper()
	pc, l := listenPair(t)
	s.addr = pc.LocalAddr().String()
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		s.queries.Add(1)
		s.names.Store(r.Question[0].Name, true)
		if s.silent {
			return
		}
		time.Sleep(s.delay)
		m := new(dns.Msg)
		m.SetReply(r)
		if strings.HasSuffix(r.Question[0].Name, ".ok.") {
			rr, _ := dns.NewRR(r.Question[0].Name + " 30 IN A 198.18.9.9")
			m.Answer = append(m.Answer, rr)
		} else {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
		if s.closeConn && w.LocalAddr().Network() == "tcp" {
			w.Close()
		}
	})
	udp := &dns.Server{PacketConn: pc, Handler: handler}
	tcp := &dns.Server{Listener: l, Handler: handler}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	t.Cleanup(func() { udp.Shutdown(); tcp.Shutdown() })
}

// listenPair binds UDP and TCP on the same free loopback port; a port free for
// UDP may be taken for TCP, so it tries a few.
func listenPair(t *testing.T) (net.PacketConn, net.Listener) {
	t.Helper()
	for attempt := 0; attempt < 20; attempt++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l
		}
		pc.Close()
	}
	t.Fatal("no loopback port free for both UDP and TCP")
	return nil, nil
}

func TestRunCountsOutcomes(t *testing.T) {
	s := &testServer{}
	startServer(t, s)
	for _, tr := range []Transport{UDP, TCPPerQuery, TCPPersistent} {
		t.Run(string(tr), func(t *testing.T) {
			res, err := Run(context.Background(), Config{
				Target:    s.addr,
				Transport: tr,
				Queries:   []Query{{Name: "a.ok.", Type: dns.TypeA}, {Name: "missing.", Type: dns.TypeA}},
				Duration:  5 * time.Second,
				Count:     400,
				Workers:   4,
			})
			if err != nil {
				t.Fatal(err)
			}
			if res.Sent != 400 || res.Outcomes[Answered] != 200 || res.Outcomes[NXDomain] != 200 || res.Failed() != 0 {
				t.Fatalf("want 200 answered + 200 nxdomain, got %v", res)
			}
			if res.Latencies.P50 <= 0 || res.Latencies.P99 < res.Latencies.P50 || res.Latencies.Max < res.Latencies.P99 {
				t.Fatalf("implausible percentiles %+v", res.Latencies)
			}
		})
	}
}

func TestPersistentTCPRetriesOnceWhenServerCloses(t *testing.T) {
	s := &testServer{closeConn: true}
	startServer(t, s)
	res, err := Run(context.Background(), Config{
		Target: s.addr, Transport: TCPPersistent,
		Queries:  []Query{{Name: "a.ok.", Type: dns.TypeA}},
		Duration: 5 * time.Second, Count: 100, Workers: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Failed() != 0 || res.Outcomes[Answered] != 100 {
		t.Fatalf("every query should succeed on the retry, got %v", res)
	}
	// 100 answered queries, and every reused connection was found closed once:
	// the server saw exactly one query per answer (a closed connection carries none).
	if got := s.queries.Load(); got != 100 {
		t.Fatalf("server saw %d queries, want 100", got)
	}
}

func TestTimeoutsAreCountedPerSecond(t *testing.T) {
	s := &testServer{silent: true}
	startServer(t, s)
	res, err := Run(context.Background(), Config{
		Target: s.addr, Queries: []Query{{Name: "a.ok.", Type: dns.TypeA}},
		Duration: 3 * time.Second, Count: 4, Workers: 4, Timeout: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcomes[Timeout] != 4 || res.Failed() != 4 {
		t.Fatalf("want 4 timeouts, got %v", res)
	}
	if fs := res.FailedSeconds(); len(fs) != 1 || fs[0] != 0 {
		t.Fatalf("failures should be recorded in second 0, got %v", fs)
	}
	if len(res.Failures) != 4 {
		t.Fatalf("want the 4 failures listed, got %+v", res.Failures)
	}
	for _, f := range res.Failures {
		if f.Outcome != "timeout" || f.Connecting || f.Sent.Before(res.Started) || f.Sent.Sub(res.Started) > time.Second {
			t.Fatalf("want a timeout sent in the first second after %v, got %+v", res.Started, f)
		}
	}
}

func TestFailedConnectionsAreListedAsConnecting(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens: each connection is refused
	res, err := Run(context.Background(), Config{
		Target: addr, Transport: TCPPerQuery, Queries: []Query{{Name: "a.ok.", Type: dns.TypeA}},
		Duration: 3 * time.Second, Count: 3, Workers: 1, Timeout: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Failures) != 3 || !res.Failures[0].Connecting || res.Failures[0].Outcome != "conn_refused" {
		t.Fatalf("want 3 refused connections listed as connecting, got %+v", res.Failures)
	}
}

func TestStopOnFailure(t *testing.T) {
	s := &testServer{silent: true}
	startServer(t, s)
	res, err := Run(context.Background(), Config{
		Target: s.addr, Queries: []Query{{Name: "a.ok.", Type: dns.TypeA}},
		Duration: 5 * time.Second, Count: 100, Workers: 2, Timeout: 100 * time.Millisecond, StopOnFailure: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	// The two workers' first queries time out together; nothing is sent after.
	if res.Sent != 2 || res.Outcomes[Timeout] != 2 {
		t.Fatalf("want the 2 first queries sent and timed out, got %v", res)
	}
}

func TestRateIsPaced(t *testing.T) {
	s := &testServer{}
	startServer(t, s)
	res, err := Run(context.Background(), Config{
		Target: s.addr, Queries: []Query{{Name: "a.ok.", Type: dns.TypeA}},
		Rate: 200, Duration: 2 * time.Second, Workers: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	// 200/s for 2 s: 400, with slack for a loaded machine.
	if res.Sent < 300 || res.Sent > 420 {
		t.Fatalf("sent %d at 200/s for 2s, want about 400", res.Sent)
	}
}

func TestNameTokens(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setSize int
		want    int // distinct names among 50 queries
	}{
		{UniqueToken + ".ok.", 0, 50},
		{"n" + SetToken + ".ok.", 7, 7},
	} {
		s := &testServer{}
		startServer(t, s)
		_, err := Run(context.Background(), Config{
			Target: s.addr, Queries: []Query{{Name: tc.name, Type: dns.TypeA}},
			Duration: 5 * time.Second, Count: 50, Workers: 3, SetSize: tc.setSize,
		})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		s.names.Range(func(_, _ any) bool { n++; return true })
		if n != tc.want {
			t.Errorf("%s: server saw %d distinct names, want %d", tc.name, n, tc.want)
		}
	}
}

func TestConfigIsChecked(t *testing.T) {
	mix := []Query{{Name: "a.", Type: dns.TypeA}}
	tests := []struct {
		cfg     Config
		wantErr string
	}{
		{Config{Target: "8.8.8.8:53", Queries: mix, Duration: time.Second}, "refused"},
		{Config{Target: "10.0.0.10:53", Queries: mix, Duration: time.Second}, "refused"},
		{Config{Target: "example.org:53", Queries: mix, Duration: time.Second}, "not an IP"},
		{Config{Target: "198.18.0.10:53", Queries: mix}, "duration"},
		{Config{Target: "198.18.0.10:53", Queries: mix, Duration: time.Hour}, "duration"},
		{Config{Target: "169.254.20.10:53", Duration: time.Second}, "no queries"},
		{Config{Target: "[::1]:53", Queries: mix, Duration: time.Second, Transport: "quic"}, "transport"},
		{Config{Target: "127.0.0.1:53", Queries: mix, Duration: time.Second, Count: MaxQueries + 1}, "count"},
	}
	for _, tc := range tests {
		if _, err := Run(context.Background(), tc.cfg); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%+v: error %v, want %q", tc.cfg.Target, err, tc.wantErr)
		}
	}
}

func TestParseMix(t *testing.T) {
	qs, err := ParseMix("A:web.default.svc.cluster.local, aaaa:x.example.org")
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != 2 || qs[0].Type != dns.TypeA || qs[1].Name != "x.example.org." || qs[1].Type != dns.TypeAAAA {
		t.Fatalf("got %+v", qs)
	}
	for _, bad := range []string{"", "A", "BOGUS:x.org", "A:"} {
		if _, err := ParseMix(bad); err == nil {
			t.Errorf("ParseMix(%q) accepted", bad)
		}
	}
}

func TestHistogramPercentiles(t *testing.T) {
	// 90 queries at 100µs, 100 at 200µs and 10 at 5ms: of the 200, ranks 90
	// to 189 took 200µs and the last 10 5ms.
	h := Histogram{100: 90, 200: 100, 5000: 10}
	want := Percentiles{P50: 200 * time.Microsecond, P90: 200 * time.Microsecond, P99: 5 * time.Millisecond,
		P999: 5 * time.Millisecond, Max: 5 * time.Millisecond}
	if got := h.Percentiles(); got != want {
		t.Errorf("percentiles %+v, want %+v", got, want)
	}
	if got := (Histogram{}).Percentiles(); got != (Percentiles{}) {
		t.Errorf("empty histogram: %+v, want zeros", got)
	}
}

// stalledConn is a TCP connection whose reader stalls before each read, as a
// client starved of CPU does.
type stalledConn struct {
	*net.TCPConn
	stall time.Duration
}

func (c stalledConn) Read(p []byte) (int, error) {
	time.Sleep(c.stall)
	return c.TCPConn.Read(p)
}

// TestAnswerReadLateIsTheClients: an answer the kernel received before the
// timeout, which a stalled client reads only after it (even halfway through),
// is answered; one that arrived after the timeout is not.
func TestAnswerReadLateIsTheClients(t *testing.T) {
	const timeout = 200 * time.Millisecond
	for _, tc := range []struct {
		name         string
		delay, stall time.Duration
		want         Outcome
		late         bool
	}{
		{"answered at once, read after the timeout", 0, timeout * 3 / 4, Answered, true},
		{"answered at once, read in time", 0, 0, Answered, false},
		{"answered after the timeout", timeout * 3 / 2, 0, Timeout, false},
		{"never answered", time.Hour, 0, Timeout, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &testServer{delay: tc.delay, silent: tc.delay == time.Hour}
			startServer(t, s)
			conn, err := net.Dial("tcp", s.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			c := &client{cfg: &Config{Transport: TCPPersistent, Timeout: timeout}}
			sent := time.Now()
			// Two stalled reads (the length, then the message) end past the deadline.
			got := c.roundTrip(&dns.Conn{Conn: stalledConn{conn.(*net.TCPConn), tc.stall}}, new(dns.Msg).SetQuestion("a.ok.", dns.TypeA), sent.Add(timeout))
			if got != tc.want || c.arrivedAt.IsZero() == tc.late {
				t.Fatalf("outcome %v, read late %v; want %v, read late %v", got, !c.arrivedAt.IsZero(), tc.want, tc.late)
			}
			if tc.late && (c.arrivedAt.Before(sent.Add(-10*time.Millisecond)) || c.arrivedAt.After(sent.Add(timeout))) { // TCP_INFO counts in jiffies
				t.Fatalf("the answer sent at once arrived %v after the query, want within %v", c.arrivedAt.Sub(sent), timeout)
			}
		})
	}
}

// TestConnectionReachedLateIsTheClients: a client that stalls past the
// timeout after the kernel established its connection did not send the query
// in time; the server was not slow.
func TestConnectionReachedLateIsTheClients(t *testing.T) {
	s := &testServer{}
	startServer(t, s)
	const timeout = 100 * time.Millisecond
	res, err := Run(context.Background(), Config{
		Target: s.addr, Transport: TCPPerQuery, Queries: []Query{{Name: "a.ok.", Type: dns.TypeA}},
		Duration: 3 * time.Second, Count: 1, Workers: 1, Timeout: timeout,
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, network, address)
			time.Sleep(timeout * 3 / 2) // stalled once connected
			return conn, err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 0 || res.SentLate != 1 || res.Failed() != 0 {
		t.Fatalf("want the query counted as not sent in time, got %v", res)
	}
}

// TestQueryWrittenAfterItsTimeoutIsNotSent: a client that stalls past a
// query's timeout before writing it never sent it; that is marked, so the
// run counts it apart from the server's failures.
func TestQueryWrittenAfterItsTimeoutIsNotSent(t *testing.T) {
	s := &testServer{}
	startServer(t, s)
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := &client{cfg: &Config{}}
	outcome := c.roundTrip(&dns.Conn{Conn: conn}, new(dns.Msg).SetQuestion("a.ok.", dns.TypeA), time.Now().Add(-time.Millisecond))
	if outcome != Timeout || !c.sentLate {
		t.Fatalf("outcome %v, sent late %v; want a timeout marked as never sent", outcome, c.sentLate)
	}
	if s.queries.Load() != 0 {
		t.Fatalf("the server got %d queries", s.queries.Load())
	}
}
