// Package heapfloor keeps the Go garbage collector from collecting a small
// heap many times a second. A cache answering from a few MiB of live heap
// allocates tens of MiB per second under load; with Go's default GOGC=100
// that is a collection every few tens of milliseconds, each with its fixed
// costs. The package raises GOGC while the live heap is small, so the next
// collection starts at the floor at the earliest, and leaves Go's default
// once the live heap is half the floor or more: a full cache, whose memory
// the DaemonSet's limit is sized for, collects as with Go's default.
package heapfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// minPercent is Go's default GOGC, the least the floor sets.
const minPercent = 100

// goHeapMinimum is the runtime's minimum heap goal at GOGC=100 (its
// defaultHeapMinimum). Go scales it with GOGC like the rest of the goal, so a
// GOGC above floor/goHeapMinimum*100 would put the goal past the floor
// however small the heap.
const goHeapMinimum = 4 << 20

// Start keeps the heap goal at floor bytes or more, retuning after every
// collection. It does nothing when floor is 0 or GOGC is set: an operator's
// GOGC wins.
func Start(floor uint64, gogcSet bool) {
	if floor == 0 || gogcSet {
		return
	}
	t := &tuner{floor: floor, percent: minPercent, sample: []metrics.Sample{
		{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}, {Name: "/gc/scan/globals:bytes"},
	}}
	t.retune()
	t.armAfterNextGC()
}

type tuner struct {
	floor   uint64
	percent int
	sample  []metrics.Sample
}

// sentinel is garbage the moment it is made; its cleanup runs after the
// collection that frees it. It holds a pointer so that it is not packed into
// a tiny-allocator block, whose cleanups may never run.
type sentinel struct{ _ *byte }

func (t *tuner) armAfterNextGC() {
	runtime.AddCleanup(&sentinel{}, func(t *tuner) {
		t.retune()
		t.armAfterNextGC()
	}, t)
}

func (t *tuner) retune() {
	metrics.Read(t.sample)
	live := t.sample[0].Value.Uint64()
	p := percentFor(live, live+t.sample[1].Value.Uint64()+t.sample[2].Value.Uint64(), t.floor)
	// Small changes are left alone: the live heap moves a little every cycle.
	if diff := p - t.percent; diff > t.percent/8 || -diff > t.percent/8 {
		debug.SetGCPercent(p)
		t.percent = p
	}
}

// percentFor is the GOGC that puts the next collection at floor, and at
// least Go's default. Go sets that point at live + scannable*GOGC/100, where
// scannable is the live heap plus the stacks and globals it scans, and never
// below goHeapMinimum*GOGC/100.
func percentFor(live, scannable, floor uint64) int {
	if floor <= live {
		return minPercent
	}
	p := floor * 100 / goHeapMinimum
	if scannable > 0 {
		p = min(p, (floor-live)*100/scannable)
	}
	return max(int(p), minPercent)
}
