package nodelocal

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// The status endpoint: each instance answers `node-cache status` on a unix
// socket in the instance directory, <random>.status. The directory is the
// DaemonSet's hostPath, mode 0700: only root on the node and the DaemonSet's
// own containers can ask, and no network port is opened. Without the
// directory there is no endpoint.

const statusSuffix = ".status"

// statusServer serves one instance's Status. Started once, at the first
// start; it guards itself.
type statusServer struct {
	path string
	srv  *http.Server
}

// serveStatus opens this instance's socket in dir, first removing those of
// instances that died without removing theirs.
func serveStatus(dir string, status func() Status) (*statusServer, error) {
	removeDeadStatusSockets(dir)
	b := make([]byte, 8)
	rand.Read(b)
	path := filepath.Join(dir, hex.EncodeToString(b)+statusSuffix)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("status endpoint %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("status endpoint %s: %w", path, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(status())
	})
	s := &statusServer{path: path, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}
	go s.srv.Serve(ln)
	return s, nil
}

// close stops answering and removes the socket.
func (s *statusServer) close() {
	s.srv.Close()
	os.Remove(s.path)
}

// removeDeadStatusSockets removes the sockets no process listens on.
func removeDeadStatusSockets(dir string) {
	paths, _ := filepath.Glob(filepath.Join(dir, "*"+statusSuffix))
	for _, path := range paths {
		conn, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			conn.Close()
			continue
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			os.Remove(path)
		}
	}
}

// QueryStatus asks every instance with a socket in dir for its status, in
// the sockets' order; dead instances' sockets are skipped.
func QueryStatus(dir string, timeout time.Duration) ([]Status, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*"+statusSuffix))
	if err != nil {
		return nil, err
	}
	slices.Sort(paths)
	var out []Status
	var errs []error
	for _, path := range paths {
		st, err := queryOne(path, timeout)
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist) {
			continue // an instance that died, or exited meanwhile
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
			continue
		}
		out = append(out, st)
	}
	return out, errors.Join(errs...)
}

func queryOne(path string, timeout time.Duration) (Status, error) {
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
	var st Status
	resp, err := client.Get("http://node-cache/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("status endpoint answered %s", resp.Status)
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}
