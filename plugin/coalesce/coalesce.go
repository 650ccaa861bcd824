// Package coalesce is a CoreDNS plugin that answers identical queries already
// in flight with the one answer: the first query of a name goes on to the
// next plugin (forward), and identical ones that arrive before its answer
// wait for it instead of each asking the upstream.
package coalesce

import (
	"context"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metrics"
	"github.com/miekg/dns"
)

const pluginName = "coalesce"

// DefaultMaxWait bounds how long a query waits for an identical one's
// answer: forward's own deadline for a query, so a follower gives up no
// earlier than its leader would.
const DefaultMaxWait = 5 * time.Second

// DefaultMaxFollowers bounds the queries waiting for another's answer, as
// forward's max_concurrent bounds those on their way upstream: each holds a
// goroutine and its buffers for up to max_wait.
const DefaultMaxFollowers = 1024

// shardCount shards the in-flight table, so concurrent misses of different
// names rarely contend on one lock.
const shardCount = 64

// Coalesce is the plugin handler.
type Coalesce struct {
	Next         plugin.Handler
	MaxWait      time.Duration
	MaxFollowers int64

	seed      maphash.Seed
	shards    [shardCount]shard
	following atomic.Int64 // queries waiting in follow
}

type shard struct {
	mu      sync.Mutex
	flights map[key]*flight
}

// key identifies queries that get the same answer: the name (case does not
// matter to DNS), type, class, and the DNSSEC OK and checking-disabled bits.
type key struct {
	name   string
	qtype  uint16
	qclass uint16
	do, cd bool
}

// flight is a query on its way upstream; done closes when its answer is in.
type flight struct {
	done  chan struct{}
	msg   *dns.Msg // the answer written, or nil if the chain wrote none
	rcode int
	err   error
}

// New returns the plugin with its in-flight table ready.
func New(maxWait time.Duration, maxFollowers int64) *Coalesce {
	c := &Coalesce{MaxWait: maxWait, MaxFollowers: maxFollowers, seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].flights = map[key]*flight{}
	}
	return c
}

// Name implements plugin.Handler.
func (c *Coalesce) Name() string { return pluginName }

// ServeDNS implements plugin.Handler.
func (c *Coalesce) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	k, ok := keyOf(r)
	if !ok {
		return plugin.NextOrFailure(c.Name(), c.Next, ctx, w, r)
	}
	s := &c.shards[maphash.String(c.seed, k.name)%shardCount]
	s.mu.Lock()
	if f, inFlight := s.flights[k]; inFlight {
		s.mu.Unlock()
		if c.following.Add(1) > c.MaxFollowers {
			// Past the cap the query goes on alone, where forward's
			// max_concurrent bounds it.
			c.following.Add(-1)
			overflows.WithLabelValues(metrics.WithServer(ctx)).Inc()
			return plugin.NextOrFailure(c.Name(), c.Next, ctx, w, r)
		}
		defer c.following.Add(-1)
		return c.follow(ctx, f, w, r)
	}
	f := &flight{done: make(chan struct{})}
	s.flights[k] = f
	s.mu.Unlock()

	rec := &recorder{ResponseWriter: w}
	f.rcode, f.err = plugin.NextOrFailure(c.Name(), c.Next, ctx, rec, r)
	f.msg = rec.msg
	s.mu.Lock()
	delete(s.flights, k)
	s.mu.Unlock()
	close(f.done)
	return f.rcode, f.err
}

// follow waits for f's answer and writes it as the answer to r. A query that
// waited MaxWait in vain goes upstream itself: nothing is cancelled.
func (c *Coalesce) follow(ctx context.Context, f *flight, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	timer := time.NewTimer(c.MaxWait)
	defer timer.Stop()
	server := metrics.WithServer(ctx)
	select {
	case <-f.done:
	case <-timer.C:
		waitTimeouts.WithLabelValues(server).Inc()
		return plugin.NextOrFailure(c.Name(), c.Next, ctx, w, r)
	case <-ctx.Done():
		return dns.RcodeServerFailure, ctx.Err()
	}
	followers.WithLabelValues(server).Inc()
	if f.msg == nil {
		return f.rcode, f.err // no answer was written: the server writes the same error reply
	}
	m := f.msg.Copy()
	m.Id = r.Id
	m.Question = r.Question // the client's own spelling of the name (0x20)
	if err := w.WriteMsg(m); err != nil {
		return dns.RcodeServerFailure, err
	}
	return dns.RcodeSuccess, nil
}

// keyOf is the coalescing key of r, or false for a message that must go on
// alone: anything but a standard query with recursion desired (a NOTIFY, an
// UPDATE, an RD=0 probe of the cache must not lead a flight whose answer
// other clients get), not exactly one question, or an EDNS client subnet (the
// answer may depend on it).
func keyOf(r *dns.Msg) (key, bool) {
	if r.Response || r.Opcode != dns.OpcodeQuery || !r.RecursionDesired || len(r.Question) != 1 {
		return key{}, false
	}
	q := r.Question[0]
	k := key{name: strings.ToLower(q.Name), qtype: q.Qtype, qclass: q.Qclass, cd: r.CheckingDisabled}
	if opt := r.IsEdns0(); opt != nil {
		k.do = opt.Do()
		for _, o := range opt.Option {
			if o.Option() == dns.EDNS0SUBNET {
				return key{}, false
			}
		}
	}
	return k, true
}

// recorder keeps a copy of the answer the rest of the chain writes.
type recorder struct {
	dns.ResponseWriter
	msg *dns.Msg
}

func (r *recorder) WriteMsg(m *dns.Msg) error {
	r.msg = m.Copy() // before the server's writer scrubs it to this client's size
	return r.ResponseWriter.WriteMsg(m)
}
