package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"maps"
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
	sum := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		in      string
		want    []Package
		wantErr bool
	}{
		{in: "# comment\n\niptables 1.8.9-2 amd64:" + sum + " arm64:" + strings.ToUpper(sum) + "\n",
			want: []Package{{"iptables", "1.8.9-2", map[string]string{"amd64": sum, "arm64": sum}}}},
		{in: "iptables\n", wantErr: true},
		{in: "iptables 1.8.9-2\n", wantErr: true}, // no sha256
		{in: "iptables 1.8.9-2 amd64:abcd\n", wantErr: true},
		{in: "iptables 1.8.9-2 " + sum + "\n", wantErr: true}, // no architecture
	} {
		got, err := ParsePackages([]byte(tc.in))
		if (err != nil) != tc.wantErr || !slices.EqualFunc(got, tc.want, func(a, b Package) bool {
			return a.Name == b.Name && a.Version == b.Version && maps.Equal(a.SHA256, b.SHA256)
		}) {
			t.Errorf("ParsePackages(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

// fakeArchive is a downloader that serves files from a map, or fails.
type fakeArchive struct {
	dir        string
	files      map[string][]byte // by spec
	candidates int
}

func (a *fakeArchive) debDir() string { return a.dir }

func (a *fakeArchive) download(spec string) error {
	b, ok := a.files[spec]
	if !ok {
		return errors.New("E: Version not found")
	}
	name, rest, _ := strings.Cut(spec, ":")
	arch, version, _ := strings.Cut(rest, "=")
	return os.WriteFile(filepath.Join(a.dir, debFile(Package{Name: name, Version: version}, arch)), b, 0o644)
}

func (a *fakeArchive) downloadCandidate(name string) (string, error) {
	a.candidates++
	path := filepath.Join(a.dir, name+"_2.0_amd64.deb")
	return path, os.WriteFile(path, []byte("current"), 0o644)
}

// TestEveryFileIsCheckedAgainstItsPin: a downloaded or cached .deb that is
// not the pinned file fails the build, naming both sums; a pinned version the
// archive no longer serves fails a release build, and a test build takes the
// current one.
func TestEveryFileIsCheckedAgainstItsPin(t *testing.T) {
	good := []byte("the pinned package")
	p := Package{Name: "libfoo", Version: "1.0", SHA256: map[string]string{"amd64": sha256Hex(good)}}
	strict := FetchOptions{Logf: t.Logf}

	archive := &fakeArchive{dir: t.TempDir(), files: map[string][]byte{"libfoo:amd64=1.0": good}}
	if path, err := fetchPackage(archive, p, "amd64", strict); err != nil || filepath.Base(path) != "libfoo_1.0_amd64.deb" {
		t.Fatalf("the pinned file: %s, %v", path, err)
	}
	// The cached file changed since.
	os.WriteFile(filepath.Join(archive.dir, "libfoo_1.0_amd64.deb"), []byte("tampered"), 0o644)
	if _, err := fetchPackage(archive, p, "amd64", strict); err == nil || !strings.Contains(err.Error(), "is not the pinned libfoo 1.0: its sha256 is "+sha256Hex([]byte("tampered"))) {
		t.Fatalf("a tampered cached file: %v", err)
	}
	// The archive serves another file under the pinned name.
	evil := &fakeArchive{dir: t.TempDir(), files: map[string][]byte{"libfoo:amd64=1.0": []byte("evil")}}
	if _, err := fetchPackage(evil, p, "amd64", strict); err == nil || !strings.Contains(err.Error(), "the pin says "+sha256Hex(good)) {
		t.Fatalf("a file the archive changed: %v", err)
	}
	// No pin for the architecture.
	if _, err := fetchPackage(archive, p, "arm64", strict); err == nil || !strings.Contains(err.Error(), "no sha256 pinned for arm64") {
		t.Fatalf("an architecture without a pin: %v", err)
	}
	// The pinned version is gone.
	gone := &fakeArchive{dir: t.TempDir(), files: map[string][]byte{}}
	if _, err := fetchPackage(gone, p, "amd64", strict); err == nil || !strings.Contains(err.Error(), "cannot be downloaded") || gone.candidates != 0 {
		t.Fatalf("a release build with the pinned version gone: %v (%d candidates)", err, gone.candidates)
	}
	if path, err := fetchPackage(gone, p, "amd64", FetchOptions{Unpinned: true, Logf: t.Logf}); err != nil || gone.candidates != 1 || !strings.HasSuffix(path, "_2.0_amd64.deb") {
		t.Fatalf("a test build with the pinned version gone: %s, %v", path, err)
	}
}

// TestMembersOutsideTheRootAreRefused: a package whose tree would write
// outside the directory it is unpacked into is refused before unpacking.
func TestMembersOutsideTheRootAreRefused(t *testing.T) {
	type member struct {
		name, link string
		kind       byte
	}
	tarOf := func(members ...member) *bytes.Buffer {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, m := range members {
			tw.WriteHeader(&tar.Header{Name: m.name, Linkname: m.link, Typeflag: m.kind, Mode: 0o644})
		}
		tw.Close()
		return &b
	}
	dir, file := byte(tar.TypeDir), byte(tar.TypeReg)
	ok := tarOf(member{"./", "", dir}, member{"./usr/lib/", "", dir}, member{"./usr/lib/libfoo.so.1", "", file},
		member{"./lib64/ld.so", "/usr/lib/ld.so", tar.TypeSymlink}, member{"./usr/lib/libfoo.so", "./usr/lib/libfoo.so.1", tar.TypeLink})
	if _, err := checkTarMembers(ok); err != nil {
		t.Fatalf("a well-formed tree refused: %v", err)
	}
	for name, tree := range map[string]*bytes.Buffer{
		"dot-dot":             tarOf(member{"./usr/../../etc/cron.d/x", "", file}),
		"absolute":            tarOf(member{"/etc/passwd", "", file}),
		"through a symlink":   tarOf(member{"./usr/lib", "/etc", tar.TypeSymlink}, member{"./usr/lib/cron.d/x", "", file}),
		"hard link outside":   tarOf(member{"./usr/x", "../../etc/shadow", tar.TypeLink}),
		"symlink then itself": tarOf(member{"./a", "/", tar.TypeSymlink}, member{"./a/b/c", "", file}),
	} {
		if _, err := checkTarMembers(tree); !errors.Is(err, errOutsideRoot) {
			t.Errorf("%s: %v, want it refused", name, err)
		}
	}
}

// TestBuildsOwnSourcesList: the build's sources list takes the machine's
// addresses of Debian's archives, but only bookworm's suites and main, signed
// by the build's keyring only; a machine without them is told so.
func TestBuildsOwnSourcesList(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "debian.sources"), []byte("Types: deb\nURIs: http://mirror.test/debian\nSuites: bookworm bookworm-updates\nComponents: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"+
		"Types: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\nComponents: main\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "other.list"), []byte("deb [signed-by=/usr/share/keyrings/other.gpg] https://other.test/apt stable main\n"), 0o644)
	list, err := buildSourcesList([]string{dir}, []string{"/cache/keyring/a.gpg", "/cache/keyring/b.gpg"})
	if err != nil {
		t.Fatal(err)
	}
	want := "deb [signed-by=/cache/keyring/a.gpg,/cache/keyring/b.gpg] http://mirror.test/debian bookworm main\n" +
		"deb [signed-by=/cache/keyring/a.gpg,/cache/keyring/b.gpg] http://mirror.test/debian bookworm-updates main\n" +
		"deb [signed-by=/cache/keyring/a.gpg,/cache/keyring/b.gpg] http://mirror.test/debian-security bookworm-security main\n"
	if string(list) != want {
		t.Fatalf("sources list:\n%s\nwant:\n%s", list, want)
	}
	// One-line sources work the same.
	oneLine := t.TempDir()
	os.WriteFile(filepath.Join(oneLine, "sources.list"), []byte("deb http://mirror.test/debian bookworm main\ndeb [arch=amd64] http://mirror.test/debian-security bookworm-security main\n"), 0o644)
	if list, err := buildSourcesList([]string{filepath.Join(oneLine, "sources.list")}, []string{"/k.gpg"}); err != nil || !strings.Contains(string(list), "deb [signed-by=/k.gpg] http://mirror.test/debian-security bookworm-security main\n") {
		t.Fatalf("one-line sources: %v\n%s", err, list)
	}
	// A machine of a later Debian release: its archives' addresses, bookworm's suites.
	later := t.TempDir()
	os.WriteFile(filepath.Join(later, "debian.sources"), []byte("Types: deb\nURIs: http://mirror.test/debian/\nSuites: trixie\nComponents: main\n\n"+
		"Types: deb\nURIs: http://mirror.test/debian-security\nSuites: trixie-security\nComponents: main\n"), 0o644)
	if list, err := buildSourcesList([]string{later}, []string{"/k.gpg"}); err != nil || !strings.Contains(string(list), "http://mirror.test/debian/ bookworm main\n") ||
		!strings.Contains(string(list), "http://mirror.test/debian-security bookworm-security main\n") {
		t.Fatalf("a later release's sources: %v\n%s", err, list)
	}
	if _, err := buildSourcesList([]string{filepath.Join(dir, "other.list")}, nil); err == nil || !strings.Contains(err.Error(), "no source of Debian's main archive for bookworm") {
		t.Fatalf("a machine without Debian's archive: %v", err)
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
	// A Go binary with build information, for the SBOM: this test's own.
	binary, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	created := time.Unix(1_700_000_000, 0)
	var archives [2][]byte
	for i := range archives {
		img, _, err := Build(Options{Binary: binary, Ref: "example.test/node-cache:1", Version: "v", Revision: "r", Created: created,
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
		if strings.HasPrefix(name, "bin/") || strings.HasSuffix(name, "/sh") || strings.HasSuffix(name, "bin/dpkg") || strings.Contains(name, "apt") {
			t.Errorf("the image holds /%s: no shell, no package manager", name)
		}
	}
	// The package records scanners read, for the packages whose files run.
	for _, pkg := range []string{"iptables", "libc6", "libxtables12", "libip4tc2", "libnftnl11", "libmnl0"} {
		for _, f := range []string{statusDir + "/" + pkg, statusDir + "/" + pkg + ".md5sums", "usr/share/doc/" + pkg + "/copyright"} {
			if seen[f] == nil {
				t.Errorf("the image lacks /%s", f)
			}
		}
	}
	if seen[SBOMPath] == nil {
		t.Errorf("the image lacks its SBOM, /%s", SBOMPath)
	}
}
