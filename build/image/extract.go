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

// extractPackages unpacks the .debs into dir, as dpkg would install them,
// after checking that no member of any would land outside dir.
func extractPackages(debs []string, dir string) error {
	for _, deb := range debs {
		if err := checkMembers(deb); err != nil {
			return err
		}
		if out, err := exec.Command("dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
			return fmt.Errorf("dpkg-deb -x %s: %v: %s", deb, err, out)
		}
	}
	return nil
}

// checkMembers reads a .deb's file system tree (dpkg-deb decompresses it).
func checkMembers(deb string) error {
	cmd := exec.Command("dpkg-deb", "--fsys-tarfile", deb)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	checkErr := checkTarMembers(out)
	io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil && checkErr == nil {
		return fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w", deb, err)
	}
	if checkErr != nil {
		return fmt.Errorf("%s: %w", deb, checkErr)
	}
	return nil
}

// errOutsideRoot is a member that would be written outside the directory a
// package is unpacked into.
var errOutsideRoot = errors.New("would unpack outside its root")

// checkTarMembers refuses a member whose path leaves the root (an absolute
// path, or "..") or runs through a symbolic link an earlier member made
// (which may point anywhere); a hard link must name a path inside too.
func checkTarMembers(r io.Reader) error {
	links := map[string]bool{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name, ok := insideRoot(h.Name)
		if !ok {
			return fmt.Errorf("member %q %w", h.Name, errOutsideRoot)
		}
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			if links[dir] {
				return fmt.Errorf("member %q runs through the symbolic link %q: it %w", h.Name, dir, errOutsideRoot)
			}
		}
		switch h.Typeflag {
		case tar.TypeSymlink:
			links[name] = true
		case tar.TypeLink:
			if _, ok := insideRoot(h.Linkname); !ok {
				return fmt.Errorf("hard link %q to %q %w", h.Name, h.Linkname, errOutsideRoot)
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
