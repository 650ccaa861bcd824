package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path"
	"strings"
)

// unpackedDeb is a .deb unpacked into the build's directory, and the paths
// of its file system tree, as selectFiles names them.
type unpackedDeb struct {
	path    string
	members map[string]bool
}

// extractPackages unpacks the .debs into dir, as dpkg would install them,
// after checking that no member of any would land outside dir.
func extractPackages(debs []string, dir string) ([]unpackedDeb, error) {
	var out []unpackedDeb
	for _, deb := range debs {
		members, err := checkMembers(deb)
		if err != nil {
			return nil, err
		}
		if msg, err := exec.Command("dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("dpkg-deb -x %s: %v: %s", deb, err, msg)
		}
		out = append(out, unpackedDeb{path: deb, members: members})
	}
	return out, nil
}

// checkMembers reads a .deb's file system tree (dpkg-deb decompresses it)
// and returns its members.
func checkMembers(deb string) (map[string]bool, error) {
	cmd := exec.Command("dpkg-deb", "--fsys-tarfile", deb)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	members, checkErr := checkTarMembers(out)
	io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil && checkErr == nil {
		return nil, fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w", deb, err)
	}
	if checkErr != nil {
		return nil, fmt.Errorf("%s: %w", deb, checkErr)
	}
	return members, nil
}

// errOutsideRoot is a member that would be written outside the directory a
// package is unpacked into.
var errOutsideRoot = errors.New("would unpack outside its root")

// checkTarMembers refuses a member whose path leaves the root (an absolute
// path, or "..") or runs through a symbolic link an earlier member made
// (which may point anywhere); a hard link must name a path inside too. It
// returns the members' cleaned paths.
func checkTarMembers(r io.Reader) (map[string]bool, error) {
	members, links := map[string]bool{}, map[string]bool{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return members, nil
		}
		if err != nil {
			return nil, err
		}
		name, ok := insideRoot(h.Name)
		if !ok {
			return nil, fmt.Errorf("member %q %w", h.Name, errOutsideRoot)
		}
		members[name] = true
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			if links[dir] {
				return nil, fmt.Errorf("member %q runs through the symbolic link %q: it %w", h.Name, dir, errOutsideRoot)
			}
		}
		switch h.Typeflag {
		case tar.TypeSymlink:
			links[name] = true
		case tar.TypeLink:
			if _, ok := insideRoot(h.Linkname); !ok {
				return nil, fmt.Errorf("hard link %q to %q %w", h.Name, h.Linkname, errOutsideRoot)
			}
		}
	}
}

// insideRoot cleans a member's path relative to the root ("./usr/lib" is
// "usr/lib"), or reports that it leaves it.
func insideRoot(name string) (string, bool) {
	if strings.HasPrefix(name, "/") {
		return "", false
	}
	clean := path.Clean(name)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return "", false
	}
	return clean, true
}
