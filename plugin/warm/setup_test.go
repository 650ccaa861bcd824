package warm

import (
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
)

func TestParse(t *testing.T) {
	t.Setenv(dirEnv, "")
	for _, tc := range []struct {
		input   string
		dir     string
		names   int
		within  time.Duration
		wantErr string
	}{
		{input: "warm", dir: DefaultDir, names: DefaultNames, within: DefaultWithin},
		{input: "warm /var/lib/warm", dir: "/var/lib/warm", names: DefaultNames, within: DefaultWithin},
		{input: "warm {\n names 50\n within 500ms\n}", dir: DefaultDir, names: 50, within: 500 * time.Millisecond},
		{input: "warm a b", wantErr: "Wrong argument count"},
		{input: "warm {\n names 0\n}", wantErr: "names \"0\""},
		{input: "warm {\n names x\n}", wantErr: "names \"x\""},
		{input: "warm {\n within 4s\n}", wantErr: "within \"4s\""},
		{input: "warm {\n within\n}", wantErr: "Wrong argument count"},
		{input: "warm {\n size 5\n}", wantErr: "unknown option \"size\""},
		{input: "warm\nwarm", wantErr: "given twice"},
	} {
		t.Run(tc.input, func(t *testing.T) {
			w, err := parse(caddy.NewTestController("dns", tc.input))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if w.dir != tc.dir || w.Names != tc.names || w.Within != tc.within {
				t.Errorf("got dir %s, names %d, within %v", w.dir, w.Names, w.Within)
			}
		})
	}
}

func TestDirectoryFromTheEnvironment(t *testing.T) {
	t.Setenv(dirEnv, "/tmp/node-1")
	w, err := parse(caddy.NewTestController("dns", "warm"))
	if err != nil || w.dir != "/tmp/node-1" {
		t.Fatalf("dir %q, %v; want %s's", w.dir, err, dirEnv)
	}
}
