package nodelocal

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// instanceRegistry is how node-cache instances recognise each other: a host
// directory that only the DaemonSet mounts (hostPath /run/node-local-dns,
// mode 0700). Any process in the node's network namespace can bind an
// abstract socket or join the SO_REUSEPORT group on 169.254.20.10:53, so
// neither proves a peer; a file in that directory does. It holds
//
//	instance.lock     flock'ed: the node-wide instance lock
//	<id>.alive        flock'ed by instance <id> for its whole life
//	<id>.sockets      the inodes of <id>'s listening sockets
//
// The kernel releases both locks when the process dies, so a dead
// instance's files are recognised (and removed) by the next reader.
type instanceRegistry struct {
	dir string

	mu      sync.Mutex
	id      string
	alive   *os.File // our <id>.alive, locked until exit
	written string   // what our <id>.sockets holds
}

// DefaultStateDir is where the DaemonSet mounts the registry directory.
const DefaultStateDir = "/run/node-local-dns"

// stateDirEnv overrides DefaultStateDir (the simulated nodes' tests give each
// node its own).
const stateDirEnv = "NODELOCAL_STATE_DIR"

// stateDir is the registry directory of this process, "" when it is not
// mounted (upstream's manifest, node-cache run by hand).
func stateDir() string {
	dir := DefaultStateDir
	if d := os.Getenv(stateDirEnv); d != "" {
		dir = d
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return ""
	}
	return dir
}

// open keeps everyone else out of the directory. kubelet makes it 0755.
func (r *instanceRegistry) open() error {
	if err := os.Chmod(r.dir, 0o700); err != nil {
		return fmt.Errorf("instance directory %s: %w", r.dir, err)
	}
	return nil
}

// lock takes the node-wide instance lock, waiting up to timeout.
func (r *instanceRegistry) lock(timeout time.Duration) (func(), error) {
	path := filepath.Join(r.dir, "instance.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("instance lock %s: %w", path, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("instance lock %s: %w", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// publish records inodes as this instance's listening sockets.
func (r *instanceRegistry) publish(inodes []string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.alive == nil {
		if err := r.register(); err != nil {
			return err
		}
	}
	slices.Sort(inodes)
	content := strings.Join(inodes, "\n") + "\n"
	if content == r.written {
		return nil
	}
	path := filepath.Join(r.dir, r.id+".sockets")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		return fmt.Errorf("publish the listening sockets: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("publish the listening sockets: %w", err)
	}
	r.written = content
	return nil
}

// register makes this instance's id and takes its liveness lock.
func (r *instanceRegistry) register() error {
	b := make([]byte, 8)
	rand.Read(b)
	id := hex.EncodeToString(b)
	f, err := os.OpenFile(filepath.Join(r.dir, id+".alive"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("register the instance: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return fmt.Errorf("register the instance: %w", err)
	}
	r.id, r.alive = id, f
	return nil
}

// peerSockets are the inodes that live instances other than this one
// published. A dead instance's files are removed.
func (r *instanceRegistry) peerSockets() (map[string]bool, error) {
	r.mu.Lock()
	self := r.id
	r.mu.Unlock()
	published, err := filepath.Glob(filepath.Join(r.dir, "*.sockets"))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, path := range published {
		id := strings.TrimSuffix(filepath.Base(path), ".sockets")
		if id == self {
			continue
		}
		if !r.isAlive(id) {
			os.Remove(path)
			os.Remove(filepath.Join(r.dir, id+".alive"))
			continue
		}
		content, err := os.ReadFile(path)
		if err != nil {
			continue // removed as that instance exited
		}
		for _, inode := range strings.Fields(string(content)) {
			inodes[inode] = true
		}
	}
	return inodes, nil
}

// isAlive reports whether instance id still holds its liveness lock.
func (r *instanceRegistry) isAlive(id string) bool {
	f, err := os.Open(filepath.Join(r.dir, id+".alive"))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return true // held: that process lives
	}
	return false
}
