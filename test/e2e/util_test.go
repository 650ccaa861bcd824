package e2e

import (
	"errors"
	"os/exec"
	"syscall"
	"testing"

	"github.com/nodelocal/nodelocal/test/harness"
)

func errAsWaitStatus(err error) (syscall.WaitStatus, bool) {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		ws, ok := ee.Sys().(syscall.WaitStatus)
		return ws, ok
	}
	return 0, false
}

func mustTemplate(t *testing.T, node *harness.Node, nodelocalOptions string) string {
	t.Helper()
	corefile, err := node.NodeCacheTemplate(nodelocalOptions)
	if err != nil {
		t.Fatal(err)
	}
	return corefile
}
