package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

func TestParsePackages(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []Package
		wantErr bool
	}{
		{in: "# comment\n\niptables 1.8.9-2\nlibc6 2.36-9+deb12u14\n", want: []Package{{"iptables", "1.8.9-2"}, {"libc6", "2.36-9+deb12u14"}}},
		{in: "iptables\n", wantErr: true},
		{in: "iptables 1.8.9-2 extra\n", wantErr: true},
	} {
		got, err := ParsePackages([]byte(tc.in))
		if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
			t.Errorf("ParsePackages(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestBuildIsReproducible builds the image twice from the pinned packages and
// the same binary: same digest, same archive bytes; and the base layer holds
// the programs node-cache execs and the loader they need.
func TestBuildIsReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads Debian packages: not in -short mode")
	}
	for _, tool := range []string{"apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s missing: the image is built from Debian's packages", tool)
			}
			t.Skipf("%s missing: the image is built from Debian's packages", tool)
		}
	}
	list, err := os.ReadFile("packages.txt")
	if err != nil {
		t.Fatal(err)
	}
	pkgs, err := ParsePackages(list)
	if err != nil {
		t.Fatal(err)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	binary := filepath.Join(t.TempDir(), "node-cache")
	if err := os.WriteFile(binary, []byte("not really node-cache"), 0o755); err != nil {
		t.Fatal(err)
	}
	created := time.Unix(1_700_000_000, 0)
	var archives [2][]byte
	for i := range archives {
		img, err := Build(Options{Binary: binary, Ref: "example.test/node-cache:1", Version: "v", Revision: "r", Created: created,
			Arch: "amd64", Packages: pkgs, CacheDir: filepath.Join(cache, "nodelocal"), Logf: t.Logf})
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := WriteArchive(&buf, img, "example.test/node-cache:1", created); err != nil {
			t.Fatal(err)
		}
		archives[i] = buf.Bytes()
		if i == 0 {
			assertFiles(t, img, created)
		}
	}
	if !bytes.Equal(archives[0], archives[1]) {
		t.Fatal("two builds from the same inputs wrote different archives")
	}
}

// assertFiles checks the image's files: the programs, the loader, the
// binary, and for every entry root ownership and the fixed time.
func assertFiles(t *testing.T, img v1.Image, created time.Time) {
	t.Helper()
	flat := mutate.Extract(img)
	defer flat.Close()
	tr := tar.NewReader(flat)
	seen := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seen[h.Name] = h
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(created) {
			t.Errorf("%s: owner %d:%d, time %v; want 0:0 at %v", h.Name, h.Uid, h.Gid, h.ModTime, created)
		}
	}
	for _, want := range append(slices.Clone(Programs), "usr/sbin/xtables-legacy-multi", "usr/sbin/xtables-nft-multi",
		"lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6", "usr/lib/x86_64-linux-gnu/xtables/libxt_socket.so") {
		if seen[want] == nil {
			t.Errorf("the image lacks /%s", want)
		}
	}
	if h := seen["node-cache"]; h == nil || h.Mode != 0o755 {
		t.Errorf("/node-cache: %+v, want an executable file", h)
	}
	for name := range seen {
		if strings.HasPrefix(name, "bin/") || strings.HasSuffix(name, "/sh") || strings.Contains(name, "dpkg") || strings.Contains(name, "apt") {
			t.Errorf("the image holds /%s: no shell, no package manager", name)
		}
	}
}
