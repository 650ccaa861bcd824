package cluster

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// crashLoopKills is how many times the crash loop scenario kills node-cache.
const crashLoopKills = 4

// crashLoop kills node-cache's container with SIGKILL, then again each time
// kubelet starts it again (as its restart back-off allows: 10 s, 20 s, 40 s),
// kills times in all, each as soon as its container runs, before it has
// started serving; then deletes the pod, as operators end a crash loop, and
// waits until its replacement serves.
func (c *Cluster) crashLoop(kills int) error {
	last := ""
	for i := 0; i < kills; i++ {
		var id string
		err := c.waitFor(fmt.Sprintf("node-cache running again (kill %d of %d)", i+1, kills), "kubelet", 90*time.Second, func() error {
			s, err := c.NodeCacheStatus()
			if err != nil {
				return err
			}
			if s.State.Running == nil || s.ContainerID == last || (i == 0 && !s.Ready) {
				return errors.New("not running")
			}
			id = s.ContainerID
			return nil
		})
		if err != nil {
			return err
		}
		if _, err := c.Ctr("tasks", "kill", "--signal", "SIGKILL", strings.TrimPrefix(id, "containerd://")); err != nil {
			return err
		}
		last = id
	}
	if _, err := c.KubectlOutput("-n", "kube-system", "delete", "pod", "-l", "k8s-app=node-local-dns", "--wait=false"); err != nil {
		return err
	}
	time.Sleep(time.Second) // the DaemonSet controller sees the deletion
	return c.rolledOut()
}
