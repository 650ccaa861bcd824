package nodelocal

import (
	"net/netip"
	"testing"
	"time"
)

// TestSlowProbeDoesNotDelayTheStop: readiness's probe (up to a second per
// address on a real node) runs outside the manager's lock, so a stop that
// begins meanwhile decides its handoff at once.
func TestSlowProbeDoesNotDelayTheStop(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	probing, release := make(chan struct{}, 1), make(chan struct{})
	defer close(release)
	n.probe = func(netip.AddrPort) error {
		select {
		case probing <- struct{}{}:
		default:
		}
		<-release
		return nil
	}
	reloaded := *cfg
	reloaded.CheckInterval = time.Minute // a reload: the cache must answer again before it is ready
	if err := n.mgr.Apply(&reloaded); err != nil {
		t.Fatal(err)
	}
	go n.mgr.check(true)
	select {
	case <-probing:
	case <-time.After(5 * time.Second):
		t.Fatal("the check never probed")
	}
	handedOff := make(chan struct{})
	go func() {
		n.mgr.HandOff()
		close(handedOff)
	}()
	select {
	case <-handedOff:
	case <-time.After(2 * time.Second):
		t.Fatal("the stop's handoff waited for a readiness probe")
	}
	if got := n.sockets.stopped; len(got) != 1 {
		t.Fatalf("TCP listeners shut %v, want the ClusterIP's at the handoff", got)
	}
	if n.mgr.Ready() {
		t.Fatal("ready after the stop began")
	}
}

// TestProbeOfAnEarlierConfigTellsNothing: a probe that was under way when
// the config changed does not make the new config's addresses ready.
func TestProbeOfAnEarlierConfigTellsNothing(t *testing.T) {
	r := &readiness{probe: func(netip.AddrPort) error { return nil }}
	r.setInPlace(true)
	config, needed := r.probeNeeded()
	if !needed {
		t.Fatal("no probe needed before the cache answered")
	}
	r.newConfig()
	r.probeAll(config, []netip.AddrPort{netip.MustParseAddrPort("169.254.20.10:53")})
	if r.ready() {
		t.Fatal("ready on a probe of the earlier config")
	}
	config, _ = r.probeNeeded()
	r.probeAll(config, []netip.AddrPort{netip.MustParseAddrPort("169.254.20.10:53")})
	if !r.ready() {
		t.Fatal("not ready after a probe of the current config answered")
	}
}
