package warm

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/cache"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"
)

// answerer answers every A question with 198.18.1.1 and counts them.
type answerer struct{ asked atomic.Int64 }

func (a *answerer) ServeDNS(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	a.asked.Add(1)
	m := new(dns.Msg)
	m.SetReply(r)
	m.Answer = append(m.Answer, test.A(r.Question[0].Name+" 30 IN A 198.18.1.1"))
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil
}

func (a *answerer) Name() string { return "upstream" }

// instance is a cache in front of warm in front of an upstream, as a server
// block of node-cache chains them.
type instance struct {
	cache    *cache.Cache
	warm     *Warm
	upstream *answerer
}

func newInstance(path, servingAddr string) *instance {
	i := &instance{cache: cache.New(), upstream: &answerer{}}
	i.warm = &Warm{Next: i.upstream, Names: DefaultNames, Within: DefaultWithin, path: path, addr: servingAddr,
		server: "example.:53", record: newRecord(4 * DefaultNames)}
	i.warm.cache = func() plugin.Handler { return i.cache }
	i.cache.Next = i.warm
	return i
}

func (i *instance) ask(t *testing.T, name string) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	if _, err := i.cache.ServeDNS(context.Background(), rec, m); err != nil || rec.Msg == nil || len(rec.Msg.Answer) != 1 {
		t.Fatalf("%s: %v %v", name, err, rec.Msg)
	}
}

// serve serves h on a loopback UDP port, as the instance already on the
// cache's addresses does.
func serve(t *testing.T, h dns.Handler) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &dns.Server{PacketConn: pc, Handler: h}
	go s.ActivateAndServe()
	t.Cleanup(func() { s.Shutdown() })
	return pc.LocalAddr().String()
}

// TestSuccessorTakesOverWarm: the names a serving instance fetched more
// than once go into a successor's cache from the serving instance's, with
// no query upstream; names fetched once are not handed over.
func TestSuccessorTakesOverWarm(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hot-names-example-53")
	old := newInstance(path, "")
	hot := []string{"a.example.", "b.example.", "c.example."}
	for _, name := range hot {
		old.ask(t, name)
	}
	old.cache = cache.New() // the answers expired: each is fetched again
	old.cache.Next = old.warm
	for _, name := range hot {
		old.ask(t, name)
	}
	old.ask(t, "once.example.")
	if err := saveRecord(path, old.warm.record.hottest(DefaultNames)); err != nil {
		t.Fatal(err)
	}
	oldAnswers := old.upstream.asked.Load()
	addr := serve(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		old.cache.ServeDNS(context.Background(), w, r) // the serving instance answers from its cache
	}))

	successor := newInstance(path, addr)
	successor.warm.WarmUp()
	if got := old.upstream.asked.Load(); got != oldAnswers {
		t.Errorf("the warm-up sent %d queries upstream from the serving instance, want none: its cache has them", got-oldAnswers)
	}
	for _, name := range hot {
		successor.ask(t, name)
	}
	if got := successor.upstream.asked.Load(); got != 0 {
		t.Errorf("the successor fetched %d of the hot names upstream after its warm-up, want none", got)
	}
	successor.ask(t, "once.example.")
	if got := successor.upstream.asked.Load(); got != 1 {
		t.Errorf("a name fetched once was handed over (%d fetches upstream, want 1)", got)
	}
	// The successor's own record keeps the hot names for its successor.
	if got := successor.warm.record.hottest(DefaultNames); len(got) != len(hot) {
		t.Errorf("the successor's record has %+v, want the %d hot names", got, len(hot))
	}
}

// TestWarmUpIsBounded: a serving instance that does not answer keeps a
// warm-up no longer than Within, and nothing goes upstream.
func TestWarmUpIsBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hot-names-example-53")
	var hot []hotName
	for i := range 500 {
		hot = append(hot, hotName{question{dns.Fqdn(string(rune('a'+i%26)) + "x" + string(rune('a'+i/26)) + ".example"), dns.TypeA}, 5})
	}
	if err := saveRecord(path, hot); err != nil {
		t.Fatal(err)
	}
	silent := serve(t, dns.HandlerFunc(func(dns.ResponseWriter, *dns.Msg) {}))
	i := newInstance(path, silent)
	i.warm.Within = 300 * time.Millisecond
	start := time.Now()
	i.warm.WarmUp()
	if took := time.Since(start); took > i.warm.Within+questionTimeout+200*time.Millisecond {
		t.Errorf("the warm-up took %v, want about %v", took, i.warm.Within)
	}
	if got := i.upstream.asked.Load(); got != 0 {
		t.Errorf("the warm-up sent %d queries upstream", got)
	}
}

// TestWithoutARecordNothingHappens: a first start has no record.
func TestWithoutARecordNothingHappens(t *testing.T) {
	i := newInstance(filepath.Join(t.TempDir(), "none"), "127.0.0.1:1")
	i.warm.WarmUp()
	i.ask(t, "a.example.")
	if got := i.upstream.asked.Load(); got != 1 {
		t.Errorf("upstream asked %d times, want 1", got)
	}
}

// TestSavesAsQueriesCome: the first miss saves the record at once, the next
// ones within saveInterval schedule one save; without its directory nothing
// is saved.
func TestSavesAsQueriesCome(t *testing.T) {
	dir := t.TempDir()
	i := newInstance(filepath.Join(dir, "hot-names-example-53"), "")
	i.warm.dir = dir
	i.warm.checkDir()
	i.ask(t, "a.example.")
	deadline := time.Now().Add(2 * time.Second)
	for {
		if _, err := os.Stat(i.warm.path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first miss did not save the record")
		}
		time.Sleep(10 * time.Millisecond)
	}
	saved := i.warm.lastSave.Load()
	i.ask(t, "b.example.")
	i.ask(t, "c.example.")
	if i.warm.lastSave.Load() != saved || !i.warm.savePending.Load() {
		t.Error("misses within saveInterval did not leave one save pending")
	}

	missing := newInstance(filepath.Join(dir, "none", "hot-names-example-53"), "")
	missing.warm.dir = filepath.Join(dir, "none")
	missing.warm.checkDir()
	missing.ask(t, "a.example.")
	if missing.warm.savePending.Load() || missing.warm.lastSave.Load() != 0 {
		t.Error("saved without the directory")
	}
}
