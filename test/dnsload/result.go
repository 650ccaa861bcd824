package dnsload

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// Outcome classifies one query.
type Outcome int

const (
	Answered       Outcome = iota // NOERROR
	NXDomain                      // NXDOMAIN: an answer, not a failure
	ServFail                      // SERVFAIL
	Refused                       // REFUSED
	ConnRefused                   // the TCP connection was refused (RST to the SYN)
	Timeout                       // no answer within the timeout
	OtherRcode                    // any other rcode
	NetError                      // the connection failed or was closed without an answer
	ClosedByServer                // internal: TCP closed without an answer, may be retried
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"answered", "nxdomain", "servfail", "refused", "conn_refused", "timeout", "other_rcode", "net_error", "closed"}

func (o Outcome) String() string { return outcomeNames[o] }

// Failed reports whether the query got no usable answer.
func (o Outcome) Failed() bool { return o != Answered && o != NXDomain }

func classifyRcode(rcode int) Outcome {
	switch rcode {
	case dns.RcodeSuccess:
		return Answered
	case dns.RcodeNameError:
		return NXDomain
	case dns.RcodeServerFailure:
		return ServFail
	case dns.RcodeRefused:
		return Refused
	}
	return OtherRcode
}

func classifyErr(err error) Outcome {
	var ne net.Error
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return Timeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return ConnRefused
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return ClosedByServer
	}
	return NetError
}

// Second is what happened to the queries sent during one second of the run.
type Second struct {
	Sent   int
	Failed int
}

// Result summarises a run.
type Result struct {
	Started   time.Time // second 0 of PerSecond
	Elapsed   time.Duration
	Sent      int
	Outcomes  [numOutcomes]int
	Latencies Percentiles // of answered queries (NOERROR and NXDOMAIN)
	PerSecond []Second
	// ReadLate counts TCP answers that reached the client's socket within
	// the timeout but that the client, starved of CPU, read after it: not
	// failures, and their latency is the kernel's arrival time.
	ReadLate int
	// SentLate counts queries this client could not even write before their
	// timeout (it stalled): never sent, so neither sent nor failed.
	SentLate int
	// Failures are the first maxFailures failed queries, in the order they
	// ended: when and how, to line them up with what the server did.
	Failures []Failure
}

// Failure is one failed query.
type Failure struct {
	Sent    time.Time
	Outcome string
	Name    string
	// Local is the client's address of the query's connection (TCP) or
	// socket, to find its packets in a capture.
	Local string `json:",omitempty"`
	// Connecting: a TCP query that failed before its connection was
	// established (a lost SYN, say), rather than after the query was written.
	Connecting bool `json:",omitempty"`
}

// At most this many failures are listed one by one: more than a kill
// loses at the load of a scenario (2 s of queries in flight).
const maxFailures = 5000

// Histogram counts answered queries by latency in whole microseconds. Its
// size depends on the spread of latencies, not on the number of queries, and
// the counts of several runs add up to the percentiles of all their queries.
type Histogram map[int64]int

// Percentiles of the counted latencies; zero when nothing was counted.
func (h Histogram) Percentiles() Percentiles {
	keys := slices.Sorted(maps.Keys(h))
	total := 0
	for _, n := range h {
		total += n
	}
	// at is the latency of the query with rank q*total (from 0), as a sorted
	// list of all latencies would hold it.
	at := func(q float64) time.Duration {
		rank := min(total-1, int(q*float64(total)))
		for _, us := range keys {
			if rank -= h[us]; rank < 0 {
				return time.Duration(us) * time.Microsecond
			}
		}
		return 0
	}
	return Percentiles{P50: at(0.50), P90: at(0.90), P99: at(0.99), P999: at(0.999), Max: at(1)}
}

// Percentiles of query latency.
type Percentiles struct {
	P50, P90, P99, P999, Max time.Duration
}

// Failed counts queries without a usable answer.
func (r *Result) Failed() int {
	n := 0
	for o, c := range r.Outcomes {
		if Outcome(o).Failed() {
			n += c
		}
	}
	return n
}

// QPS is the rate of answered queries.
func (r *Result) QPS() float64 {
	return float64(r.Outcomes[Answered]+r.Outcomes[NXDomain]) / r.Elapsed.Seconds()
}

// FailedSeconds lists the seconds (from the start) in which queries failed.
func (r *Result) FailedSeconds() []int {
	var s []int
	for i, sec := range r.PerSecond {
		if sec.Failed > 0 {
			s = append(s, i)
		}
	}
	return s
}

func (r *Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sent %d in %.1fs (%.0f answered/s), failed %d:", r.Sent, r.Elapsed.Seconds(), r.QPS(), r.Failed())
	for o, c := range r.Outcomes {
		if c > 0 {
			fmt.Fprintf(&b, " %s=%d", Outcome(o), c)
		}
	}
	if r.ReadLate > 0 {
		fmt.Fprintf(&b, " (read after the timeout, arrived in time: %d)", r.ReadLate)
	}
	if r.SentLate > 0 {
		fmt.Fprintf(&b, " (not sent: the client stalled past the timeout before writing: %d)", r.SentLate)
	}
	l := r.Latencies
	fmt.Fprintf(&b, "; latency p50=%v p90=%v p99=%v p99.9=%v max=%v", l.P50, l.P90, l.P99, l.P999, l.Max)
	if fs := r.FailedSeconds(); len(fs) > 0 {
		fmt.Fprintf(&b, "; failures in seconds %v", fs)
	}
	return b.String()
}

type recorder struct {
	start     time.Time
	mu        sync.Mutex
	readLate  int
	sentLate  int
	outcomes  [numOutcomes]int
	latencies Histogram
	perSecond []Second
	failures  []Failure
}

func newRecorder(start time.Time, d time.Duration) *recorder {
	return &recorder{start: start, latencies: Histogram{}, perSecond: make([]Second, int(d/time.Second)+2)}
}

// record counts a query; failure says which it was, if it failed.
func (r *recorder) record(sentAt time.Time, latency time.Duration, o Outcome, failure Failure) {
	sec := int(sentAt.Sub(r.start) / time.Second)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.outcomes[o]++
	if sec < len(r.perSecond) {
		r.perSecond[sec].Sent++
		if o.Failed() {
			r.perSecond[sec].Failed++
		}
	}
	if !o.Failed() {
		r.latencies[latency.Microseconds()]++
	} else if len(r.failures) < maxFailures {
		failure.Sent, failure.Outcome = sentAt, o.String()
		r.failures = append(r.failures, failure)
	}
}

func (r *recorder) countReadLate() {
	r.mu.Lock()
	r.readLate++
	r.mu.Unlock()
}

func (r *recorder) countSentLate() {
	r.mu.Lock()
	r.sentLate++
	r.mu.Unlock()
}

func (r *recorder) result(elapsed time.Duration) *Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := &Result{Started: r.start, Elapsed: elapsed, Failures: r.failures, Outcomes: r.outcomes, Latencies: r.latencies.Percentiles(), PerSecond: r.perSecond, ReadLate: r.readLate, SentLate: r.sentLate}
	for _, c := range r.outcomes {
		res.Sent += c
	}
	last := int(elapsed / time.Second)
	if last+1 < len(res.PerSecond) {
		res.PerSecond = res.PerSecond[:last+1]
	}
	return res
}

// FailedAt lists when each failed query was sent: exactly while Failures
// holds them all, otherwise each second with failures stands for them.
func (r *Result) FailedAt() []time.Time {
	var at []time.Time
	if len(r.Failures) == r.Failed() {
		for _, f := range r.Failures {
			at = append(at, f.Sent)
		}
		return at
	}
	for _, sec := range r.FailedSeconds() {
		at = append(at, r.Started.Add(time.Duration(sec)*time.Second))
	}
	return at
}

// FailedOutcomes names the kinds of failure and their counts, such as
// "servfail=2 timeout=1".
func (r *Result) FailedOutcomes() string {
	var parts []string
	for o, n := range r.Outcomes {
		if n > 0 && Outcome(o).Failed() {
			parts = append(parts, fmt.Sprintf("%s=%d", Outcome(o), n))
		}
	}
	return strings.Join(parts, " ")
}
