package nodelocal

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// readiness owns what the ready plugin is told: whether interception is in
// place (as the last check found), whether the cache answers on every
// intercepted address (the probe, which runs outside the manager's lock: up
// to a second per address), and whether the stop began, and when. Its own
// atomics and lock guard it: readiness is read, and the stop marked, without
// the manager's lock.
type readiness struct {
	probe func(netip.AddrPort) error

	inPlace atomic.Bool
	began   atomic.Int64 // when the stop began, in Unix nanoseconds; 0 before

	mu        sync.Mutex
	answering bool
	config    int // counts the configs: a probe of an earlier one tells nothing
}

// ready: interception is in place, the cache answers on it, and the stop has
// not begun.
func (r *readiness) ready() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inPlace.Load() && r.answering && !r.stopping()
}

// why says what keeps the instance from being ready; "" when it is.
func (r *readiness) why() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.stopping():
		return "stopping"
	case !r.inPlace.Load():
		return "the interface, its addresses or the rules are not in place, or the start's takeover is under way"
	case !r.answering:
		return "the cache has not answered a query on every intercepted address yet"
	}
	return ""
}

// beginStop marks the stop: readiness drops at once, and the stop's waits
// count from here. It reports whether the stop began now.
func (r *readiness) beginStop() bool {
	return r.began.CompareAndSwap(0, time.Now().UnixNano())
}

func (r *readiness) stopping() bool { return r.began.Load() != 0 }

// stopDeadline is when the stop's own waits must have ended.
func (r *readiness) stopDeadline() time.Time {
	return time.Unix(0, r.began.Load()).Add(stopBudget)
}

// newConfig forgets that the cache answered: the addresses may be new.
func (r *readiness) newConfig() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answering = false
	r.config++
}

// setInPlace records what the check found, and exports it.
func (r *readiness) setInPlace(inPlace bool) {
	r.inPlace.Store(inPlace)
	if inPlace {
		interceptionActive.Set(1)
	} else {
		interceptionActive.Set(0)
	}
}

// probeNeeded returns, when interception is in place and the cache has not
// answered yet, which config the probe is of.
func (r *readiness) probeNeeded() (config int, needed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.config, r.inPlace.Load() && !r.answering
}

// probeAll asks the cache on every address of config; the answer counts only
// if the config is still the current one.
func (r *readiness) probeAll(config int, listen []netip.AddrPort) {
	answering := true
	for _, ap := range listen {
		if err := r.probe(ap); err != nil {
			log.Infof("Not ready yet: no answer on %s: %v", ap, err)
			answering = false
			break
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.config == config {
		r.answering = answering
	}
}

// probeDNS asks the cache on ap for the root NS; any answer means it serves there.
func probeDNS(ap netip.AddrPort) error {
	m := new(dns.Msg)
	m.SetQuestion(".", dns.TypeNS)
	c := &dns.Client{Net: "udp", Timeout: time.Second}
	_, _, err := c.Exchange(m, net.JoinHostPort(ap.Addr().String(), fmt.Sprint(ap.Port())))
	return err
}
