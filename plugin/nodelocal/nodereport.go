package nodelocal

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nodelocal/nodelocal/plugin/nodelocal/kubeapi"
)

// NodeAPI reads and writes one condition of a Node, and removes a taint of
// it (kubeapi.Client).
type NodeAPI interface {
	NodeCondition(ctx context.Context, node, kind string) (kubeapi.Condition, bool, error)
	SetNodeCondition(ctx context.Context, node string, cond kubeapi.Condition) error
	RemoveNodeTaint(ctx context.Context, node, key string) (bool, error)
}

// nodeConditionType is the condition node-cache sets on its Node.
const nodeConditionType = "NodeLocalDNSReady"

// startupTaintKey is the taint a node is registered with (kubelet's
// --register-with-taints) until its DNS cache serves (startup_taint).
const startupTaintKey = "node-local-dns.kubernetes.io/not-ready"

// The condition's statuses and reasons.
const (
	conditionTrue  = "True"
	conditionFalse = "False"

	reasonServing = "NodeLocalDNSServing"
	reasonStopped = "NodeLocalDNSStopped"
)

// conditionTiming is how the writer retries a failed write: from the first
// back-off, doubling up to the last; and how often it reads the condition
// again to put back what someone else changed (one GET per node every few
// minutes, not per check).
type conditionTiming struct{ firstBackoff, maxBackoff, reassert time.Duration }

var conditionTimes = conditionTiming{firstBackoff: time.Second, maxBackoff: 30 * time.Second, reassert: 5 * time.Minute}

// nodeReport owns what this process tells the API server about its node:
// the condition that says whether the node's DNS cache serves (kind; "" for
// none), and the removal of the startup taint once it does (taint; "" for
// none). It holds the state this process wants, and the one goroutine that
// writes it, retrying with back-off. Nothing else waits for the API server: a
// slow or absent one holds up neither the data path nor a stop (which waits
// for the last write at most a bounded time). Its own lock guards it.
type nodeReport struct {
	api    NodeAPI
	node   string
	kind   string
	taint  string
	timing conditionTiming

	mu      sync.Mutex
	want    *kubeapi.Condition // nil: nothing to write yet
	wanted  int                // counts the changes of want
	written int                // the last change written
	done    chan struct{}      // closed and replaced when written catches up with wanted
	wake    chan struct{}
	stop    chan struct{}
}

func newNodeReport(api NodeAPI, node, kind, taint string, timing conditionTiming) *nodeReport {
	c := &nodeReport{api: api, node: node, kind: kind, taint: taint, timing: timing,
		done: make(chan struct{}), wake: make(chan struct{}, 1), stop: make(chan struct{})}
	go c.run()
	return c
}

// serving: the cache answers on every address (True). Writes nothing when
// that is already wanted: reloads and checks repeat it.
func (c *nodeReport) serving(message string) { c.set(conditionTrue, reasonServing, message) }

// stopped: the process stops and no other instance serves (False).
func (c *nodeReport) stopped(message string) { c.set(conditionFalse, reasonStopped, message) }

func (c *nodeReport) set(status, reason, message string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.want != nil && c.want.Status == status && c.want.Reason == reason && c.want.Message == message {
		return
	}
	c.want = &kubeapi.Condition{Status: status, Reason: reason, Message: message}
	c.wanted++
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// flush waits, up to timeout, until what is wanted now is written, and
// reports whether it was.
func (c *nodeReport) flush(timeout time.Duration) bool {
	c.mu.Lock()
	if c.written == c.wanted {
		c.mu.Unlock()
		return true
	}
	done := c.done
	c.mu.Unlock()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// close ends the writer.
func (c *nodeReport) close() { close(c.stop) }

func (c *nodeReport) run() {
	backoff := c.timing.firstBackoff
	var lastErr string
	for {
		c.mu.Lock()
		want, gen := c.want, c.wanted
		c.mu.Unlock()
		wait := c.timing.reassert
		if want != nil {
			if err := c.write(*want); err != nil {
				nodeAPIFailures.Inc()
				if msg := err.Error(); msg != lastErr {
					log.Warningf("Node %s: %v; retrying every %v at most", c.node, err, c.timing.maxBackoff)
					lastErr = msg
				}
				wait, backoff = backoff, min(2*backoff, c.timing.maxBackoff)
			} else {
				lastErr, backoff = "", c.timing.firstBackoff
				c.mu.Lock()
				if c.written != gen && c.wanted == gen {
					close(c.done)
					c.done = make(chan struct{})
				}
				c.written = gen
				c.mu.Unlock()
			}
		}
		timer := time.NewTimer(wait)
		select {
		case <-c.stop:
			timer.Stop()
			return
		case <-c.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// write makes the node what want says: its condition, and once the cache
// serves, no startup taint.
func (c *nodeReport) write(want kubeapi.Condition) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if c.kind != "" {
		if err := c.writeCondition(ctx, want); err != nil {
			return fmt.Errorf("condition %s: %w", c.kind, err)
		}
	}
	if c.taint != "" && want.Status == conditionTrue {
		removed, err := c.api.RemoveNodeTaint(ctx, c.node, c.taint)
		if err != nil {
			return fmt.Errorf("remove taint %s: %w", c.taint, err)
		}
		if removed {
			log.Infof("Node %s: taint %s removed, the cache serves", c.node, c.taint)
		}
	}
	return nil
}

// writeCondition makes the node's condition want, unless it is already: the
// transition time changes with the status only, as kubelet's own
// conditions do.
func (c *nodeReport) writeCondition(ctx context.Context, want kubeapi.Condition) error {
	want.Type = c.kind
	now := time.Now().UTC().Truncate(time.Second)
	want.LastHeartbeatTime, want.LastTransitionTime = now, now
	current, found, err := c.api.NodeCondition(ctx, c.node, c.kind)
	if err != nil {
		return err
	}
	if found {
		if current.Status == want.Status && current.Reason == want.Reason && current.Message == want.Message {
			return nil
		}
		if current.Status == want.Status && !current.LastTransitionTime.IsZero() {
			want.LastTransitionTime = current.LastTransitionTime
		}
	}
	if err := c.api.SetNodeCondition(ctx, c.node, want); err != nil {
		return err
	}
	log.Infof("Node %s: condition %s is %s (%s)", c.node, c.kind, want.Status, want.Message)
	return nil
}

// errNoNodeName is a node condition or startup taint without the node's name.
var errNoNodeName = errors.New("needs the node's name in $NODE_NAME: set it from the downward API (fieldRef spec.nodeName), as the manifests' node-readiness component does")

// conditionFlushTimeout bounds how long a stop waits for the False to be
// written: the exit comes within kubelet's grace period whatever the API
// server does.
const conditionFlushTimeout = 2 * time.Second

// inClusterNodeAPI is the pod's API server client and its node's name.
func inClusterNodeAPI() (NodeAPI, string, error) {
	node := os.Getenv("NODE_NAME")
	if node == "" {
		return nil, "", errNoNodeName
	}
	api, err := kubeapi.InCluster(os.Getenv, kubeapi.ServiceAccountDir)
	return api, node, err
}

// useNodeReport starts, changes or ends the node report as cfg asks.
// Ending it leaves the condition as it was last written.
func (m *manager) useNodeReport(cfg *Config) error {
	if m.cfg != nil && m.cfg.NodeCondition == cfg.NodeCondition && m.cfg.StartupTaint == cfg.StartupTaint {
		return nil
	}
	if m.cond != nil {
		m.cond.close()
		m.cond = nil
	}
	if !cfg.NodeCondition && !cfg.StartupTaint {
		return nil
	}
	api, node, err := m.newNodeAPI()
	if err != nil {
		return fmt.Errorf("node_condition, startup_taint: %w", err)
	}
	var kind, taint string
	if cfg.NodeCondition {
		kind = nodeConditionType
	}
	if cfg.StartupTaint {
		taint = startupTaintKey
	}
	m.cond = newNodeReport(api, node, kind, taint, m.waits.condition)
	return nil
}

// servingMessage is the condition's message while the cache serves.
func servingMessage(listen []netip.AddrPort) string {
	addrs := make([]string, len(listen))
	for i, ap := range listen {
		addrs[i] = ap.String()
	}
	return "node-cache answers on " + strings.Join(addrs, ", ")
}

// reportStopped, at the end of a stop: with no other instance serving (a
// drain, a node shutdown, an uninstall), the condition goes False, and the
// exit waits for the write a bounded time; a successor keeps it True.
func (m *manager) reportStopped() {
	m.mu.Lock()
	cond := m.cond
	var listen []netip.AddrPort
	if m.cfg != nil {
		listen = m.cfg.Listen
	}
	m.mu.Unlock()
	if cond == nil {
		return
	}
	if others, err := m.peers.Remaining(listen); err != nil || others > 0 {
		return
	}
	cond.stopped("node-cache stopped and no other instance serves this node")
	if !cond.flush(conditionFlushTimeout) && cond.kind != "" {
		log.Warningf("Node %s: condition %s not written False within %v: it says True until another instance writes it", cond.node, cond.kind, conditionFlushTimeout)
	}
}
