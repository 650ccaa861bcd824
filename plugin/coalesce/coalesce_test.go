package coalesce

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"
)

// slowUpstream answers every query after delay and counts the queries.
type slowUpstream struct {
	delay time.Duration
	calls atomic.Int32
	rcode int // an error rcode returned without writing, if set
}

func (u *slowUpstream) Name() string { return "upstream" }

func (u *slowUpstream) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	u.calls.Add(1)
	time.Sleep(u.delay)
	if u.rcode != 0 {
		return u.rcode, context.DeadlineExceeded
	}
	m := new(dns.Msg)
	m.SetReply(r)
	m.Answer = []dns.RR{test.A(r.Question[0].Name + " 30 IN A 198.18.4.10")}
	return dns.RcodeSuccess, w.WriteMsg(m)
}

func query(name string, qtype uint16, do bool, id uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = id
	if do {
		m.SetEdns0(1232, true)
	}
	return m
}

// ask sends the queries at once and returns what each client got.
func ask(c *Coalesce, queries []*dns.Msg) []*dns.Msg {
	replies := make([]*dns.Msg, len(queries))
	var wg sync.WaitGroup
	for i, q := range queries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := dnstest.NewRecorder(&test.ResponseWriter{})
			rcode, _ := c.ServeDNS(context.Background(), rec, q)
			if rec.Msg == nil && !plugin.ClientWrite(rcode) {
				rec.Msg = new(dns.Msg).SetRcode(q, rcode) // what the server would write
			}
			replies[i] = rec.Msg
		}()
	}
	wg.Wait()
	return replies
}

func TestIdenticalQueriesGoUpstreamOnce(t *testing.T) {
	up := &slowUpstream{delay: 200 * time.Millisecond}
	c := New(DefaultMaxWait, DefaultMaxFollowers)
	c.Next = up
	var queries []*dns.Msg
	for i := range 50 {
		name := "web.default.svc.cluster.local."
		if i%2 == 1 {
			name = "WEB.default.svc.Cluster.Local." // the same name, 0x20 spelling
		}
		queries = append(queries, query(name, dns.TypeA, false, uint16(1000+i)))
	}
	replies := ask(c, queries)
	if got := up.calls.Load(); got != 1 {
		t.Fatalf("50 identical concurrent queries went upstream %d times, want 1", got)
	}
	for i, r := range replies {
		if r == nil || r.Id != queries[i].Id || r.Question[0].Name != queries[i].Question[0].Name || len(r.Answer) != 1 {
			t.Fatalf("reply %d: %v, want the answer with the client's id %d and spelling %s", i, r, queries[i].Id, queries[i].Question[0].Name)
		}
	}
}

func TestDifferentQueriesAreNotMerged(t *testing.T) {
	up := &slowUpstream{delay: 100 * time.Millisecond}
	c := New(DefaultMaxWait, DefaultMaxFollowers)
	c.Next = up
	ask(c, []*dns.Msg{
		query("a.example.org.", dns.TypeA, false, 1),
		query("a.example.org.", dns.TypeAAAA, false, 2),
		query("a.example.org.", dns.TypeA, true, 3), // DNSSEC OK
		query("b.example.org.", dns.TypeA, false, 4),
	})
	if got := up.calls.Load(); got != 4 {
		t.Fatalf("4 different queries went upstream %d times, want 4", got)
	}
	subnet := query("a.example.org.", dns.TypeA, false, 5)
	subnet.SetEdns0(1232, false)
	subnet.IsEdns0().Option = append(subnet.IsEdns0().Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24})
	ask(c, []*dns.Msg{subnet, subnet.Copy()})
	if got := up.calls.Load(); got != 6 {
		t.Fatalf("queries with a client subnet were merged (%d upstream calls, want 6)", got)
	}
}

func TestWaitIsBounded(t *testing.T) {
	up := &slowUpstream{delay: 300 * time.Millisecond}
	c := New(50*time.Millisecond, DefaultMaxFollowers)
	c.Next = up
	replies := ask(c, []*dns.Msg{query("a.example.org.", dns.TypeA, false, 1), query("a.example.org.", dns.TypeA, false, 2)})
	if got := up.calls.Load(); got != 2 {
		t.Fatalf("a follower that waited past max_wait did not go upstream itself: %d calls", got)
	}
	for _, r := range replies {
		if r == nil || len(r.Answer) != 1 {
			t.Fatalf("reply %v, want an answer", r)
		}
	}
}

func TestFollowersShareAnErrorWithoutAnswer(t *testing.T) {
	up := &slowUpstream{delay: 100 * time.Millisecond, rcode: dns.RcodeServerFailure}
	c := New(DefaultMaxWait, DefaultMaxFollowers)
	c.Next = up
	replies := ask(c, []*dns.Msg{query("a.example.org.", dns.TypeA, false, 1), query("a.example.org.", dns.TypeA, false, 2)})
	if got := up.calls.Load(); got != 1 {
		t.Fatalf("%d upstream calls, want 1", got)
	}
	for _, r := range replies {
		if r == nil || r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("reply %v, want SERVFAIL for both", r)
		}
	}
}

// TestOnlyStandardRecursiveQueriesLead: a NOTIFY, an RD=0 query or a
// response is never coalesced, so it cannot lead a flight whose answer other
// clients get, nor follow one.
func TestOnlyStandardRecursiveQueriesLead(t *testing.T) {
	for name, edit := range map[string]func(*dns.Msg){
		"NOTIFY":   func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify },
		"UPDATE":   func(m *dns.Msg) { m.Opcode = dns.OpcodeUpdate },
		"RD=0":     func(m *dns.Msg) { m.RecursionDesired = false },
		"response": func(m *dns.Msg) { m.Response = true },
	} {
		t.Run(name, func(t *testing.T) {
			up := &slowUpstream{delay: 100 * time.Millisecond}
			c := New(DefaultMaxWait, DefaultMaxFollowers)
			c.Next = up
			odd := query("a.example.org.", dns.TypeA, false, 1)
			edit(odd)
			ask(c, []*dns.Msg{odd, query("a.example.org.", dns.TypeA, false, 2), query("a.example.org.", dns.TypeA, false, 3)})
			if got := up.calls.Load(); got != 2 {
				t.Fatalf("%d upstream calls, want 2: the %s alone, and one for the two standard queries", got, name)
			}
		})
	}
}

// TestFollowersAreBounded: past max_followers waiting queries, the next one
// goes upstream alone (where forward's max_concurrent bounds it).
func TestFollowersAreBounded(t *testing.T) {
	up := &slowUpstream{delay: 300 * time.Millisecond}
	c := New(DefaultMaxWait, 3)
	c.Next = up
	var queries []*dns.Msg
	for i := range 10 {
		queries = append(queries, query("a.example.org.", dns.TypeA, false, uint16(i)))
	}
	// The leader first, so that every later query finds it in flight.
	leader := make(chan []*dns.Msg)
	go func() { leader <- ask(c, queries[:1]) }()
	time.Sleep(50 * time.Millisecond)
	replies := ask(c, queries[1:])
	<-leader
	if got := up.calls.Load(); got != 1+9-3 {
		t.Fatalf("%d upstream calls, want 7: the leader, and the 6 queries past the 3 followers", got)
	}
	for _, r := range replies {
		if r == nil || len(r.Answer) != 1 {
			t.Fatalf("reply %v, want an answer", r)
		}
	}
	if n := c.following.Load(); n != 0 {
		t.Fatalf("%d followers counted after all answered", n)
	}
}

// BenchmarkDistinctMisses: the cost on a miss that waits for nobody.
func BenchmarkDistinctMisses(b *testing.B) {
	c := New(DefaultMaxWait, DefaultMaxFollowers)
	c.Next = &slowUpstream{}
	q := query("a.example.org.", dns.TypeA, false, 1)
	w := &test.ResponseWriter{}
	b.ReportAllocs()
	for b.Loop() {
		c.ServeDNS(context.Background(), w, q)
	}
}
