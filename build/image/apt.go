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
)

// The image's packages come from Debian 12 only, verified with Debian's
// bookworm archive keys only: apt runs with a sources list and a keyring of
// the build's own, not with whatever else the machine trusts. The archive's
// addresses are the machine's (its mirror or proxy), read from its apt
// sources.

// debianSuites are the suites of the build's sources list, by archive: the
// main archive's, and the security archive's.
var debianSuites = map[string][]string{
	"main":     {"bookworm", "bookworm-updates"},
	"security": {"bookworm-security"},
}

// archiveKeys are the keyring files the build trusts, as the
// debian-archive-keyring package installs them, pinned by sha256: a machine
// whose keys differ fails the build rather than vouching for the packages.
var archiveKeys = []struct{ path, sha256 string }{
	{"/usr/share/keyrings/debian-archive-bookworm-automatic.gpg", "59dbde1397f8edc4e4aa24829ba36f9583ea5b4480091c34b89dad9e56360a19"},
	{"/usr/share/keyrings/debian-archive-bookworm-security-automatic.gpg", "8bdddebd345030721f22d0f6a7291a4791a2183621bd444cc6a683d7ade73a6e"},
	{"/usr/share/keyrings/debian-archive-bookworm-stable.gpg", "1891e84fa2e1ff6db0acfbc0e398824379b415534dd0154ecb1d21e70fe2ac62"},
}

// machineSources are where the machine's apt finds packages.
var machineSources = []string{"/etc/apt/sources.list", "/etc/apt/sources.list.d"}

// downloader fetches Debian packages into debDir.
type downloader interface {
	debDir() string
	// download fetches spec (name:arch=version).
	download(spec string) error
	// downloadCandidate fetches the version the archive serves now and
	// returns its path.
	downloadCandidate(name string) (string, error)
}

// aptArch downloads Debian packages of one architecture with apt-get, its own
// sources list, keyring and package lists (under the cache): the machine's
// own apt state and architectures are left alone.
type aptArch struct {
	arch, dir, debs string
	updated         bool
}

func (a *aptArch) debDir() string { return a.debs }

func (a *aptArch) options() []string {
	return []string{"-q", "-o", "APT::Architecture=" + a.arch, "-o", "APT::Architectures::=" + a.arch,
		"-o", "Dir::State::Lists=" + filepath.Join(a.dir, "lists"), "-o", "Dir::Cache=" + filepath.Join(a.dir, "cache"),
		"-o", "Dir::State::status=/dev/null",
		"-o", "Dir::Etc::SourceList=" + filepath.Join(a.dir, "sources.list"), "-o", "Dir::Etc::SourceParts=" + filepath.Join(a.dir, "none"),
		"-o", "Dir::Etc::Trusted=" + filepath.Join(a.dir, "none.gpg"), "-o", "Dir::Etc::TrustedParts=" + filepath.Join(a.dir, "keyring"),
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

// download fetches spec into the .deb cache, writing the build's sources
// list and keyring and reading the package lists first, once per build.
func (a *aptArch) download(spec string) error {
	if !a.updated {
		for _, d := range []string{a.debs, filepath.Join(a.dir, "lists", "partial"), filepath.Join(a.dir, "cache", "archives", "partial"), filepath.Join(a.dir, "none")} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		keyring, err := copyArchiveKeys(filepath.Join(a.dir, "keyring"))
		if err != nil {
			return err
		}
		list, err := buildSourcesList(machineSources, keyring)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(a.dir, "sources.list"), list, 0o644); err != nil {
			return err
		}
		if err := a.run(a.dir, "update"); err != nil {
			return fmt.Errorf("%w (is this a Debian machine that reaches its package archive?)", err)
		}
		a.updated = true
	}
	return a.run(a.debs, "download", spec)
}

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

// copyArchiveKeys copies the pinned keyring files into dir and returns their
// paths there.
func copyArchiveKeys(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var paths []string
	for _, key := range archiveKeys {
		b, err := os.ReadFile(key.path)
		if err != nil {
			return nil, fmt.Errorf("Debian's archive keys: %w (install the debian-archive-keyring package)", err)
		}
		if got := sha256Hex(b); got != key.sha256 {
			return nil, fmt.Errorf("Debian's archive keys: %s has sha256 %s, the build trusts only %s: "+
				"check where the machine's keyring came from before updating build/image/apt.go", key.path, got, key.sha256)
		}
		path := filepath.Join(dir, filepath.Base(key.path))
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return nil, err
		}
		paths = append(paths, path)
	}
	return paths, nil
}

// buildSourcesList writes the build's sources list (one-line format, which
// Dir::Etc::SourceList takes): the machine's addresses
// of Debian's main and security archives, the bookworm suites only, main
// only, signed by keyring only.
func buildSourcesList(sources []string, keyring []string) ([]byte, error) {
	uris, err := debianURIs(sources)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	for _, archive := range []string{"main", "security"} {
		uri, ok := uris[archive]
		if !ok {
			return nil, fmt.Errorf("no source of Debian's %s archive for bookworm in %s: the image's packages come from Debian 12", archive, strings.Join(sources, ", "))
		}
		for _, suite := range debianSuites[archive] {
			fmt.Fprintf(&b, "deb [signed-by=%s] %s %s main\n", strings.Join(keyring, ","), uri, suite)
		}
	}
	return b.Bytes(), nil
}

// archivePaths are how Debian's archives' addresses end, for a machine of
// another Debian release whose sources name other suites.
var archivePaths = map[string]string{"main": "/debian", "security": "/debian-security"}

// debianURIs finds, in the machine's apt sources (one-line .list files and
// deb822 .sources files), the address serving each archive's first suite,
// else one whose path is the archive's.
func debianURIs(sources []string) (map[string]string, error) {
	var files []string
	for _, s := range sources {
		if fi, err := os.Stat(s); err == nil && fi.IsDir() {
			list, _ := filepath.Glob(filepath.Join(s, "*.list"))
			deb822, _ := filepath.Glob(filepath.Join(s, "*.sources"))
			files = append(files, append(list, deb822...)...)
		} else if err == nil {
			files = append(files, s)
		}
	}
	uris, byPath := map[string]string{}, map[string]string{}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		entries := oneLineEntries(b)
		if strings.HasSuffix(file, ".sources") {
			entries = deb822Entries(b)
		}
		for _, e := range entries {
			if !slices.Contains(e.types, "deb") {
				continue
			}
			for archive, suites := range debianSuites {
				if _, found := uris[archive]; !found && slices.Contains(e.suites, suites[0]) {
					uris[archive] = e.uri
				}
				if _, found := byPath[archive]; !found && strings.HasSuffix(strings.TrimSuffix(e.uri, "/"), archivePaths[archive]) {
					byPath[archive] = e.uri
				}
			}
		}
	}
	for archive, uri := range byPath {
		if _, found := uris[archive]; !found {
			uris[archive] = uri
		}
	}
	return uris, nil
}

// sourceEntry is what the build reads of an apt source.
type sourceEntry struct {
	types, suites []string
	uri           string
}

// oneLineEntries reads "deb [options] URI suite [component...]" lines.
func oneLineEntries(b []byte) []sourceEntry {
	var entries []sourceEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) > 1 && strings.HasPrefix(fields[1], "[") {
			end := slices.IndexFunc(fields, func(f string) bool { return strings.HasSuffix(f, "]") })
			fields = append(fields[:1], fields[end+1:]...)
		}
		if len(fields) >= 3 {
			entries = append(entries, sourceEntry{types: fields[:1], uri: fields[1], suites: fields[2:3]})
		}
	}
	return entries
}

// deb822Entries reads the stanzas of a .sources file; one with several URIs
// counts by its first.
func deb822Entries(b []byte) []sourceEntry {
	var entries []sourceEntry
	for _, stanza := range strings.Split(string(b), "\n\n") {
		fields := map[string][]string{}
		for _, line := range strings.Split(stanza, "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			if k, v, ok := strings.Cut(line, ":"); ok {
				fields[strings.ToLower(strings.TrimSpace(k))] = strings.Fields(v)
			}
		}
		if enabled := fields["enabled"]; len(enabled) > 0 && enabled[0] == "no" {
			continue
		}
		if len(fields["uris"]) > 0 {
			entries = append(entries, sourceEntry{types: fields["types"], uri: fields["uris"][0], suites: fields["suites"]})
		}
	}
	return entries
}
