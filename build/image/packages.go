package image

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// Package is one pinned Debian package.
type Package struct {
	Name, Version string
}

// ParsePackages reads the pin list: one "name version" per line, # comments.
func ParsePackages(list []byte) ([]Package, error) {
	var pkgs []Package
	sc := bufio.NewScanner(bytes.NewReader(list))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) != 2 {
			return nil, fmt.Errorf("packages line %d: %q: want \"name version\"", line, text)
		}
		pkgs = append(pkgs, Package{Name: fields[0], Version: fields[1]})
	}
	return pkgs, sc.Err()
}

// debFile is the file name apt-get download gives a package (an epoch's
// colon is written %3a).
func debFile(p Package, arch string) string {
	return fmt.Sprintf("%s_%s_%s.deb", p.Name, strings.ReplaceAll(p.Version, ":", "%3a"), arch)
}

// fetchPackages makes sure every package's .deb for arch is in cacheDir and
// returns their paths. A pinned version the archive no longer serves is
// replaced by the one it serves, with a warning through logf: the image then
// differs from the pinned one.
func fetchPackages(pkgs []Package, arch, cacheDir string, logf func(string, ...any)) ([]string, error) {
	apt := &aptArch{arch: arch, dir: filepath.Join(cacheDir, "apt-"+arch), debs: filepath.Join(cacheDir, "debs")}
	unlock, err := LockDir(cacheDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var paths []string
	for _, p := range pkgs {
		path := filepath.Join(apt.debs, debFile(p, arch))
		if _, err := os.Stat(path); err == nil {
			paths = append(paths, path)
			continue
		}
		if err := apt.download(p.Name + ":" + arch + "=" + p.Version); err != nil {
			logf("WARNING: %s %s cannot be downloaded (%v); using the version Debian serves now. "+
				"The image will not match the pinned build: update build/image/packages.txt.", p.Name, p.Version, err)
			if path, err = apt.downloadCandidate(p.Name); err != nil {
				return nil, err
			}
		}
		paths = append(paths, path)
	}
	return paths, nil
}

// aptArch downloads Debian packages of one architecture with apt-get and a
// package list of its own (under the cache), from the machine's sources: the
// machine's own apt state and architectures are left alone.
type aptArch struct {
	arch, dir, debs string
	updated         bool
}

func (a *aptArch) options() []string {
	return []string{"-q", "-o", "APT::Architecture=" + a.arch, "-o", "APT::Architectures::=" + a.arch,
		"-o", "Dir::State::Lists=" + filepath.Join(a.dir, "lists"), "-o", "Dir::Cache=" + filepath.Join(a.dir, "cache"),
		"-o", "Dir::State::status=/dev/null",
		// As root, apt drops to the _apt user, which may not write the cache.
		"-o", "APT::Sandbox::User=root"}
}

func (a *aptArch) run(dir string, args ...string) error {
	cmd := exec.Command("apt-get", append(a.options(), args...)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// download fetches spec into the .deb cache, reading the package lists first
// once per build.
func (a *aptArch) download(spec string) error {
	if !a.updated {
		for _, d := range []string{a.debs, filepath.Join(a.dir, "lists", "partial"), filepath.Join(a.dir, "cache", "archives", "partial")} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		if err := a.run(a.dir, "update"); err != nil {
			return fmt.Errorf("%w (is this a Debian machine that reaches its package archive?)", err)
		}
		a.updated = true
	}
	return a.run(a.debs, "download", spec)
}

// downloadCandidate fetches the version the archive serves now and returns its path.
func (a *aptArch) downloadCandidate(name string) (string, error) {
	pattern := filepath.Join(a.debs, name+"_*_"+a.arch+".deb")
	before, _ := filepath.Glob(pattern)
	if err := a.download(name + ":" + a.arch); err != nil {
		return "", fmt.Errorf("download Debian package %s: %w", name, err)
	}
	after, _ := filepath.Glob(pattern)
	for _, m := range after {
		if !slices.Contains(before, m) {
			return m, nil
		}
	}
	return "", fmt.Errorf("apt-get download %s wrote no new .deb into %s", name, a.debs)
}

// extractPackages unpacks the .debs into dir, as dpkg would install them.
func extractPackages(debs []string, dir string) error {
	for _, deb := range debs {
		if out, err := exec.Command("dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
			return fmt.Errorf("dpkg-deb -x %s: %v: %s", deb, err, out)
		}
	}
	return nil
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

// Unpack downloads pkgs (cached in cacheDir) and unpacks them into a new
// temporary directory, which the caller removes.
func Unpack(pkgs []Package, arch, cacheDir string, logf func(string, ...any)) (string, error) {
	debs, err := fetchPackages(pkgs, arch, cacheDir, logf)
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "debs-")
	if err != nil {
		return "", err
	}
	if err := extractPackages(debs, dir); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}
