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
	r := &nodeReport{api: api, node: node, kind: kind, taint: taint, timing: timing,
		done: make(chan struct{}), wake: make(chan struct{}, 1), stop: make(chan struct{})}
	go r.run()
	return r
}

// serving: the cache answers on every address (True). Writes nothing when
// that is already wanted: reloads and checks repeat it.
func (r *nodeReport) serving(message string) { r.set(conditionTrue, reasonServing, message) }

// stopped: the process stops and no other instance serves (False).
func (r *nodeReport) stopped(message string) { r.set(conditionFalse, reasonStopped, message) }

func (r *nodeReport) set(status, reason, message string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.want != nil && r.want.Status == status && r.want.Reason == reason && r.want.Message == message {
		return
	}
	r.want = &kubeapi.Condition{Status: status, Reason: reason, Message: message}
	r.wanted++
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// flush waits, up to timeout, until what is wanted now is written, and
// reports whether it was.
func (r *nodeReport) flush(timeout time.Duration) bool {
	r.mu.Lock()
	if r.written == r.wanted {
		r.mu.Unlock()
		return true
	}
	done := r.done
	r.mu.Unlock()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// close ends the writer.
func (r *nodeReport) close() { close(r.stop) }

func (r *nodeReport) run() {
	backoff := r.timing.firstBackoff
	var lastErr string
	for {
		r.mu.Lock()
		want, gen := r.want, r.wanted
		r.mu.Unlock()
		wait := r.timing.reassert
		if want != nil {
			if err := r.write(*want); err != nil {
				nodeAPIFailures.Inc()
				if msg := err.Error(); msg != lastErr {
					log.Warningf("Node %s: %v; retrying every %v at most", r.node, err, r.timing.maxBackoff)
					lastErr = msg
				}
				wait, backoff = backoff, min(2*backoff, r.timing.maxBackoff)
			} else {
				lastErr, backoff = "", r.timing.firstBackoff
				r.mu.Lock()
				if r.written != gen && r.wanted == gen {
					close(r.done)
					r.done = make(chan struct{})
				}
				r.written = gen
				r.mu.Unlock()
			}
		}
		timer := time.NewTimer(wait)
		select {
		case <-r.stop:
			timer.Stop()
			return
		case <-r.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// write makes the node what want says: its condition, and once the cache
// serves, no startup taint.
func (r *nodeReport) write(want kubeapi.Condition) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if r.kind != "" {
		if err := r.writeCondition(ctx, want); err != nil {
			return fmt.Errorf("condition %s: %w", r.kind, err)
		}
	}
	if r.taint != "" && want.Status == conditionTrue {
		removed, err := r.api.RemoveNodeTaint(ctx, r.node, r.taint)
		if err != nil {
			return fmt.Errorf("remove taint %s: %w", r.taint, err)
		}
		if removed {
			log.Infof("Node %s: taint %s removed, the cache serves", r.node, r.taint)
		}
	}
	return nil
}

// writeCondition makes the node's condition want, unless it is already: the
// transition time changes with the status only, as kubelet's own
// conditions do.
func (r *nodeReport) writeCondition(ctx context.Context, want kubeapi.Condition) error {
	want.Type = r.kind
	now := time.Now().UTC().Truncate(time.Second)
	want.LastHeartbeatTime, want.LastTransitionTime = now, now
	current, found, err := r.api.NodeCondition(ctx, r.node, r.kind)
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
	if err := r.api.SetNodeCondition(ctx, r.node, want); err != nil {
		return err
	}
	log.Infof("Node %s: condition %s is %s (%s)", r.node, r.kind, want.Status, want.Message)
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
	if m.report != nil {
		m.report.close()
		m.report = nil
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
	m.report = newNodeReport(api, node, kind, taint, m.waits.condition)
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

// reportStopped, at the end of a stop: with no other instance serving (the
// DaemonSet left the node, a node shutdown), the condition goes False, and
// the exit waits for the write a bounded time; a successor keeps it True.
func (m *manager) reportStopped() {
	m.mu.Lock()
	report := m.report
	var listen []netip.AddrPort
	if m.cfg != nil {
		listen = m.cfg.Listen
	}
	m.mu.Unlock()
	if report == nil {
		return
	}
	if others, err := m.peers.Remaining(listen); err != nil || others > 0 {
		return
	}
	report.stopped("node-cache stopped and no other instance serves this node")
	if !report.flush(conditionFlushTimeout) && report.kind != "" {
		log.Warningf("Node %s: condition %s not written False within %v: it says True until another instance writes it", report.node, report.kind, conditionFlushTimeout)
	}
}
