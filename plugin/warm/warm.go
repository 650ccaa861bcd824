// Package warm is a CoreDNS plugin that lets a starting cache take over warm:
// it records the names that the cache fetches most and, when told to (by
// nodelocal, before the new instance's listeners open), fetches them into
// the new cache from the instance still serving on the same addresses (a
// DaemonSet surge's old pod, or the old servers of a reload), whose cache
// answers them without asking the upstream.
package warm

import (
	"context"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/plugin"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"github.com/miekg/dns"
)

const pluginName = "warm"

var log = clog.NewWithPlugin(pluginName)

// Warm is the plugin handler. It sits after the cache: it sees the
// questions the cache could not answer, and answers those of a warm-up.
type Warm struct {
	Next plugin.Handler
	// Names bounds the names saved and fetched at a warm-up.
	Names int
	// Within bounds a warm-up.
	Within time.Duration

	dir    string // where the records are saved
	path   string // this block's record
	addr   string // the block's address, where another instance serves too
	server string // the block's zone and port, for metrics and logs
	cache  func() plugin.Handler
	record *record
	// saves: whether the directory is there, as the start found it.
	saves       bool
	lastSave    atomic.Int64 // Unix nanoseconds
	savePending atomic.Bool
}

// How often the record is saved at most: a successor starting now gets what
// its predecessor fetched up to this long ago.
const saveInterval = 10 * time.Second

// How long one question of a warm-up may take: the serving instance answers
// from its cache, locally.
const questionTimeout = 500 * time.Millisecond

// How many questions of a warm-up are in flight at once.
const warmUpConcurrency = 16

// warmUpKey marks a warm-up's queries in their context.
type warmUpKey struct{}

func (w *Warm) Name() string { return pluginName }

func (w *Warm) ServeDNS(ctx context.Context, rw dns.ResponseWriter, r *dns.Msg) (int, error) {
	if ctx.Value(warmUpKey{}) != nil {
		return w.fromServing(ctx, rw, r)
	}
	if len(r.Question) == 1 && r.Question[0].Qclass == dns.ClassINET {
		w.record.add(r.Question[0].Name, r.Question[0].Qtype)
		w.scheduleSave()
	}
	return plugin.NextOrFailure(pluginName, w.Next, ctx, rw, r)
}

// fromServing asks the instance serving on the block's address. The answer
// written to rw goes into the cache in front of this plugin.
func (w *Warm) fromServing(ctx context.Context, rw dns.ResponseWriter, r *dns.Msg) (int, error) {
	c := dns.Client{Net: "udp", Timeout: questionTimeout}
	resp, _, err := c.ExchangeContext(ctx, r, w.addr)
	if err == nil && resp.Truncated {
		c.Net = "tcp"
		resp, _, err = c.ExchangeContext(ctx, r, w.addr)
	}
	if err != nil {
		return dns.RcodeServerFailure, err
	}
	resp.Id = r.Id
	if err := rw.WriteMsg(resp); err != nil {
		return dns.RcodeServerFailure, err
	}
	return resp.Rcode, nil
}

// checkDir runs at the start: without the directory, nothing is saved.
func (w *Warm) checkDir() error {
	fi, err := os.Stat(w.dir)
	w.saves = err == nil && fi.IsDir()
	if !w.saves {
		log.Warningf("Directory %s is not mounted: the names this cache fetches are not kept for its successor, which starts cold; mount it as the manifests do (hostPath, DirectoryOrCreate)", w.dir)
	}
	return nil
}

// scheduleSave saves the record saveInterval after the last save at the
// earliest, once a question has come since. Saving as questions come, not
// from a goroutine of its own, means an instance that never serves never
// saves: a reload that failed leaves its new instance behind (its
// OnShutdown never runs).
func (w *Warm) scheduleSave() {
	if !w.saves || !w.savePending.CompareAndSwap(false, true) {
		return
	}
	due := time.Until(time.Unix(0, w.lastSave.Load()).Add(saveInterval))
	time.AfterFunc(max(due, 0), func() {
		w.lastSave.Store(time.Now().UnixNano())
		w.savePending.Store(false) // questions from now on schedule the next save
		if err := saveRecord(w.path, w.record.hottest(w.Names)); err != nil {
			log.Warningf("Saving the names fetched most to %s: %v", w.path, err)
		}
	})
}

// WarmUp fetches the hottest names of the saved record into the block's
// cache from the instance serving on its address, for at most Within. The
// caller (nodelocal) calls it before this instance's listeners open, and
// only when another instance serves there.
func (w *Warm) WarmUp() {
	start := time.Now()
	hot, err := loadRecord(w.path, w.Names)
	if err != nil {
		if !os.IsNotExist(err) {
			log.Warningf("Reading the names to warm the cache with from %s: %v", w.path, err)
		}
		return
	}
	w.record.seed(hot)
	cache := w.cache()
	if cache == nil || len(hot) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), warmUpKey{}, true), w.Within)
	defer cancel()
	names := make(chan question)
	var warmed atomic.Int64
	var wg sync.WaitGroup
	for range min(warmUpConcurrency, len(hot)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for q := range names {
				m := new(dns.Msg)
				m.SetQuestion(q.name, q.qtype)
				sink := &sink{}
				cache.ServeDNS(ctx, sink, m)
				result := "failed"
				if sink.written {
					result = "warmed"
					warmed.Add(1)
				}
				warmUps.WithLabelValues(w.server, result).Inc()
			}
		}()
	}
	sent := 0
	for _, h := range hot {
		select {
		case names <- h.question:
			sent++
			continue
		case <-ctx.Done():
		}
		break
	}
	close(names)
	wg.Wait()
	warmUps.WithLabelValues(w.server, "late").Add(float64(len(hot) - sent))
	log.Infof("Warmed %s from the serving instance: %d of its %d names fetched most in %v", w.server, warmed.Load(), len(hot), time.Since(start).Round(time.Millisecond))
}

// sink is the warm-up's client: the answer only has to reach the cache.
type sink struct{ written bool }

func (s *sink) LocalAddr() net.Addr         { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (s *sink) RemoteAddr() net.Addr        { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)} }
func (s *sink) WriteMsg(*dns.Msg) error     { s.written = true; return nil }
func (s *sink) Write(b []byte) (int, error) { s.written = true; return len(b), nil }
func (s *sink) Close() error                { return nil }
func (s *sink) TsigStatus() error           { return nil }
func (s *sink) TsigTimersOnly(bool)         {}
func (s *sink) Hijack()                     {}
