package heapfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercentFor(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		live, scannable, floor uint64
		want                   int
	}{
		{0, 0, 16 * mib, maxPercent},
		{2 * mib, 2 * mib, 16 * mib, 700},
		{2 * mib, 4 * mib, 16 * mib, 350}, // stacks and globals count
		{4 * mib, 4 * mib, 16 * mib, 300},
		{8 * mib, 8 * mib, 16 * mib, 100},   // half the floor: Go's default
		{60 * mib, 61 * mib, 16 * mib, 100}, // full caches: never below the default
		{1, 1, 16 * mib, maxPercent},
	}
	for _, tt := range tests {
		if got := percentFor(tt.live, tt.scannable, tt.floor); got != tt.want {
			t.Errorf("percentFor(%d, %d, %d) = %d, want %d", tt.live, tt.scannable, tt.floor, got, tt.want)
		}
	}
}

// TestStartRaisesGOGCAfterCollections runs the tuner on this test's small heap.
func TestStartRaisesGOGCAfterCollections(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	Start(256<<20, false)
	gogc := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond) // cleanups run on a goroutine of their own
		if metrics.Read(gogc); gogc[0].Value.Uint64() > minPercent {
			return
		}
	}
	t.Fatal("GOGC still at the default after collections with a heap far below the floor")
}
