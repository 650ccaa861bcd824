package image

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Package is one pinned Debian package: its version, and the sha256 of its
// .deb for each architecture it is pinned for.
type Package struct {
	Name, Version string
	SHA256        map[string]string // by Go architecture (amd64, arm64)
}

// ParsePackages reads the pin list: one "name version ARCH:SHA256..." per
// line, # comments.
func ParsePackages(list []byte) ([]Package, error) {
	var pkgs []Package
	sc := bufio.NewScanner(bytes.NewReader(list))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) < 3 {
			return nil, fmt.Errorf("packages line %d: %q: want \"name version arch:sha256 ...\", a sha256 for each architecture", line, text)
		}
		p := Package{Name: fields[0], Version: fields[1], SHA256: map[string]string{}}
		for _, pin := range fields[2:] {
			arch, sum, ok := strings.Cut(pin, ":")
			if b, err := hex.DecodeString(sum); !ok || err != nil || len(b) != sha256.Size {
				return nil, fmt.Errorf("packages line %d: %q: want arch:sha256 (64 hex digits)", line, pin)
			}
			p.SHA256[arch] = strings.ToLower(sum)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs, sc.Err()
}

// debFile is the file name apt-get download gives a package (an epoch's
// colon is written %3a).
func debFile(p Package, arch string) string {
	return fmt.Sprintf("%s_%s_%s.deb", p.Name, strings.ReplaceAll(p.Version, ":", "%3a"), arch)
}

// FetchOptions say how strictly the pins hold.
type FetchOptions struct {
	// Unpinned lets a build go on with the version Debian serves now when
	// a pinned version is gone from its archive (with a warning): for tests,
	// which must not fail the day Debian publishes an update. A release
	// build fails instead. A file that differs from its pin fails both.
	Unpinned bool
	Logf     func(string, ...any)
}

// fetchPackages makes sure every package's .deb for arch is in cacheDir,
// each the very file its pin names (cached ones too), and returns their paths.
func fetchPackages(pkgs []Package, arch, cacheDir string, opts FetchOptions) ([]string, error) {
	unlock, err := LockDir(cacheDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	apt := &aptArch{arch: arch, dir: filepath.Join(cacheDir, "apt-"+arch), debs: filepath.Join(cacheDir, "debs")}
	var paths []string
	for _, p := range pkgs {
		path, err := fetchPackage(apt, p, arch, opts)
		if err != nil {
			return nil, err
		}
		paths = append(paths, path)
	}
	return paths, nil
}

func fetchPackage(apt downloader, p Package, arch string, opts FetchOptions) (string, error) {
	want, pinned := p.SHA256[arch]
	if !pinned {
		return "", fmt.Errorf("%s %s has no sha256 pinned for %s: add %s:SHA256 to its line in build/image/packages.txt", p.Name, p.Version, arch, arch)
	}
	path := filepath.Join(apt.debDir(), debFile(p, arch))
	if _, err := os.Stat(path); err != nil {
		if err := apt.download(p.Name + ":" + arch + "=" + p.Version); err != nil {
			if !opts.Unpinned {
				return "", fmt.Errorf("%s %s (%s) cannot be downloaded: %w. Debian's archive keeps only current versions: "+
					"pin the one it serves now (version and sha256) in build/image/packages.txt", p.Name, p.Version, arch, err)
			}
			opts.Logf("WARNING: %s %s cannot be downloaded (%v); using the version Debian serves now, which no pin vouches for. "+
				"The image will not match the pinned build: update build/image/packages.txt.", p.Name, p.Version, err)
			return apt.downloadCandidate(p.Name)
		}
	}
	got, err := fileSHA256(path)
	if err != nil {
		return "", err
	}
	if got != want {
		return "", fmt.Errorf("%s is not the pinned %s %s: its sha256 is %s, the pin says %s. "+
			"Delete it to download it again; if the archive serves that file, find out why before pinning it", path, p.Name, p.Version, got, want)
	}
	return path, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// LockDir serialises builds that share a cache directory (apt, for one,
// refuses concurrent runs on one package list); the returned func unlocks.
func LockDir(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// Unpack downloads pkgs (cached in cacheDir, each checked against its pin)
// and unpacks them into a new temporary directory, which the caller removes.
func Unpack(pkgs []Package, arch, cacheDir string, opts FetchOptions) (string, error) {
	dir, _, err := unpack(pkgs, arch, cacheDir, opts)
	return dir, err
}

// unpack is Unpack, also returning the .debs and their members.
func unpack(pkgs []Package, arch, cacheDir string, opts FetchOptions) (string, []unpackedDeb, error) {
	debs, err := fetchPackages(pkgs, arch, cacheDir, opts)
	if err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp("", "debs-")
	if err != nil {
		return "", nil, err
	}
	unpacked, err := extractPackages(debs, dir)
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	return dir, unpacked, nil
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
