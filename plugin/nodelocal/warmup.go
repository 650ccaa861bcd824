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

// beforeListeners runs as each start's servers are made, before their
// listeners open: the caches warm up from the instance serving now, then a
// reload pauses the listeners while its new servers take them over (until
// the old servers have stopped, their OnShutdown, no new TCP connection is
// accepted), and the config applies. The warm-up comes first: it may take
// up to its bound (2 s by default), longer than a pause may last
// (maxReloadPause), after which the old servers would accept connections
// again, only to close them as they stop.
func (m *manager) beforeListeners(warmers []Warmer, apply func() error) error {
	m.WarmUp(warmers)
	m.PauseForReload()
	return apply()
}

// WarmUp runs the blocks' warm-ups side by side when another instance
// serves on the cache's addresses: a surge's predecessor, or this process's
// own servers, which a reload replaces. It is the one moment the new caches
// can fill without asking kube-dns, and the serving instance answers the
// node meanwhile. Without one, a warm-up's queries would reach kube-dns
// through the fallback; the instance starts cold instead.
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

// anotherServes: this process's servers (the start is a reload's), or a
// peer instance, listen on the cache's addresses.
func (m *manager) anotherServes() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.phase.ownsRules() || !m.noOthers()
}
