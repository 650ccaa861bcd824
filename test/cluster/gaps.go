package cluster

import (
	"fmt"
	"strings"
	"time"
)

// gapSlack widens a node's gap on both sides: a query sent just before the
// old pod's SIGTERM can time out in it (2 s), and the API server stamps the
// new pod's readiness to the second.
const gapSlack = 3 * time.Second

// gap is when a node had no node-cache serving: from its old pod's SIGTERM
// (its exit, if it got none) to its new pod's readiness.
type gap struct{ from, to time.Time }

// FailuresOutsideOwnGaps lists the failed queries to target that a client
// sent outside its own node's gap in run, a rollout with maxUnavailable 1:
// each node's cache is away for a while, one node after the other, and a
// client may lose queries to the cache's address only while its own is.
func (c *Cluster) FailuresOutsideOwnGaps(run ScenarioRun, target string) ([]string, error) {
	ready, err := c.nodeCacheReadySince()
	if err != nil {
		return nil, err
	}
	gaps := map[string]gap{}
	for _, s := range run.Stops {
		from := s.Signalled
		if from.IsZero() {
			from = s.Exited
		}
		gaps[s.Node] = gap{from, ready[s.Node]}
	}
	nodes := map[string]string{}
	for _, r := range run.Load.Runs {
		if _, ok := nodes[r.Client]; !ok {
			n, err := c.nodeOf("default", r.Client)
			if err != nil {
				return nil, err
			}
			nodes[r.Client] = n.Name
		}
	}
	return outsideOwnGaps(run.Load.Runs, target, nodes, gaps), nil
}

// outsideOwnGaps: the failed queries to target from runs whose client's
// node (nodes) had no gap then.
func outsideOwnGaps(runs []LoadRun, target string, nodes map[string]string, gaps map[string]gap) []string {
	var outside []string
	for _, r := range runs {
		if r.Target != target || r.Result == nil {
			continue
		}
		node := nodes[r.Client]
		g, ok := gaps[node]
		for _, at := range r.Result.FailedAt() {
			if ok && !at.Before(g.from.Add(-gapSlack)) && !g.to.IsZero() && !at.After(g.to.Add(gapSlack)) {
				continue
			}
			where := "its node " + node + " had no gap"
			if ok {
				where = fmt.Sprintf("its node %s's gap was %s to %s", node, g.from.Format("15:04:05.0"), g.to.Format("15:04:05.0"))
			}
			outside = append(outside, fmt.Sprintf("%s %s at %s (%s)", r.Client, r.Transport, at.Format("15:04:05.0"), where))
		}
	}
	return outside
}

// nodeCacheReadySince is when each node's node-local-dns pod became Ready,
// by node.
func (c *Cluster) nodeCacheReadySince() (map[string]time.Time, error) {
	out, err := c.KubectlOutput("-n", "kube-system", "get", "pods", "-l", "k8s-app=node-local-dns", "-o",
		`jsonpath={range .items[*]}{.spec.nodeName} {.status.conditions[?(@.type=="Ready")].lastTransitionTime}{"\n"}{end}`)
	if err != nil {
		return nil, err
	}
	ready := map[string]time.Time{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		node, stamp, _ := strings.Cut(l, " ")
		t, err := time.Parse(time.RFC3339, stamp)
		if err != nil {
			return nil, fmt.Errorf("node-local-dns's readiness on %s: %q: %w", node, stamp, err)
		}
		ready[node] = t
	}
	return ready, nil
}
