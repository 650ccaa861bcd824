package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"
)

// Stop is how one node-cache container ended during a scenario: when
// node-cache logged kubelet's SIGTERM (as kubelet stamped the line; zero if
// it got none), and when and how its process exited (containerd's task exit).
type Stop struct {
	Pod        string
	Node       string // whose containerd reported the exit
	Signalled  time.Time
	Exited     time.Time
	ExitStatus int
}

// SignalToExit is how long node-cache took from the SIGTERM to its exit.
func (s Stop) SignalToExit() time.Duration {
	if s.Signalled.IsZero() {
		return 0
	}
	return s.Exited.Sub(s.Signalled)
}

func (s Stop) String() string {
	if s.Signalled.IsZero() {
		return fmt.Sprintf("exit %d without SIGTERM", s.ExitStatus)
	}
	return fmt.Sprintf("SIGTERM→exit %v, exit %d", s.SignalToExit().Round(100*time.Millisecond), s.ExitStatus)
}

// stopWatch follows containerd's task exits of node-cache containers, and
// the logs of each node-local-dns container: those running when it starts
// and those started since (a surge's new pod that a second rollout under
// the same load replaces, a crash loop's restarts).
type stopWatch struct {
	isNodeCache func(containerID string) bool
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	mu          sync.Mutex
	containers  map[string]string    // container ID: pod
	signalled   map[string]time.Time // container ID: its SIGTERM log line
	exits       map[string]Stop      // container ID
}

func (c *Cluster) watchStops() (*stopWatch, error) {
	ctx, cancel := context.WithCancel(context.Background())
	w := &stopWatch{cancel: cancel, containers: map[string]string{}, signalled: map[string]time.Time{}, exits: map[string]Stop{},
		isNodeCache: func(id string) bool {
			for _, n := range c.Nodes() {
				if info, err := n.Ctr("containers", "info", id); err == nil {
					return strings.Contains(info, `"io.kubernetes.container.name": "node-cache"`)
				}
			}
			return false
		}}
	for _, n := range c.Nodes() {
		ctr := n.ctr("events")
		events := exec.CommandContext(ctx, ctr.Path, ctr.Args[1:]...)
		events.Env = ctr.Env
		if err := w.follow(events, func(line string) { w.taskExit(n.Name, line) }); err != nil {
			w.stop()
			return nil, err
		}
	}
	// The containers running now are followed before the event can come;
	// the watch then adds those that start later.
	const container = `{.metadata.name} {.status.containerStatuses[0].containerID}{"\n"}`
	out, err := c.KubectlOutput("-n", "kube-system", "get", "pods", "-l", "k8s-app=node-local-dns", "-o", "jsonpath={range .items[*]}"+container+"{end}")
	if err != nil {
		w.stop()
		return nil, err
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if err := w.followContainer(ctx, c, l); err != nil {
			w.stop()
			return nil, err
		}
	}
	watch := exec.CommandContext(ctx, c.Kubectl, "-n", "kube-system", "get", "pods", "-l", "k8s-app=node-local-dns", "--watch", "-o", "jsonpath="+container)
	if err := w.follow(watch, func(line string) { w.followContainer(ctx, c, line) }); err != nil {
		w.stop()
		return nil, err
	}
	return w, nil
}

// followContainer follows the logs of the container in a line "pod
// containerd://ID", unless it is followed already or has not started.
func (w *stopWatch) followContainer(ctx context.Context, c *Cluster, line string) error {
	pod, id, ok := strings.Cut(line, " containerd://")
	if !ok {
		return nil
	}
	w.mu.Lock()
	_, followed := w.containers[id]
	w.containers[id] = pod
	w.mu.Unlock()
	if followed {
		return nil
	}
	logs := exec.CommandContext(ctx, c.Kubectl, "-n", "kube-system", "logs", "--follow", "--timestamps", pod)
	return w.follow(logs, func(line string) { w.logLine(id, line) })
}

// follow runs cmd until it ends or the watch stops, and passes each line it
// prints to handle.
func (w *stopWatch) follow(cmd *exec.Cmd, handle func(string)) error {
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			handle(s.Text())
		}
		cmd.Wait()
	}()
	return nil
}

// logLine records when container logged CoreDNS's "SIGTERM: Shutting down".
func (w *stopWatch) logLine(container, line string) {
	stamp, msg, _ := strings.Cut(line, " ")
	if !strings.Contains(msg, "SIGTERM") {
		return
	}
	if t, err := time.Parse(time.RFC3339Nano, stamp); err == nil {
		w.mu.Lock()
		w.signalled[container] = t
		w.mu.Unlock()
	}
}

// taskExit records a container's exit on node from a line of ctr events:
// "2026-12-02 06:40:00.123456789 +0000 UTC k8s.io /tasks/exit {json}".
func (w *stopWatch) taskExit(node, line string) {
	before, payload, ok := strings.Cut(line, " /tasks/exit ")
	if !ok {
		return
	}
	var e struct {
		ContainerID string `json:"container_id"`
		ID          string `json:"id"`
		ExitStatus  int    `json:"exit_status"`
	}
	fields := strings.Fields(before)
	if len(fields) < 4 || json.Unmarshal([]byte(payload), &e) != nil || e.ID != e.ContainerID { // an exec'd process, not the container's
		return
	}
	t, err := time.Parse("2006-01-02 15:04:05.999999999 -0700 MST", strings.Join(fields[:4], " "))
	if err != nil {
		return
	}
	w.mu.Lock()
	_, known := w.containers[e.ContainerID]
	w.mu.Unlock()
	if !known && !w.isNodeCache(e.ContainerID) { // looked up now: kubelet removes dead containers
		return
	}
	w.mu.Lock()
	w.exits[e.ContainerID] = Stop{Node: node, Exited: t, ExitStatus: e.ExitStatus}
	w.mu.Unlock()
}

// stop ends the watch and returns how the containers it followed ended.
func (w *stopWatch) stop() []Stop {
	time.Sleep(time.Second) // the last events on their way
	w.cancel()
	w.wg.Wait()
	var stops []Stop
	for id, s := range w.exits {
		if pod, ok := w.containers[id]; ok {
			s.Pod, s.Signalled = pod, w.signalled[id]
		} else {
			s.Pod = "a container that had no time to be followed" // a crash loop kills them at their start
		}
		stops = append(stops, s)
	}
	slices.SortFunc(stops, func(a, b Stop) int { return a.Exited.Compare(b.Exited) })
	return stops
}
