package nodelocal

import (
	"testing"
)

// warmerFunc records a warm-up in the fakes' event log.
type warmerFunc func()

func (f warmerFunc) WarmUp() { f() }

// TestWarmUpOnlyFromAServingInstance: the caches fill from a surge's
// predecessor, between the start's lock and its listeners, and from a
// reload's old servers, before the reload pauses the listeners (a warm-up
// may outlast the pause's bound); with no one serving (a first start, a
// restart after a crash) a warm-up would flood kube-dns through the
// fallback, so none runs.
func TestWarmUpOnlyFromAServingInstance(t *testing.T) {
	for _, tc := range []struct {
		name   string
		peers  int
		reload bool
		want   bool
	}{
		{name: "first start", want: false},
		{name: "surge", peers: 1, want: true},
		{name: "reload", reload: true, want: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newFakeNode(t)
			n.peers.others = tc.peers
			apply := func() error { return n.mgr.Apply(orderConfig()) }
			if err := apply(); err != nil {
				t.Fatal(err)
			}
			if tc.reload {
				n.listenersUp()
			}
			warmed := 0
			w := warmerFunc(func() { warmed++; n.log.add("warm up") })
			if err := n.mgr.beforeListeners([]Warmer{w, w}, apply); err != nil {
				t.Fatal(err)
			}
			if got := warmed == 2; got != tc.want {
				t.Fatalf("warm-ups ran %d times, want them: %v", warmed, tc.want)
			}
			if tc.reload {
				inOrder(t, n.log.all(), "warm up", "warm up", "pause", "hold")
				return
			}
			n.listenersUp()
			if tc.want {
				inOrder(t, n.log.all(), "lock", "warm up", "publish", "unlock")
			}
		})
	}
}
