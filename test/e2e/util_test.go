package e2e

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/nodelocal/nodelocal/test/harness"
)

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o644) }

func errAsWaitStatus(err error) (syscall.WaitStatus, bool) {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		ws, ok := ee.Sys().(syscall.WaitStatus)
		return ws, ok
	}
	return 0, false
}

func mustCorefile(t *testing.T, node *harness.Node, nodelocalOptions string) string {
	t.Helper()
	corefile, err := node.NodeCacheCorefile(nodelocalOptions)
	if err != nil {
		t.Fatal(err)
	}
	return corefile
}
