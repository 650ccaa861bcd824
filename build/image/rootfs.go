package image

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// triplets are Debian's multiarch library directories by Go architecture.
var triplets = map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}

// Programs are what node-cache execs: iptables and ip6tables of each backend
// (plugin/nodelocal's binaryName), and their iptables-restore. Everything else
// in the base layer is what they load.
var Programs = []string{"usr/sbin/iptables-legacy", "usr/sbin/ip6tables-legacy", "usr/sbin/iptables-nft", "usr/sbin/ip6tables-nft",
	"usr/sbin/iptables-legacy-restore", "usr/sbin/ip6tables-legacy-restore", "usr/sbin/iptables-nft-restore", "usr/sbin/ip6tables-nft-restore"}

// xtablesDir holds iptables' match and target modules, loaded by name at run
// time for every rule it writes or lists, kube-proxy's included: all of them
// go in.
func xtablesDir(triplet string) string { return "usr/lib/" + triplet + "/xtables" }

// selectFiles picks, in the unpacked packages under root, the programs, the
// xtables modules, the symlinks leading to them, and the closure of shared
// libraries (DT_NEEDED) and the dynamic loader they need. Paths are relative
// to root.
func selectFiles(root, triplet string) ([]string, error) {
	s := &selection{root: root, libDirs: []string{"lib/" + triplet, "usr/lib/" + triplet, "lib64", "lib", "usr/lib"}, picked: map[string]bool{}}
	for _, p := range Programs {
		if err := s.add(p, "the image's programs"); err != nil {
			return nil, err
		}
	}
	modules, err := os.ReadDir(filepath.Join(root, xtablesDir(triplet)))
	if err != nil {
		return nil, fmt.Errorf("iptables' modules: %w", err)
	}
	for _, m := range modules {
		if err := s.add(path.Join(xtablesDir(triplet), m.Name()), "the image's programs"); err != nil {
			return nil, err
		}
	}
	for len(s.elfs) > 0 {
		next := s.elfs[0]
		s.elfs = s.elfs[1:]
		if err := s.addNeeded(next); err != nil {
			return nil, err
		}
	}
	out := make([]string, 0, len(s.picked))
	for p := range s.picked {
		out = append(out, p)
	}
	slices.Sort(out)
	return out, nil
}

type selection struct {
	root    string
	libDirs []string
	picked  map[string]bool
	elfs    []string // regular files picked whose needs are not yet added
}

// add picks rel and, if it is a symlink, what it leads to.
func (s *selection) add(rel, neededBy string) error {
	for range 16 {
		if s.picked[rel] {
			return nil
		}
		fi, err := os.Lstat(filepath.Join(s.root, rel))
		if err != nil {
			return fmt.Errorf("/%s, needed by %s, is in none of the packages: add its Debian package to build/image/packages.txt", rel, neededBy)
		}
		s.picked[rel] = true
		if fi.Mode()&fs.ModeSymlink == 0 {
			if fi.Mode().IsRegular() {
				s.elfs = append(s.elfs, rel)
			}
			return nil
		}
		target, err := os.Readlink(filepath.Join(s.root, rel))
		if err != nil {
			return err
		}
		if path.IsAbs(target) {
			rel = strings.TrimPrefix(path.Clean(target), "/")
		} else {
			rel = path.Join(path.Dir(rel), target)
		}
	}
	return fmt.Errorf("/%s: too many levels of symbolic links", rel)
}

// addNeeded picks the dynamic loader and the libraries an ELF file needs.
func (s *selection) addNeeded(rel string) error {
	f, err := elf.Open(filepath.Join(s.root, rel))
	if err != nil {
		return nil // not ELF: nothing it loads
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return fmt.Errorf("/%s: read its interpreter: %w", rel, err)
		}
		if err := s.add(strings.TrimPrefix(string(bytes.TrimRight(b, "\x00")), "/"), "/"+rel); err != nil {
			return err
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("/%s: %w", rel, err)
	}
	for _, lib := range libs {
		found := ""
		for _, dir := range s.libDirs {
			if _, err := os.Lstat(filepath.Join(s.root, dir, lib)); err == nil {
				found = path.Join(dir, lib)
				break
			}
		}
		if found == "" {
			return fmt.Errorf("%s, needed by /%s, is in none of the packages: add its Debian package to build/image/packages.txt", lib, rel)
		}
		if err := s.add(found, "/"+rel); err != nil {
			return err
		}
	}
	return nil
}

// layerFile is one file (or, with link, symlink) of a layer that is not on disk.
type layerFile struct {
	path string
	mode int64
	data []byte
	link string
}

// layerTar writes a reproducible layer: the files at paths under root (or the
// given in-memory files), each parent directory, sorted, owned by root, all
// with the same modification time.
func layerTar(root string, paths []string, files []layerFile, mtime time.Time) ([]byte, error) {
	entries := map[string]*tar.Header{}
	data := map[string][]byte{}
	addDirs := func(p string) {
		for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
			entries[d+"/"] = &tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}
		}
	}
	for _, p := range paths {
		full := filepath.Join(root, p)
		fi, err := os.Lstat(full)
		if err != nil {
			return nil, err
		}
		h := &tar.Header{Name: p, Mode: int64(fi.Mode().Perm())}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			h.Typeflag, h.Mode = tar.TypeSymlink, 0o777
			if h.Linkname, err = os.Readlink(full); err != nil {
				return nil, err
			}
		case fi.Mode().IsRegular():
			h.Typeflag = tar.TypeReg
			if data[p], err = os.ReadFile(full); err != nil {
				return nil, err
			}
			h.Size = int64(len(data[p]))
		default:
			return nil, fmt.Errorf("/%s: neither a file nor a symlink", p)
		}
		entries[p] = h
		addDirs(p)
	}
	for _, f := range files {
		if f.link != "" {
			entries[f.path] = &tar.Header{Typeflag: tar.TypeSymlink, Name: f.path, Mode: 0o777, Linkname: f.link}
		} else {
			entries[f.path] = &tar.Header{Typeflag: tar.TypeReg, Name: f.path, Mode: f.mode, Size: int64(len(f.data))}
			data[f.path] = f.data
		}
		addDirs(f.path)
	}
	names := make([]string, 0, len(entries))
	for name := range entries {
		names = append(names, name)
	}
	slices.Sort(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range names {
		h := entries[name]
		h.ModTime = mtime
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data[name]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
