package image

import (
	"debug/buildinfo"
	"encoding/json"
	"os"
	"slices"
	"testing"
	"time"
)

// TestSBOMListsDebianPackagesAndGoModules: the SBOM names each Debian package
// with its purl, node-cache's module, the Go standard library and every
// dependency in the binary's build information; it is the same twice.
func TestSBOMListsDebianPackagesAndGoModules(t *testing.T) {
	binary, err := os.Executable() // a Go binary with build information
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Binary: binary, Version: "1.2.3", Source: "https://github.com/nodelocal/nodelocal", Created: time.Unix(1_700_000_000, 0)}
	debs := []debPackage{{Name: "libmnl0", Version: "1.0.4-3", Arch: "amd64", Source: "libmnl"}, {Name: "libc6", Version: "2.36-9+deb12u14", Arch: "amd64", Source: "glibc"}}
	sbom, err := makeSBOM(opts, debs, "debian-12")
	if err != nil {
		t.Fatal(err)
	}
	again, _ := makeSBOM(opts, debs, "debian-12")
	if string(again) != string(sbom) {
		t.Fatal("two SBOMs of the same inputs differ")
	}
	var doc spdxDocument
	if err := json.Unmarshal(sbom, &doc); err != nil {
		t.Fatal(err)
	}
	var purls []string
	for _, p := range doc.Packages {
		for _, r := range p.ExternalRefs {
			purls = append(purls, r.Locator)
		}
	}
	for _, want := range []string{"pkg:deb/debian/libmnl0@1.0.4-3?arch=amd64&distro=debian-12&upstream=libmnl",
		"pkg:deb/debian/libc6@2.36-9+deb12u14?arch=amd64&distro=debian-12&upstream=glibc"} {
		if !slices.Contains(purls, want) {
			t.Errorf("SBOM lacks %s; has %v", want, purls)
		}
	}
	goModules := 0
	for _, p := range purls {
		if len(p) > 11 && p[:11] == "pkg:golang/" {
			goModules++
		}
	}
	info, err := buildinfo.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	if want := 2 + len(info.Deps); goModules != want {
		t.Errorf("%d Go modules in the SBOM, want %d: the binary's module, stdlib and each dependency", goModules, want)
	}
	if doc.SPDXVersion != "SPDX-2.3" || doc.DocumentNamespace == "" || doc.CreationInfo.Created != "2023-11-14T22:13:20Z" {
		t.Errorf("document header: %+v", doc)
	}
}
