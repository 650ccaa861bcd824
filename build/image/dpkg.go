package image

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"path"
	"slices"
	"strings"
)

// The base layer's package records, as distroless images keep them: for each
// Debian package the image takes files from, its control paragraph in
// /var/lib/dpkg/status.d/NAME (marked installed), the checksums of the files
// it ships there in NAME.md5sums, and its copyright file. Scanners (syft,
// Trivy, Grype) find the packages through these records; without them the
// libraries are files no package owns, and a CVE in them goes unseen.

const statusDir = "var/lib/dpkg/status.d"

// debPackage is a Debian package the image takes files from.
type debPackage struct {
	Name, Version, Arch, Source string
	control                     []byte // the control paragraph, as dpkg-deb prints it
	shipped                     []string
	md5sums                     []string // the lines of shipped files
	copyright                   string   // its copyright file's path, if it has one
}

// packagesShipped reads each .deb and returns those that own one of the
// shipped paths (relative, as selectFiles gives them), in the order given.
func packagesShipped(debs []unpackedDeb, shipped []string) ([]debPackage, error) {
	var out []debPackage
	for _, deb := range debs {
		p, err := readDeb(deb, shipped)
		if err != nil {
			return nil, err
		}
		if len(p.shipped) > 0 {
			out = append(out, p)
		}
	}
	return out, nil
}

func readDeb(d unpackedDeb, shipped []string) (debPackage, error) {
	deb, members := d.path, d.members
	var p debPackage
	control, err := exec.Command("dpkg-deb", "-f", deb).Output()
	if err != nil {
		return p, fmt.Errorf("dpkg-deb -f %s: %w", deb, err)
	}
	p.control = control
	fields := controlFields(control)
	p.Name, p.Version, p.Arch = fields["Package"], fields["Version"], fields["Architecture"]
	p.Source, _, _ = strings.Cut(fields["Source"], " ") // "name (version)" when the versions differ
	if p.Source == "" {
		p.Source = p.Name
	}
	if p.Name == "" || p.Version == "" {
		return p, fmt.Errorf("%s: no Package or Version in its control file", deb)
	}
	for _, s := range shipped {
		if members[s] {
			p.shipped = append(p.shipped, s)
		}
	}
	if c := "usr/share/doc/" + p.Name + "/copyright"; members[c] {
		p.copyright = c
	}
	sums, err := exec.Command("dpkg-deb", "-I", deb, "md5sums").Output()
	if err != nil {
		return p, nil // a package may have no md5sums (one of symlinks only)
	}
	for _, line := range strings.Split(string(sums), "\n") {
		if _, file, ok := strings.Cut(line, "  "); ok && slices.Contains(p.shipped, file) {
			p.md5sums = append(p.md5sums, line)
		}
	}
	return p, nil
}

// controlFields reads the single-line fields of a control paragraph.
func controlFields(control []byte) map[string]string {
	fields := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(control))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, " ") {
			continue // a continuation
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	return fields
}

// statusFiles are the records of pkgs, for the base layer.
func statusFiles(pkgs []debPackage) []layerFile {
	var files []layerFile
	for _, p := range pkgs {
		var status bytes.Buffer
		for _, line := range strings.SplitAfter(string(p.control), "\n") {
			status.WriteString(line)
			if strings.HasPrefix(line, "Package:") {
				status.WriteString("Status: install ok installed\n")
			}
		}
		files = append(files, layerFile{path: path.Join(statusDir, p.Name), mode: 0o644, data: status.Bytes()})
		if len(p.md5sums) > 0 {
			files = append(files, layerFile{path: path.Join(statusDir, p.Name+".md5sums"), mode: 0o644, data: []byte(strings.Join(p.md5sums, "\n") + "\n")})
		}
	}
	return files
}
