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
		{0, 0, 16 * mib, 400}, // Go's minimum heap, 4 MiB at GOGC=100, scaled to the floor
		{2 * mib, 2 * mib, 16 * mib, 400},
		{1 * mib, 3 * mib, 16 * mib, 400},
		{2 * mib, 4 * mib, 16 * mib, 350}, // stacks and globals count
		{4 * mib, 4 * mib, 16 * mib, 300},
		{8 * mib, 8 * mib, 16 * mib, 100},   // half the floor: Go's default
		{60 * mib, 61 * mib, 16 * mib, 100}, // full caches: never below the default
		{1, 1, 16 * mib, 400},
		{0, 0, 64 * mib, 1600},
		{0, 0, 2 * mib, 100}, // a floor below Go's minimum heap: Go's default
	}
	for _, tt := range tests {
		if got := percentFor(tt.live, tt.scannable, tt.floor); got != tt.want {
			t.Errorf("percentFor(%d, %d, %d) = %d, want %d", tt.live, tt.scannable, tt.floor, got, tt.want)
		}
	}
}

// TestStartPutsTheHeapGoalAtTheFloor runs the tuner on this test's small
// heap: after a collection, Go's own heap goal must be the floor, not past it.
func TestStartPutsTheHeapGoalAtTheFloor(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	const floor = 16 << 20
	Start(floor, false)
	sample := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/heap/goal:bytes"}}
	var gogc, goal uint64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		runtime.GC()
		time.Sleep(10 * time.Millisecond) // cleanups run on a goroutine of their own
		metrics.Read(sample)
		gogc, goal = sample[0].Value.Uint64(), sample[1].Value.Uint64()
		if gogc > minPercent && goal >= floor && goal <= floor+floor/8 {
			return
		}
	}
	t.Fatalf("GOGC %d, heap goal %d bytes: want the goal at the floor, %d bytes", gogc, goal, floor)
}
