package warm

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/nodelocal/nodelocal/internal/atomicfile"
)

// question is what the record counts: a name (lower case) and a type.
type question struct {
	name  string
	qtype uint16
}

// record counts the questions that reached the upstream side of the cache:
// a name asked often is fetched again at each expiry or prefetch, a name
// asked once is fetched once. It counts in windows of windowLength, and
// keeps the last window besides the current one,
// so a name fetched at each expiry is counted in both. Each window holds at
// most limit questions: when the current one is full, those fetched once in
// it go, so a flood of unique names cannot push the hot ones out.
type record struct {
	limit int
	now   func() time.Time

	mu          sync.Mutex
	windowStart time.Time
	current     map[question]uint32
	previous    map[question]uint32
}

// windowLength: longer than the cache's TTLs (30 s), so a name fetched at
// each expiry is counted in every window.
const windowLength = time.Minute

func newRecord(limit int) *record {
	return &record{limit: limit, now: time.Now, windowStart: time.Now(), current: make(map[question]uint32), previous: make(map[question]uint32)}
}

func (r *record) add(name string, qtype uint16) {
	q := question{lowerASCII(name), qtype}
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.now(); now.Sub(r.windowStart) >= windowLength {
		r.rotateLocked(now)
	}
	if _, ok := r.current[q]; !ok && len(r.current) >= r.limit {
		r.dropOnceFetchedLocked()
		if len(r.current) >= r.limit {
			return // every one was fetched more than once: this one waits
		}
	}
	r.current[q]++
}

func (r *record) dropOnceFetchedLocked() {
	for q, c := range r.current {
		if c == 1 {
			delete(r.current, q)
		}
	}
}

// seed takes a predecessor's counts as the last window's, so a successor's
// own record keeps the names it was handed until it sees them itself.
func (r *record) seed(hot []hotName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range hot[:min(len(hot), r.limit)] {
		r.previous[h.question] = max(r.previous[h.question], h.count)
	}
}

// rotate starts a new window.
func (r *record) rotate() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rotateLocked(r.now())
}

func (r *record) rotateLocked(now time.Time) {
	r.previous, r.current = r.current, make(map[question]uint32)
	if now.Sub(r.windowStart) >= 2*windowLength {
		r.previous = make(map[question]uint32) // the current window ended long ago too
	}
	r.windowStart = now
}

// lowerASCII: DNS names compare without ASCII case, and only that (a name's
// other bytes are its own, valid UTF-8 or not).
func lowerASCII(name string) string {
	b := []byte(name)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// hotName is a question and how often it was fetched.
type hotName struct {
	question
	count uint32
}

// minHotCount: a name fetched once is no more likely to be asked again than
// any other; one fetched twice in the last two windows is in use.
const minHotCount = 2

// hottest returns at most n questions fetched at least minHotCount times
// in the two windows, the most fetched first.
func (r *record) hottest(n int) []hotName {
	r.mu.Lock()
	counts := make(map[question]uint32, len(r.current)+len(r.previous))
	for q, c := range r.previous {
		counts[q] = c
	}
	for q, c := range r.current {
		counts[q] += c
	}
	hot := make([]hotName, 0, min(n, len(counts)))
	for q, c := range counts {
		if c >= minHotCount {
			hot = append(hot, hotName{q, c})
		}
	}
	r.mu.Unlock()
	slices.SortFunc(hot, func(a, b hotName) int {
		return cmp.Or(cmp.Compare(b.count, a.count), cmp.Compare(a.name, b.name), cmp.Compare(a.qtype, b.qtype))
	})
	return hot[:min(n, len(hot))]
}

// saveRecord writes hot to path in one step (a reader never sees half a file):
// one "count type name" line each.
func saveRecord(path string, hot []hotName) error {
	return atomicfile.Write(path, func(out io.Writer) error {
		w := bufio.NewWriter(out)
		for _, h := range hot {
			fmt.Fprintf(w, "%d %s %s\n", h.count, dns.Type(h.qtype), h.name)
		}
		return w.Flush()
	})
}

// loadRecord reads at most n questions that saveRecord wrote.
func loadRecord(path string, n int) ([]hotName, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseRecord(f, n)
}

// parseRecord reads "count type name" lines; a line that is not one is an error
// naming it, since only saveRecord writes these files.
func parseRecord(in io.Reader, n int) ([]hotName, error) {
	var hot []hotName
	s := bufio.NewScanner(in)
	for line := 1; s.Scan() && len(hot) < n; line++ {
		fields := strings.Fields(s.Text())
		if len(fields) != 3 {
			return hot, fmt.Errorf("line %d: want \"count type name\", got %q", line, s.Text())
		}
		count, err := strconv.ParseUint(fields[0], 10, 32)
		if err != nil {
			return hot, fmt.Errorf("line %d: count %q: %w", line, fields[0], err)
		}
		qtype, ok := dns.StringToType[fields[1]]
		if !ok {
			return hot, fmt.Errorf("line %d: unknown type %q", line, fields[1])
		}
		name := fields[2]
		if _, ok := dns.IsDomainName(name); !ok || !dns.IsFqdn(name) {
			return hot, fmt.Errorf("line %d: %q is not a fully qualified domain name", line, name)
		}
		hot = append(hot, hotName{question{lowerASCII(name), qtype}, uint32(count)})
	}
	return hot, s.Err()
}
