package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nodelocal/nodelocal/test/dnsload"
)

// oomLimit is the memory limit the OOM scenario gives node-cache, its
// DaemonSet's request: the large answers fill it in seconds.
const oomLimit = "64Mi"

// fillName is the name the OOM scenario fills the cache with (a unique
// label each query, a BigAnswerBytes answer each).
const fillName = dnsload.UniqueToken + ".fill." + ExternalDomain

// Termination is how a container's last run ended.
type Termination struct {
	Reason     string    `json:"reason"`
	ExitCode   int       `json:"exitCode"`
	StartedAt  time.Time `json:"startedAt"`
	FinishedAt time.Time `json:"finishedAt"`
}

// ContainerStatus is what kubelet reports of the node-cache container.
type ContainerStatus struct {
	ContainerID  string `json:"containerID"`
	RestartCount int    `json:"restartCount"`
	Ready        bool   `json:"ready"`
	State        struct {
		Running *struct{} `json:"running"`
	} `json:"state"`
	LastState struct {
		Terminated *Termination `json:"terminated"`
	} `json:"lastState"`
}

// NodeCacheStatus is the status of the node-cache container of the node's
// node-local-dns pod.
func (c *Cluster) NodeCacheStatus() (ContainerStatus, error) {
	var s ContainerStatus
	out, err := c.KubectlOutput("-n", "kube-system", "get", "pods", "-l", "k8s-app=node-local-dns", "-o", "jsonpath={.items[0].status.containerStatuses[0]}")
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		return s, fmt.Errorf("node-cache's container status %q: %v", out, err)
	}
	return s, nil
}

// fillUntilOOMKilled fills node-cache's cache from client with large answers
// (unique names over TCP, so they are cached whole) until the kernel kills
// node-cache at its memory limit, then waits until kubelet has restarted it
// and it is ready.
func (c *Cluster) fillUntilOOMKilled(client string) error {
	before, err := c.NodeCacheStatus()
	if err != nil {
		return err
	}
	filled := make(chan error, 1)
	go func() {
		// It stops at the kill (its connections close): the restarted
		// node-cache must not be filled again. Bounded anyway: 3 times the
		// memory limit's worth of answers.
		count := 3 * 64 << 20 / BigAnswerBytes
		_, err := c.Exec(client, "dnsload", "-target", "169.254.20.10:53", "-transport", "tcp-persistent", "-queries", "TXT:"+fillName,
			"-rate", "400", "-count", strconv.Itoa(count), "-duration", "50s", "-timeout", "2s", "-workers", "8", "-stop-on-failure")
		filled <- err
	}()
	var killed *Termination
	err = c.waitFor("the kernel killing node-cache at its memory limit", "kubelet", 60*time.Second, func() error {
		s, err := c.NodeCacheStatus()
		if err != nil {
			return err
		}
		if s.RestartCount == before.RestartCount || s.LastState.Terminated == nil {
			return fmt.Errorf("%d restarts", s.RestartCount)
		}
		killed = s.LastState.Terminated
		return nil
	})
	<-filled // dnsload exits 1 when a query failed, as the kill's did
	if err != nil {
		return err
	}
	if killed.Reason != "OOMKilled" {
		return fmt.Errorf("node-cache ended %s (exit code %d), want OOMKilled", killed.Reason, killed.ExitCode)
	}
	return c.waitFor("node-cache ready after its restart", "kubelet", 60*time.Second, func() error {
		s, err := c.NodeCacheStatus()
		if err == nil && !s.Ready {
			err = errors.New("not ready")
		}
		return err
	})
}
