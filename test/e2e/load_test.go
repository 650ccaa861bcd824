package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/nodelocal/nodelocal/test/harness"
)

var allTransports = harness.AllTransports

const anyTarget = harness.AnyTarget

// startLoad is the harness's mixed load, with each stream logged and a failed
// start reported on the test.
func startLoad(ctx context.Context, t *testing.T, node *harness.Node, rate int, d time.Duration) <-chan harness.LoadResults {
	t.Helper()
	return logLoad(t, node.StartMixedLoad(ctx, rate, d))
}

// startHostLoad is startLoad from the node's own network namespace.
func startHostLoad(ctx context.Context, t *testing.T, node *harness.Node, rate int, d time.Duration) <-chan harness.LoadResults {
	t.Helper()
	return logLoad(t, node.StartHostLoad(ctx, rate, d))
}

func logLoad(t *testing.T, in <-chan harness.LoadResults) <-chan harness.LoadResults {
	out := make(chan harness.LoadResults, 1)
	go func() {
		results := <-in
		for _, r := range results {
			if r.Err != nil {
				t.Error(r.Err)
				continue
			}
			t.Logf("%-4s %-13s %-14s %v", r.Client, r.Target, r.Transport, r.Result)
			for _, f := range r.Result.Failures[:min(5, len(r.Result.Failures))] {
				t.Logf("  %s sent %v into the load (connecting %v, %s, from %s)", f.Outcome,
					f.Sent.Sub(r.Result.Started).Round(time.Millisecond), f.Connecting, f.Name, f.Local)
			}
		}
		out <- results
	}()
	return out
}
