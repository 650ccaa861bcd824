// Package dnsload is a bounded DNS load generator for tests, benchmarks and
// the dnsload command: a fixed query mix at a fixed rate (or as fast as the
// server answers), with outcome counts, latency percentiles and a per-second
// record of failures.
package dnsload

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// Transport says how queries travel.
type Transport string

const (
	UDP Transport = "udp"
	// TCPPerQuery opens one connection per query, as glibc and Go stub resolvers do.
	TCPPerQuery Transport = "tcp"
	// TCPPersistent reuses one connection per worker; when the server closes it
	// without answering, the query is resent once on a new connection (RFC 7766).
	TCPPersistent Transport = "tcp-persistent"
)

// Limits that keep every run bounded.
const (
	MaxDuration = 10 * time.Minute
	MaxQueries  = 20_000_000
	MaxWorkers  = 4096
)

// UniqueToken in a query name is replaced by a number unique within the run,
// which makes every such query a cache miss.
const UniqueToken = "{unique}"

// SetToken in a query name is replaced by the next number of 0 to
// SetSize-1, round-robin: a working set of names that a cache keeps, and
// that a cache restarted empty asks again.
const SetToken = "{set}"

// Query is one entry of the query mix.
type Query struct {
	Name string
	Type uint16
}

// Config describes one run. Zero values get defaults from normalize.
type Config struct {
	Target    string        // host:port; loopback, 169.254.0.0/16 or 198.18.0.0/15 only
	Transport Transport     // default UDP
	Queries   []Query       // the mix, sent round-robin
	Rate      int           // queries per second in total; 0 means as fast as answered
	Duration  time.Duration // how long to send
	Count     int           // stop after this many queries (0: only Duration bounds the run)
	Timeout   time.Duration // per query; default 1s
	Workers   int           // concurrent clients; default 20
	SetSize   int           // how many names SetToken makes; default 250
	// StopOnFailure ends the run at the first failed query (the ones under
	// way still finish).
	StopOnFailure bool
	// Dial opens connections; the harness supplies one that opens sockets in a
	// network namespace. Default: net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

var allowedTargets = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("2001:2::/48"), // the IPv6 benchmarking range (RFC 5180)
}

// CheckTarget refuses any address outside the test ranges.
func CheckTarget(target string) error {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return fmt.Errorf("target %q: %w", target, err)
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("target %q: not an IP address", target)
	}
	for _, p := range allowedTargets {
		if p.Contains(addr.Unmap()) {
			return nil
		}
	}
	return fmt.Errorf("target %q refused: only loopback, 169.254.0.0/16, 198.18.0.0/15 and 2001:2::/48 may be loaded", target)
}

func (c *Config) normalize() error {
	if err := CheckTarget(c.Target); err != nil {
		return err
	}
	if c.Transport == "" {
		c.Transport = UDP
	}
	switch c.Transport {
	case UDP, TCPPerQuery, TCPPersistent:
	default:
		return fmt.Errorf("transport %q: want udp, tcp or tcp-persistent", c.Transport)
	}
	if len(c.Queries) == 0 {
		return errors.New("no queries in the mix")
	}
	if c.Duration <= 0 || c.Duration > MaxDuration {
		return fmt.Errorf("duration %v: want more than 0 and at most %v", c.Duration, MaxDuration)
	}
	if c.Count < 0 || c.Count > MaxQueries {
		return fmt.Errorf("count %d: want 0 to %d", c.Count, MaxQueries)
	}
	if c.Count == 0 {
		c.Count = MaxQueries
	}
	if c.Rate < 0 {
		return fmt.Errorf("rate %d: must not be negative", c.Rate)
	}
	if c.Timeout <= 0 {
		c.Timeout = time.Second
	}
	if c.Workers <= 0 {
		c.Workers = 20
	}
	if c.SetSize <= 0 {
		c.SetSize = 250
	}
	if c.Workers > MaxWorkers {
		return fmt.Errorf("workers %d: at most %d", c.Workers, MaxWorkers)
	}
	if c.Dial == nil {
		var d net.Dialer
		c.Dial = d.DialContext
	}
	return nil
}

// ParseMix reads a mix such as "A:web.default.svc.cluster.local,AAAA:x.example.org".
func ParseMix(s string) ([]Query, error) {
	var qs []Query
	for _, item := range strings.Split(s, ",") {
		typ, name, ok := strings.Cut(strings.TrimSpace(item), ":")
		qtype, known := dns.StringToType[strings.ToUpper(typ)]
		if !ok || !known || name == "" {
			return nil, fmt.Errorf("query %q: want TYPE:name, such as A:example.org", item)
		}
		qs = append(qs, Query{Name: dns.Fqdn(name), Type: qtype})
	}
	return qs, nil
}

// Run sends the load and returns what happened. It stops at Duration, at
// Count queries, or when ctx is done, whichever comes first.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()

	start := time.Now()
	rec := newRecorder(start, cfg.Duration)
	var sent atomic.Int64
	var unique, inSet atomic.Int64
	tokens := pace(ctx, cfg.Rate)

	var wg sync.WaitGroup
	for w := 0; w < cfg.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := &client{cfg: &cfg}
			defer cl.close()
			for {
				if tokens != nil {
					select {
					case <-tokens:
					case <-ctx.Done():
						return
					}
				}
				seq := sent.Add(1)
				if ctx.Err() != nil || seq > int64(cfg.Count) {
					return
				}
				q := cfg.Queries[(seq-1)%int64(len(cfg.Queries))]
				name := q.Name
				if strings.Contains(name, UniqueToken) {
					name = strings.ReplaceAll(name, UniqueToken, "u"+strconv.FormatInt(unique.Add(1), 10))
				}
				if strings.Contains(name, SetToken) {
					name = strings.ReplaceAll(name, SetToken, strconv.FormatInt((inSet.Add(1)-1)%int64(cfg.SetSize), 10))
				}
				sentAt := time.Now()
				// The end of the run stops new queries, not one under way: it
				// has its own timeout.
				outcome := cl.exchange(context.WithoutCancel(ctx), name, q.Type)
				latency := time.Since(sentAt)
				switch {
				case cl.sentLate:
					rec.countSentLate() // the server never had the query: not a query it lost
					continue
				case !cl.arrivedAt.IsZero():
					latency = max(cl.arrivedAt.Sub(sentAt), 0) // the kernel's clock ticks in milliseconds
					rec.countReadLate()
				}
				rec.record(sentAt, latency, outcome, Failure{Name: name, Local: cl.local, Connecting: cl.connecting})
				if cfg.StopOnFailure && outcome.Failed() {
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	return rec.result(time.Since(start)), nil
}

// pace returns a channel that yields Rate tokens per second in 1 ms batches,
// or nil for an unpaced run.
func pace(ctx context.Context, rate int) <-chan struct{} {
	if rate == 0 {
		return nil
	}
	tokens := make(chan struct{}, rate/10+1)
	go func() {
		const tick = time.Millisecond
		t := time.NewTicker(tick)
		defer t.Stop()
		start := time.Now()
		issued := 0
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				due := int(now.Sub(start).Seconds() * float64(rate))
				for ; issued < due; issued++ {
					select {
					case tokens <- struct{}{}:
					default: // clients are behind: the token is dropped, not queued forever
					}
				}
			}
		}
	}()
	return tokens
}

// client is one worker's connection state.
type client struct {
	cfg  *Config
	conn *dns.Conn // kept between queries for UDP and TCPPersistent
	// arrivedAt is when the last answer reached the socket, if it was read
	// only after the timeout (TCP).
	arrivedAt time.Time
	// sentLate: the last query could not be written before its timeout.
	sentLate bool
	// connecting: the last query failed before its TCP connection was up.
	connecting bool
	// local is the client's address of the last query's connection or socket.
	local string
}

func (c *client) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// dial opens a socket for a query due by deadline. A client starved of CPU
// can get to a TCP connection the kernel established in time only after the
// deadline: it waits a while longer, and the handshake's time decides
// whether the server was too slow (a timeout) or the client (then the query
// is written too late, and not sent).
func (c *client) dial(ctx context.Context, deadline time.Time) (*dns.Conn, error) {
	network, wait := "udp", deadline
	if c.cfg.Transport != UDP {
		network, wait = "tcp", deadline.Add(c.cfg.Timeout)
	}
	dctx, cancel := context.WithDeadline(ctx, wait)
	defer cancel()
	conn, err := c.cfg.Dial(dctx, network, c.cfg.Target)
	if err != nil {
		c.connecting = network == "tcp"
		return nil, err
	}
	if network == "tcp" && time.Now().After(deadline) {
		// Last_ack_recv: since the SYN-ACK, on a connection that carried nothing yet.
		if info, ok := tcpInfo(conn); !ok || ago(info.Last_ack_recv).After(deadline) {
			conn.Close()
			c.connecting = true
			return nil, os.ErrDeadlineExceeded
		}
	}
	return &dns.Conn{Conn: conn, UDPSize: dns.DefaultMsgSize}, nil
}

func (c *client) exchange(ctx context.Context, name string, qtype uint16) Outcome {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	deadline := time.Now().Add(c.cfg.Timeout)
	c.arrivedAt, c.sentLate, c.connecting, c.local = time.Time{}, false, false, ""

	switch c.cfg.Transport {
	case TCPPerQuery:
		conn, err := c.dial(ctx, deadline)
		if err != nil {
			return classifyErr(err)
		}
		defer conn.Close()
		return c.roundTrip(conn, m, deadline)
	case TCPPersistent:
		reused := c.conn != nil
		outcome := c.keptRoundTrip(ctx, m, deadline)
		if outcome == ClosedByServer && reused {
			// RFC 7766 §6.2.1: the server may close an idle connection; retry once on a new one.
			outcome = c.keptRoundTrip(ctx, m, deadline)
		}
		if outcome == ClosedByServer {
			outcome = NetError
		}
		return outcome
	default:
		return c.keptRoundTrip(ctx, m, deadline)
	}
}

// keptRoundTrip uses the worker's kept connection, opening one when needed.
// After a failure it is dropped: a fresh socket (a new source port, as stub
// resolvers do), and late replies never pair with the next query.
func (c *client) keptRoundTrip(ctx context.Context, m *dns.Msg, deadline time.Time) Outcome {
	if c.conn == nil {
		conn, err := c.dial(ctx, deadline)
		if err != nil {
			return classifyErr(err)
		}
		c.conn = conn
	}
	outcome := c.roundTrip(c.conn, m, deadline)
	if outcome != Answered && outcome != NXDomain {
		c.close()
	}
	return outcome
}

func (c *client) roundTrip(conn *dns.Conn, m *dns.Msg, deadline time.Time) Outcome {
	c.local = conn.LocalAddr().String()
	conn.SetDeadline(deadline)
	if err := conn.WriteMsg(m); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			c.sentLate = true // the query never left: this client stalled past its own timeout
		}
		return classifyErr(err)
	}
	tcp := c.cfg.Transport != UDP
	if tcp {
		// A client starved of CPU (on a busy 2-core node, for a second at
		// times) can get to an answer that arrived in time only after the
		// deadline, even halfway through reading it: it reads on for a
		// while, and the kernel's arrival time decides.
		conn.SetReadDeadline(deadline.Add(c.cfg.Timeout))
	}
	for {
		r, err := conn.ReadMsg()
		if err != nil {
			return classifyErr(err)
		}
		if r.Id != m.Id {
			continue // a late reply to an earlier query
		}
		if tcp && time.Now().After(deadline) {
			info, ok := tcpInfo(conn.Conn)
			if !ok {
				return Timeout
			}
			// Last_data_recv: since the end of the answer just read.
			arrived := ago(info.Last_data_recv)
			if arrived.After(deadline) {
				return Timeout
			}
			c.arrivedAt = arrived
		}
		return classifyRcode(r.Rcode)
	}
}

// tcpInfo is the kernel's TCP_INFO of a connection.
func tcpInfo(conn any) (*unix.TCPInfo, bool) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, false
	}
	var info *unix.TCPInfo
	raw.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	return info, err == nil && info != nil
}

// ago is the time ms milliseconds before now (TCP_INFO's times).
func ago(ms uint32) time.Time {
	return time.Now().Add(-time.Duration(ms) * time.Millisecond)
}
