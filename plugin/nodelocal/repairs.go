package nodelocal

import (
	"sync"
	"time"
)

// repairLog records the repairs the checks make: each is counted in
// repairs_total, and the last one is kept for `node-cache status`. Its own
// lock guards it.
type repairLog struct {
	mu   sync.Mutex
	last string
	at   time.Time
}

// note counts a repair of kind and keeps what it did.
func (l *repairLog) note(kind, what string) {
	repairs.WithLabelValues(kind).Inc()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.last, l.at = what, time.Now()
}

// lastRepair is the last repair and when it was made; "" if none was.
func (l *repairLog) lastRepair() (string, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last, l.at
}
