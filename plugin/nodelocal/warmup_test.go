package nodelocal

import (
	"testing"
)

// warmerFunc records a warm-up in the fakes' event log.
type warmerFunc func()

func (f warmerFunc) WarmUp() { f() }

// TestWarmUpOnlyFromAServingInstance: the caches fill from a surge's
// predecessor and from a reload's old servers, between the start's lock and
// its listeners; with no one serving (a first start, a restart after a
// crash) a warm-up would flood kube-dns through the fallback, so none runs.
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
			if err := n.mgr.Apply(orderConfig()); err != nil {
				t.Fatal(err)
			}
			if tc.reload {
				n.listenersUp()
				n.mgr.PauseForReload()
			}
			warmed := 0
			w := warmerFunc(func() { warmed++; n.log.add("warm up") })
			n.mgr.WarmUp([]Warmer{w, w})
			if got := warmed == 2; got != tc.want {
				t.Fatalf("warm-ups ran %d times, want them: %v", warmed, tc.want)
			}
			if !tc.reload {
				n.listenersUp()
				if tc.want {
					inOrder(t, n.log.all(), "lock", "warm up", "publish", "unlock")
				}
			}
		})
	}
}
