package nodelocal

import (
	"net/netip"
	"sync"
	"time"
)

// How often the checks count foreign sockets: it reads the node's whole
// socket tables (/proc/net), which a busy node makes large.
const foreignSocketsInterval = time.Minute

// foreignCount owns the count of sockets on the cache's addresses that belong
// to no node-cache instance: a program that joined the SO_REUSEPORT group
// gets a share of the queries. They never count as a peer's, so a stop does
// not leave the interception to them. It runs outside the manager's lock;
// its own lock guards it.
type foreignCount struct {
	peers    Peers
	interval time.Duration

	mu        sync.Mutex
	count     int
	countedAt time.Time
}

// countIfDue exports, and logs when it changes, the count on listen: at the
// first check, then once an interval.
func (c *foreignCount) countIfDue(listen []netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.countedAt) < c.interval {
		return
	}
	c.countedAt = time.Now()
	n, err := c.peers.Foreign(listen)
	if err != nil {
		return
	}
	foreignSockets.Set(float64(n))
	if n != c.count {
		if n > 0 {
			log.Warningf("%d sockets on %v belong to no node-cache instance: another program shares the cache's addresses and gets some of its queries", n, listen)
		} else {
			log.Infof("No socket on %v belongs to another program any more", listen)
		}
		c.count = n
	}
}

// last is the count as last made.
func (c *foreignCount) last() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count
}
