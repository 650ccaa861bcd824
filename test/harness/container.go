package harness

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// runcRoot keeps the state of the harness's containers, apart from any other
// runtime's, so a later run can find what a killed run left.
const runcRoot = "/run/nodelocal-test-runc"

// Container is a container the harness runs with runc, as containerd's shim
// would: runc creates it, and signals go through `runc kill`.
type Container struct {
	ID   string
	proc *Process // `runc run` in the foreground: it ends when the container does
}

// RunContainer starts a container from spec (its Root.Path the unpacked
// image) named name on this node. It is removed when the node closes.
func (n *Node) RunContainer(name string, spec *specs.Spec) (*Container, error) {
	if _, err := exec.LookPath("runc"); err != nil {
		return nil, fmt.Errorf("runc not found: install Debian's runc package (make deps)")
	}
	id := n.prefix + name
	bundle := filepath.Join(n.Dir, "bundle-"+name)
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		return nil, err
	}
	spec.Linux.CgroupsPath = "/" + id
	config, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), config, 0o644); err != nil {
		return nil, err
	}
	proc, err := startLogged(exec.Command("runc", "--root", runcRoot, "run", "--bundle", bundle, id), n.Dir, name)
	if err != nil {
		return nil, err
	}
	c := &Container{ID: id, proc: proc}
	n.containers = append(n.containers, c)
	return c, nil
}

// Signal sends sig to the container's first process, as the runtime does on
// a pod's stop.
func (c *Container) Signal(sig syscall.Signal) error {
	if out, err := exec.Command("runc", "--root", runcRoot, "kill", c.ID, strconv.Itoa(int(sig))).CombinedOutput(); err != nil {
		return fmt.Errorf("runc kill %s %d: %v: %s", c.ID, sig, err, out)
	}
	return nil
}

// Wait waits up to timeout for the container to end and returns runc's exit
// error (the container's status).
func (c *Container) Wait(timeout time.Duration) error { return c.proc.Wait(timeout) }

// Exited reports whether the container has ended.
func (c *Container) Exited() bool { return c.proc.Exited() }

// Log is what the container printed so far.
func (c *Container) Log() string { return c.proc.Log() }

// Pid is the host pid of the container's first process, 0 if it is not running.
func (c *Container) Pid() int {
	out, err := exec.Command("runc", "--root", runcRoot, "state", c.ID).Output()
	if err != nil {
		return 0
	}
	var state specs.State
	if json.Unmarshal(out, &state) != nil {
		return 0
	}
	return state.Pid
}

// Remove kills the container if it runs and deletes its runtime state and cgroups.
func (c *Container) Remove() {
	if !c.proc.Exited() {
		c.Signal(syscall.SIGKILL)
		c.proc.Wait(10 * time.Second)
	}
	deleteContainer(c.ID)
}

func deleteContainer(id string) {
	exec.Command("runc", "--root", runcRoot, "delete", "--force", id).Run()
}

// removeStaleContainers deletes containers left by harness processes that
// died without cleaning up.
func removeStaleContainers() {
	out, err := exec.Command("runc", "--root", runcRoot, "list", "-q").Output()
	if err != nil {
		return // no runc, or no container ever ran
	}
	for _, id := range strings.Fields(string(out)) {
		if m := stalePrefix.FindStringSubmatch(id); m != nil && !ownerAlive(m[1]) {
			deleteContainer(id)
		}
	}
}

// ownerAlive: the harness process whose pid is in a name still runs.
func ownerAlive(pidText string) bool {
	pid, _ := strconv.Atoi(pidText)
	return pid == os.Getpid() || syscall.Kill(pid, 0) == nil
}
