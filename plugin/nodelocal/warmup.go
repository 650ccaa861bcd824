package nodelocal

import "sync"

// Warmer is a plugin that fills its block's cache from the instance serving
// on the cache's addresses (plugin/warm).
type Warmer interface{ WarmUp() }

// warmers are the Warmers of the instance's blocks, once the servers are made.
func (inst *instance) warmers() []Warmer {
	inst.mu.Lock()
	defer inst.mu.Unlock()
	var ws []Warmer
	for _, b := range inst.blocks {
		for _, h := range b.server.Handlers() {
			if w, ok := h.(Warmer); ok {
				ws = append(ws, w)
			}
		}
	}
	return ws
}

// WarmUp runs the blocks' warm-ups side by side, before this instance's
// listeners open, when another instance serves on its addresses: a surge's
// predecessor, or the old servers of a reload. It is the one moment the
// new caches can fill without asking kube-dns, and the serving instance
// answers the node meanwhile. Without one, a warm-up's queries would reach
// kube-dns through the fallback; the instance starts cold instead.
func (m *manager) WarmUp(warmers []Warmer) {
	if len(warmers) == 0 || !m.anotherServes() {
		return
	}
	var wg sync.WaitGroup
	for _, w := range warmers {
		wg.Add(1)
		go func() { defer wg.Done(); w.WarmUp() }()
	}
	wg.Wait()
}

// anotherServes: a reload's old servers, or a peer instance, listen on the
// cache's addresses.
func (m *manager) anotherServes() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.phase == phaseReloadPause {
		return true
	}
	return !m.noOthers()
}
