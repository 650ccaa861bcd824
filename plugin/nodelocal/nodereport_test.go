package nodelocal

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodelocal/nodelocal/plugin/nodelocal/kubeapi"
)

// fakeNodeAPI is one Node's conditions in an API server that can be down.
type fakeNodeAPI struct {
	mu     sync.Mutex
	conds  map[string]kubeapi.Condition
	writes []kubeapi.Condition
	taints []string
	down   bool
}

func (f *fakeNodeAPI) RemoveNodeTaint(_ context.Context, node, key string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return false, errAPIDown
	}
	kept := slices.DeleteFunc(slices.Clone(f.taints), func(k string) bool { return k == key })
	removed := len(kept) != len(f.taints)
	f.taints = kept
	return removed, nil
}

func (f *fakeNodeAPI) taintsLeft() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.taints)
}

var errAPIDown = errors.New("dial tcp 198.18.0.1:443: connect: connection refused")

func (f *fakeNodeAPI) NodeCondition(_ context.Context, node, kind string) (kubeapi.Condition, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return kubeapi.Condition{}, false, errAPIDown
	}
	c, ok := f.conds[kind]
	return c, ok, nil
}

func (f *fakeNodeAPI) SetNodeCondition(_ context.Context, node string, c kubeapi.Condition) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errAPIDown
	}
	if f.conds == nil {
		f.conds = map[string]kubeapi.Condition{}
	}
	f.conds[c.Type] = c
	f.writes = append(f.writes, c)
	return nil
}

func (f *fakeNodeAPI) status() (string, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conds[nodeConditionType].Status, len(f.writes)
}

func (f *fakeNodeAPI) setDown(down bool) {
	f.mu.Lock()
	f.down = down
	f.mu.Unlock()
}

// withNodeCondition turns node_condition on for the fake node, against api.
func withNodeCondition(n *fakeNode, api *fakeNodeAPI) *Config {
	n.mgr.newNodeAPI = func() (NodeAPI, string, error) { return api, "node-a", nil }
	n.mgr.waits.condition = conditionTiming{firstBackoff: 10 * time.Millisecond, maxBackoff: 50 * time.Millisecond, reassert: time.Hour}
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	cfg.NodeCondition = true
	return cfg
}

func waitForCondition(t *testing.T, api *fakeNodeAPI, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if got, _ := api.status(); got == want {
			return
		}
		if time.Now().After(deadline) {
			got, _ := api.status()
			t.Fatalf("condition %q, want %q", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestNodeConditionFollowsTheCache: True once the cache answers on every
// address, and only then; a reload writes nothing (no False in between); a
// stop that no other instance follows writes False before the exit.
func TestNodeConditionFollowsTheCache(t *testing.T) {
	n := newFakeNode(t)
	api := &fakeNodeAPI{}
	cfg := withNodeCondition(n, api)
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.mgr.check(true)
	if got, writes := api.status(); writes != 0 {
		t.Fatalf("condition %q before the listeners were up", got)
	}
	n.listenersUp()
	n.mgr.check(true)
	waitForCondition(t, api, conditionTrue)
	reloaded := *cfg
	reloaded.CheckInterval = time.Minute
	if err := n.mgr.Apply(&reloaded); err != nil {
		t.Fatal(err)
	}
	n.mgr.check(true)
	n.mgr.check(true)
	if got, writes := api.status(); got != conditionTrue || writes != 1 {
		t.Fatalf("after a reload: %q in %d writes, want True in 1", got, writes)
	}
	n.mgr.HandOff()
	n.mgr.Shutdown()
	if got, writes := api.status(); got != conditionFalse || writes != 2 {
		t.Fatalf("after a stop with no successor: %q in %d writes, want False written before Shutdown returned", got, writes)
	}
	if c := api.conds[nodeConditionType]; c.Reason != reasonStopped || !strings.Contains(c.Message, "no other instance") {
		t.Fatalf("the False condition says %+v", c)
	}
}

// TestNodeConditionStaysTrueForASuccessor: in a surge handoff the successor
// serves; the stopping instance writes nothing, so the condition never says
// False between the two.
func TestNodeConditionStaysTrueForASuccessor(t *testing.T) {
	n := newFakeNode(t)
	api := &fakeNodeAPI{}
	if err := n.mgr.Apply(withNodeCondition(n, api)); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	n.mgr.check(true)
	waitForCondition(t, api, conditionTrue)
	n.peers.mu.Lock()
	n.peers.others = 2 // the successor's sockets
	n.peers.mu.Unlock()
	n.mgr.HandOff()
	n.mgr.Shutdown()
	if got, writes := api.status(); got != conditionTrue || writes != 1 {
		t.Fatalf("after a handoff to a successor: %q in %d writes, want True in 1", got, writes)
	}
}

// TestAPIServerDownHoldsUpNothing: with the API server down, the start, a
// reload and readiness go on as usual, the stop waits for the False a
// bounded time, and the writer retries until the API server answers.
func TestAPIServerDownHoldsUpNothing(t *testing.T) {
	n := newFakeNode(t)
	api := &fakeNodeAPI{down: true}
	if err := n.mgr.Apply(withNodeCondition(n, api)); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	n.mgr.check(true)
	if !n.mgr.Ready() {
		t.Fatal("not ready while the API server is down")
	}
	time.Sleep(100 * time.Millisecond) // a few failed writes
	api.setDown(false)
	waitForCondition(t, api, conditionTrue)
	api.setDown(true)
	reloaded := *withNodeCondition(n, api)
	reloaded.CheckInterval = time.Minute // a reload while the API server is down
	if err := n.mgr.Apply(&reloaded); err != nil {
		t.Fatal(err)
	}
	n.mgr.check(true)
	if !n.mgr.Ready() {
		t.Fatal("not ready after a reload while the API server is down")
	}
	n.mgr.HandOff()
	start := time.Now()
	n.mgr.Shutdown()
	if took := time.Since(start); took > conditionFlushTimeout+time.Second {
		t.Fatalf("Shutdown took %v with the API server down, want at most the flush timeout %v", took, conditionFlushTimeout)
	}
	api.setDown(false)
	waitForCondition(t, api, conditionFalse) // written as soon as it answers, if the process still runs
}

// TestConditionTransitionTime: the transition time moves with the status
// only, as kubelet's own conditions do.
func TestConditionTransitionTime(t *testing.T) {
	then := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	api := &fakeNodeAPI{conds: map[string]kubeapi.Condition{nodeConditionType: {Type: nodeConditionType, Status: conditionTrue,
		Reason: reasonServing, Message: "node-cache answers on 169.254.20.10:53", LastTransitionTime: then}}}
	r := newNodeReport(api, "node-a", nodeConditionType, "", conditionTiming{firstBackoff: time.Millisecond, maxBackoff: time.Millisecond, reassert: time.Hour})
	defer r.close()
	r.serving("node-cache answers on 169.254.20.10:53")
	if !r.flush(time.Second) {
		t.Fatal("not written")
	}
	if _, writes := api.status(); writes != 0 {
		t.Fatal("rewrote a condition that already said the same")
	}
	r.serving("node-cache answers on 169.254.20.10:53, 198.18.0.10:53")
	r.flush(time.Second)
	if got := api.conds[nodeConditionType]; !got.LastTransitionTime.Equal(then) || got.LastHeartbeatTime.IsZero() {
		t.Fatalf("a new message moved the transition time: %+v", got)
	}
	r.stopped("stopped")
	r.flush(time.Second)
	if got := api.conds[nodeConditionType]; got.LastTransitionTime.Equal(then) || got.Status != conditionFalse {
		t.Fatalf("a new status kept the transition time: %+v", got)
	}
}

// TestStartupTaintGoesOnceTheCacheServes: with startup_taint, the node's
// startup taint goes once the cache answers, not before, and other taints
// stay; a stop does not put it back (the node readiness controller's
// continuous mode does that, from the condition).
func TestStartupTaintGoesOnceTheCacheServes(t *testing.T) {
	n := newFakeNode(t)
	api := &fakeNodeAPI{taints: []string{"dedicated", startupTaintKey}}
	cfg := withNodeCondition(n, api)
	cfg.NodeCondition, cfg.StartupTaint = false, true
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.mgr.check(true)
	time.Sleep(50 * time.Millisecond)
	if got := api.taintsLeft(); len(got) != 2 {
		t.Fatalf("taints %v before the cache served", got)
	}
	n.listenersUp()
	n.mgr.check(true)
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Equal(api.taintsLeft(), []string{"dedicated"}) {
		if time.Now().After(deadline) {
			t.Fatalf("taints %v once serving, want the other one only", api.taintsLeft())
		}
		time.Sleep(5 * time.Millisecond)
	}
	n.mgr.HandOff()
	n.mgr.Shutdown()
	if got, writes := api.status(); got != "" || writes != 0 || !slices.Equal(api.taintsLeft(), []string{"dedicated"}) {
		t.Fatalf("condition %q in %d writes, taints %v: want no condition and the taint gone for good", got, writes, api.taintsLeft())
	}
}
