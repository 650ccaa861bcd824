package warm

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestRecordKeepsTheHotNamesThroughAFloodOfUniqueOnes(t *testing.T) {
	r := newRecord(8)
	for range 3 {
		r.add("Hot.Example.", dns.TypeA) // case does not matter to DNS
		r.add("hot.example.", dns.TypeAAAA)
	}
	for i := range 100 {
		r.add("u"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+".example.", dns.TypeA)
	}
	got := r.hottest(10)
	if len(got) != 2 || got[0].name != "hot.example." || got[1].name != "hot.example." {
		t.Fatalf("hottest after a flood of unique names = %+v, want hot.example. A and AAAA", got)
	}
	r.mu.Lock()
	size := len(r.current)
	r.mu.Unlock()
	if size > 8 {
		t.Errorf("the record holds %d questions, more than its limit of 8", size)
	}
}

func TestHottestOrderAndThreshold(t *testing.T) {
	r := newRecord(100)
	for name, n := range map[string]int{"a.": 5, "b.": 2, "c.": 9, "once.": 1} {
		for range n {
			r.add(name, dns.TypeA)
		}
	}
	var names []string
	for _, h := range r.hottest(10) {
		names = append(names, h.name)
	}
	if want := []string{"c.", "a.", "b."}; !reflect.DeepEqual(names, want) {
		t.Errorf("hottest = %v, want %v (most fetched first, none fetched once)", names, want)
	}
	if got := r.hottest(1); len(got) != 1 || got[0].name != "c." {
		t.Errorf("hottest(1) = %+v, want c.", got)
	}
	r.rotate()
	r.add("once.", dns.TypeA)
	if got := r.hottest(10); len(got) != 4 || got[3].name != "once." {
		t.Errorf("a window later hottest = %+v, want once. too (twice in two windows)", got)
	}
	r.rotate()
	r.rotate()
	if got := r.hottest(10); len(got) != 0 {
		t.Errorf("two empty windows later hottest = %+v, want none", got)
	}
}

func TestSeedIsTheLastWindow(t *testing.T) {
	r := newRecord(100)
	r.seed([]hotName{{question{"a.", dns.TypeA}, 8}, {question{"b.", dns.TypeA}, 1}})
	r.add("b.", dns.TypeA)
	if got := r.hottest(10); len(got) != 2 || got[0].name != "a." || got[0].count != 8 || got[1].count != 2 {
		t.Errorf("after seeding hottest = %+v, want a. with 8 and b. with 2", got)
	}
	r.rotate()
	r.rotate()
	if got := r.hottest(10); len(got) != 0 {
		t.Errorf("two windows later hottest = %+v, want none", got)
	}
}

func TestSaveAndLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hot-names-root-53")
	hot := []hotName{{question{"www.example.org.", dns.TypeA}, 7}, {question{"svc.cluster.local.", dns.TypeSRV}, 3}}
	if err := saveRecord(path, hot); err != nil {
		t.Fatal(err)
	}
	got, err := loadRecord(path, 10)
	if err != nil || !reflect.DeepEqual(got, hot) {
		t.Fatalf("load = %+v, %v; want %+v", got, err, hot)
	}
	if got, _ := loadRecord(path, 1); len(got) != 1 {
		t.Errorf("load of at most 1 name read %d", len(got))
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("save left %d files, want the record alone", len(entries))
	}
}

func TestParseRecordRefusesWhatSaveDoesNotWrite(t *testing.T) {
	for _, in := range []string{
		"7 A",
		"x A www.example.org.",
		"7 NOPE www.example.org.",
		"7 A www.example.org",
		"99999999999 A www.example.org.",
		"7 A " + strings.Repeat("a", 64) + ".",
	} {
		if _, err := parseRecord(strings.NewReader(in+"\n"), 10); err == nil {
			t.Errorf("parseRecord(%q) took it", in)
		}
	}
}

// FuzzParseRecord: any input parses or is refused; what parses saves and
// parses back the same.
func FuzzParseRecord(f *testing.F) {
	f.Add("7 A www.example.org.\n3 SRV _dns._udp.kube-dns.kube-system.svc.cluster.local.\n")
	f.Add("1 AAAA .\n")
	f.Fuzz(func(t *testing.T, in string) {
		hot, err := parseRecord(strings.NewReader(in), 100)
		if err != nil {
			return
		}
		path := filepath.Join(t.TempDir(), "r")
		if err := saveRecord(path, hot); err != nil {
			t.Fatal(err)
		}
		again, err := loadRecord(path, 100)
		if err != nil || !reflect.DeepEqual(again, hot) && len(hot) > 0 {
			t.Fatalf("saved %+v, read back %+v, %v", hot, again, err)
		}
	})
}

func TestWindowsTurnWithTime(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	r := newRecord(100)
	r.now = func() time.Time { return now }
	r.windowStart = now
	r.add("a.", dns.TypeA)
	now = now.Add(windowLength)
	r.add("a.", dns.TypeA) // a new window: a. in both
	if got := r.hottest(10); len(got) != 1 || got[0].count != 2 {
		t.Fatalf("hottest = %+v, want a. with 2", got)
	}
	now = now.Add(2 * windowLength)
	r.add("a.", dns.TypeA)
	if got := r.hottest(10); len(got) != 0 {
		t.Errorf("two windows on, hottest = %+v, want none: a. was fetched twice long ago", got)
	}
}
