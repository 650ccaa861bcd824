package nodelocal

import (
	"sync"
	"time"
)

// checkLoop runs a check at once on link and address events, and with the
// rules every interval; it knows nothing of what the check does. Its own
// lock guards it.
type checkLoop struct {
	mu   sync.Mutex
	stop chan struct{} // nil when not running
	wake chan struct{}
}

func newCheckLoop() *checkLoop { return &checkLoop{wake: make(chan struct{}, 1)} }

// start runs check until halt, unless it runs already: watch calls notify on
// every event (a failure is logged: checks then come every interval only),
// and interval is read again after each periodic check.
func (l *checkLoop) start(every time.Duration, interval func() time.Duration, watch func(stop <-chan struct{}, notify func()) error, check func(withRules bool)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stop != nil {
		return
	}
	stop := make(chan struct{})
	l.stop = stop
	if err := watch(stop, l.notify); err != nil {
		log.Warningf("No netlink events (%v): the interface is checked every %v only", err, every)
	}
	go func() {
		ticker := time.NewTicker(every)
		defer ticker.Stop()
		for {
			select {
			case <-stop:
				return
			case <-l.wake:
				check(false)
			case <-ticker.C:
				check(true)
				if i := interval(); i != every {
					every = i
					ticker.Reset(i)
				}
			}
		}
	}()
}

func (l *checkLoop) notify() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// running: started and not halted.
func (l *checkLoop) running() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stop != nil
}

// halt stops the loop; a check under way finishes.
func (l *checkLoop) halt() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stop != nil {
		close(l.stop)
		l.stop = nil
	}
}
