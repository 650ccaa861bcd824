package nodelocal

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/nodelocal/nodelocal/test/harness"
)

// TestWatchReportsLinkAndAddressEvents runs the watch and the link and address
// changes in a child process with a network namespace of its own, so the
// node's interfaces and this process's namespace stay untouched.
func TestWatchReportsLinkAndAddressEvents(t *testing.T) {
	inNewNetns(t, "TestHelperWatch", "NODELOCAL_HELPER_WATCH")
}

// inNewNetns runs the test helper in a child process with a network namespace
// of its own, with env set to 1, and fails t if the helper fails.
func inNewNetns(t *testing.T, helper, env string) {
	t.Helper()
	harness.RequirePrivileges(t)
	cmd := exec.Command(os.Args[0], "-test.run=^"+helper+"$", "-test.v")
	cmd.Env = append(os.Environ(), env+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s in a new network namespace: %v\n%s", helper, err, out)
	}
}

// TestHelperWatch is the child process: each change must be reported.
func TestHelperWatch(t *testing.T) {
	if os.Getenv("NODELOCAL_HELPER_WATCH") == "" {
		t.Skip("helper process only")
	}
	notified := make(chan struct{}, 64)
	stop := make(chan struct{})
	defer close(stop)
	links := netlinkLinks{}
	if err := links.Watch(stop, func() { notified <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("169.254.20.10")
	steps := []struct {
		what   string
		change func() error
	}{
		{"add the link", func() error { _, err := links.AddLink("watched"); return err }},
		{"add an address", func() error { return links.AddAddress("watched", ip) }},
		{"delete the address", func() error { return links.DeleteAddress("watched", ip) }},
		{"delete the link", func() error { return links.DeleteLink("watched") }},
	}
	for _, step := range steps {
		for len(notified) > 0 {
			<-notified
		}
		if err := step.change(); err != nil {
			t.Fatal(fmt.Errorf("%s: %w", step.what, err))
		}
		select {
		case <-notified:
		case <-time.After(2 * time.Second):
			t.Fatalf("no event within 2s of: %s", step.what)
		}
	}
}
