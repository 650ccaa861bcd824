package image

import (
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// The image's SBOM: an SPDX 2.3 document listing the Debian packages of the
// base layer and the Go modules node-cache was built from (its build
// information, as `go version -m` prints it). It goes into the image, at
// SBOMPath, so it travels with it to any registry. It is made from the same
// inputs as the image, so it is as reproducible.

// SBOMPath is where the image carries its SBOM.
const SBOMPath = "usr/share/doc/node-cache/sbom.spdx.json"

type spdxDocument struct {
	SPDXVersion       string             `json:"spdxVersion"`
	DataLicense       string             `json:"dataLicense"`
	SPDXID            string             `json:"SPDXID"`
	Name              string             `json:"name"`
	DocumentNamespace string             `json:"documentNamespace"`
	CreationInfo      spdxCreationInfo   `json:"creationInfo"`
	Packages          []spdxPackage      `json:"packages"`
	Relationships     []spdxRelationship `json:"relationships"`
}

type spdxCreationInfo struct {
	Created  string   `json:"created"`
	Creators []string `json:"creators"`
}

type spdxPackage struct {
	Name             string       `json:"name"`
	SPDXID           string       `json:"SPDXID"`
	VersionInfo      string       `json:"versionInfo"`
	Supplier         string       `json:"supplier"`
	DownloadLocation string       `json:"downloadLocation"`
	FilesAnalyzed    bool         `json:"filesAnalyzed"`
	ExternalRefs     []spdxExtRef `json:"externalRefs,omitempty"`
	PrimaryPurpose   string       `json:"primaryPackagePurpose,omitempty"`
}

type spdxExtRef struct {
	Category string `json:"referenceCategory"`
	Type     string `json:"referenceType"`
	Locator  string `json:"referenceLocator"`
}

type spdxRelationship struct {
	Element string `json:"spdxElementId"`
	Type    string `json:"relationshipType"`
	Related string `json:"relatedSpdxElement"`
}

// spdxIDUnsafe are the characters an SPDX identifier may not hold.
var spdxIDUnsafe = regexp.MustCompile(`[^A-Za-z0-9.-]`)

// makeSBOM lists the Debian packages (of Debian release distro, such as
// debian-12) and the Go modules of the node-cache binary at binary.
func makeSBOM(opts Options, debs []debPackage, distro string) ([]byte, error) {
	info, err := buildinfo.ReadFile(opts.Binary)
	if err != nil {
		return nil, fmt.Errorf("node-cache's build information: %w", err)
	}
	image := spdxPackage{Name: "node-cache", SPDXID: "SPDXRef-image", VersionInfo: opts.Version, Supplier: "Organization: nodelocal",
		DownloadLocation: opts.Source, PrimaryPurpose: "CONTAINER"}
	pkgs := []spdxPackage{image}
	rels := []spdxRelationship{{"SPDXRef-DOCUMENT", "DESCRIBES", image.SPDXID}}
	add := func(p spdxPackage) {
		pkgs = append(pkgs, p)
		rels = append(rels, spdxRelationship{image.SPDXID, "CONTAINS", p.SPDXID})
	}
	for _, d := range debs {
		purl := fmt.Sprintf("pkg:deb/debian/%s@%s?arch=%s&distro=%s", d.Name, url.PathEscape(d.Version), d.Arch, distro)
		if d.Source != d.Name {
			purl += "&upstream=" + d.Source
		}
		add(spdxPackage{Name: d.Name, SPDXID: "SPDXRef-deb-" + spdxIDUnsafe.ReplaceAllString(d.Name, "-"), VersionInfo: d.Version,
			Supplier: "Organization: Debian", DownloadLocation: "NOASSERTION", PrimaryPurpose: "LIBRARY",
			ExternalRefs: []spdxExtRef{{"PACKAGE-MANAGER", "purl", purl}}})
	}
	goPackage := func(path, version, purpose string) spdxPackage {
		return spdxPackage{Name: path, SPDXID: "SPDXRef-go-" + spdxIDUnsafe.ReplaceAllString(path+"-"+version, "-"), VersionInfo: version,
			Supplier: "NOASSERTION", DownloadLocation: "NOASSERTION", PrimaryPurpose: purpose,
			ExternalRefs: []spdxExtRef{{"PACKAGE-MANAGER", "purl", "pkg:golang/" + path + "@" + version}}}
	}
	add(goPackage(info.Main.Path, opts.Version, "APPLICATION"))
	add(goPackage("stdlib", strings.TrimPrefix(info.GoVersion, "go"), "LIBRARY"))
	for _, m := range info.Deps {
		if m.Replace != nil {
			m = m.Replace
		}
		add(goPackage(m.Path, m.Version, "LIBRARY"))
	}
	doc := spdxDocument{SPDXVersion: "SPDX-2.3", DataLicense: "CC0-1.0", SPDXID: "SPDXRef-DOCUMENT", Name: "node-cache " + opts.Version,
		CreationInfo: spdxCreationInfo{Created: opts.Created.UTC().Truncate(time.Second).Format(time.RFC3339), Creators: []string{"Tool: nodelocal-imagebuild"}},
		Packages:     pkgs, Relationships: rels}
	// The namespace must be unique per document: it names its content.
	content, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(content)
	doc.DocumentNamespace = opts.Source + "/spdx/node-cache-" + opts.Version + "-" + hex.EncodeToString(sum[:8])
	return json.MarshalIndent(doc, "", "  ")
}
