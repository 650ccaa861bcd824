package nodelocal

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestStatusTellsWhatIsNotAsDesired: a serving instance reports every rule
// in place and no problem; a rule and an address deleted by hand are
// reported, before the check puts them back.
func TestStatusTellsWhatIsNotAsDesired(t *testing.T) {
	n := newFakeNode(t)
	cfg := testConfig("169.254.20.10:53", "198.18.0.10:53")
	if err := n.mgr.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	n.listenersUp()
	st := n.mgr.Status()
	// iptables' 24, and the fallback table's 12 (the fake kernel refuses owned tables)
	if st.Phase != "serving" || !st.Ready || len(st.Problems) != 0 || len(st.Rules) != 24+12 || slices.ContainsFunc(st.Rules, func(r RuleStatus) bool { return !r.InPlace }) {
		t.Fatalf("status of a serving instance: %+v", st)
	}
	if got := st.Interface.Addresses; !slices.Equal(got, []string{"169.254.20.10", "198.18.0.10"}) {
		t.Fatalf("addresses %v", got)
	}
	// By hand: the ClusterIP's UDP interception and the link-local address go.
	for _, r := range n.tables[IPv4].rules {
		if ruleEvent(r) == "intercept udp 198.18.0.10" {
			_ = n.tables[IPv4].Delete(r)
			break
		}
	}
	_ = n.links.DeleteAddress("nodelocaldns", n.mgr.cfg.Listen[0].Addr())
	st = n.mgr.Status()
	var missing []string
	for _, r := range st.Rules {
		if !r.InPlace {
			missing = append(missing, r.Rule)
		}
	}
	if len(missing) != 1 || !strings.Contains(missing[0], "-d 198.18.0.10/32 -p udp") {
		t.Fatalf("missing rules %v, want the ClusterIP's UDP interception", missing)
	}
	if !slices.Equal(st.Interface.Missing, []string{"169.254.20.10"}) {
		t.Fatalf("missing addresses %v", st.Interface.Missing)
	}
	if len(st.Problems) != 2 {
		t.Fatalf("problems %q, want the rule and the address", st.Problems)
	}
	n.mgr.check(true)
	if st = n.mgr.Status(); len(st.Problems) != 0 || st.LastRepair == nil {
		t.Fatalf("after the check: problems %q, last repair %v", st.Problems, st.LastRepair)
	}
}

// TestStatusWaitsBoundedForTheLock: a start waiting for the instance lock
// holds the manager's; status says so instead of hanging.
func TestStatusWaitsBoundedForTheLock(t *testing.T) {
	n := newFakeNode(t)
	n.mgr.mu.Lock()
	defer n.mgr.mu.Unlock()
	start := time.Now()
	st := n.mgr.Status()
	if st.Phase != "busy" || len(st.Problems) != 1 || time.Since(start) > statusLockWait+time.Second {
		t.Fatalf("status while the lock is held: %+v after %v", st, time.Since(start))
	}
}

// TestStatusCommand: the command asks every live instance in the directory,
// skips a dead one's socket, prints text or JSON, and exits 0 only when no
// instance reports a problem.
func TestStatusCommand(t *testing.T) {
	dir := t.TempDir()
	// A dead instance's socket: the file stays, nothing listens.
	dead, err := net.Listen("unix", filepath.Join(dir, "dead"+statusSuffix))
	if err != nil {
		t.Fatal(err)
	}
	dead.(*net.UnixListener).SetUnlinkOnClose(false)
	dead.Close()

	status := Status{Version: "test", Phase: "serving", Ready: true, Backend: "nft", SocketMatch: true,
		Interface: InterfaceStatus{Name: "nodelocaldns", Managed: true, Addresses: []string{"169.254.20.10"}},
		Rules:     []RuleStatus{{Rule: "-t raw -A PREROUTING -d 169.254.20.10/32", InPlace: true}}}
	var current atomic.Pointer[Status] // the server's goroutine reads it
	current.Store(&status)
	srv, err := serveStatus(dir, func() Status { return *current.Load() })
	if err != nil {
		t.Fatal(err)
	}
	defer srv.close()
	if _, err := os.Stat(filepath.Join(dir, "dead"+statusSuffix)); !os.IsNotExist(err) {
		t.Fatalf("the dead instance's socket is still there: %v", err)
	}
	if fi, err := os.Stat(srv.path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("status socket %s: %v %v, want mode 0600", srv.path, fi.Mode(), err)
	}

	var out, errOut bytes.Buffer
	if code := StatusCommand([]string{"-dir", dir}, &out, &errOut); code != statusOK {
		t.Fatalf("exit %d for a serving instance: %s%s", code, out.String(), errOut.String())
	}
	for _, want := range []string{"phase:       serving", "ready:       yes", "rules:       1 of 1 in place, 0 extra"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("text output lacks %q:\n%s", want, out.String())
		}
	}

	failing := status
	failing.Ready, failing.NotReady = false, "stopping"
	failing.Rules = []RuleStatus{{Rule: status.Rules[0].Rule, InPlace: false}}
	failing.Problems = []string{"not ready: stopping", "1 of 1 rules missing"}
	current.Store(&failing)
	out.Reset()
	if code := StatusCommand([]string{"-dir", dir, "-o", "json"}, &out, &errOut); code != statusProblems {
		t.Fatalf("exit %d with problems, want %d", code, statusProblems)
	}
	var got struct{ Instances []Status }
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || len(got.Instances) != 1 || got.Instances[0].Rules[0].InPlace {
		t.Fatalf("JSON output %s: %v", out.String(), err)
	}

	if code := StatusCommand([]string{"-dir", t.TempDir()}, &out, &errOut); code != statusNoAnswer {
		t.Fatalf("exit %d with no instance, want %d", code, statusNoAnswer)
	}
}
