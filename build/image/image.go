// Package image builds node-cache's container image as an OCI archive without
// a container engine: a base layer with iptables (both backends) and exactly
// the files it loads, taken from pinned Debian packages, and a layer with the
// static node-cache. Two builds from the same inputs give the same digest.
package image

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Options say what goes into the image.
type Options struct {
	Binary   string    // the static node-cache, as `make build` makes it
	Ref      string    // the image's name and tag, as the manifests use it
	Version  string    // node-cache's version (label)
	Revision string    // the commit (label)
	Source   string    // the repository (label)
	Created  time.Time // the image's creation time: the commit's, for reproducible builds
	Arch     string    // Go architecture: amd64 (arm64 if its packages can be had)
	Packages []Package
	CacheDir string // where downloaded .debs are kept
	// Unpinned lets a pinned version that Debian no longer serves be
	// replaced by the current one (tests); a release build fails instead.
	Unpinned bool
	Logf     func(string, ...any)
}

// Build assembles the image; it returns its SBOM too (the image carries it
// at SBOMPath), for a release to publish beside it.
func Build(opts Options) (v1.Image, []byte, error) {
	triplet, ok := triplets[opts.Arch]
	if !ok {
		return nil, nil, fmt.Errorf("architecture %q: want amd64 or arm64", opts.Arch)
	}
	created := opts.Created.UTC().Truncate(time.Second)
	root, debs, err := unpack(opts.Packages, opts.Arch, opts.CacheDir, FetchOptions{Unpinned: opts.Unpinned, Logf: opts.Logf})
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(root)
	files, err := selectFiles(root, triplet)
	if err != nil {
		return nil, nil, err
	}
	shipped, err := packagesShipped(debs, files)
	if err != nil {
		return nil, nil, err
	}
	for _, p := range shipped {
		if p.copyright != "" {
			files = append(files, p.copyright)
		}
	}
	base, err := layerTar(root, files, statusFiles(shipped), created)
	if err != nil {
		return nil, nil, err
	}
	binary, err := os.ReadFile(opts.Binary)
	if err != nil {
		return nil, nil, fmt.Errorf("node-cache binary: %w (run make build)", err)
	}
	sbom, err := makeSBOM(opts, shipped, debianRelease)
	if err != nil {
		return nil, nil, err
	}
	top, err := layerTar("", nil, []layerFile{{path: "node-cache", mode: 0o755, data: binary}, {path: SBOMPath, mode: 0o644, data: sbom}}, created)
	if err != nil {
		return nil, nil, err
	}

	var pkgNames []string
	for _, p := range opts.Packages {
		pkgNames = append(pkgNames, p.Name+"="+p.Version)
	}
	img, err := assemble([]Layer{
		{base, "iptables (legacy, nft) and what it loads, from Debian: " + strings.Join(pkgNames, " ")},
		{top, "node-cache " + opts.Version},
	}, v1.Config{
		Entrypoint:   []string{"/node-cache"},
		Env:          []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
		ExposedPorts: map[string]struct{}{"53/tcp": {}, "53/udp": {}},
		Labels: map[string]string{
			"org.opencontainers.image.title":       "node-cache",
			"org.opencontainers.image.description": "node-local DNS cache for Kubernetes: CoreDNS with the nodelocal plugin",
			"org.opencontainers.image.source":      opts.Source,
			"org.opencontainers.image.version":     opts.Version,
			"org.opencontainers.image.revision":    opts.Revision,
			"org.opencontainers.image.created":     created.Format(time.RFC3339),
		},
	}, opts.Arch, created)
	return img, sbom, err
}

// debianRelease is the release the pinned packages are from (packages.txt).
const debianRelease = "debian-12"

// Layer is a layer's uncompressed tar and what made it (the history entry).
type Layer struct {
	Tar       []byte
	CreatedBy string
}

// assemble makes an OCI image of layers with config.
func assemble(layers []Layer, config v1.Config, arch string, created time.Time) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, l := range layers {
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(l.Tar)), nil },
			tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, err
		}
		img, err = mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCILayer,
			History: v1.History{Created: v1.Time{Time: created}, CreatedBy: l.CreatedBy}})
		if err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: created}
	cf.OS, cf.Architecture = "linux", arch
	cf.Config = config
	return mutate.ConfigFile(img, cf)
}

// File is a file of a Simple image.
type File struct {
	Path string // without the leading slash
	Mode int64
	Data []byte
	Link string // a symlink to this target instead of a file
}

// Simple is a one-layer image of files running entrypoint: the test
// cluster's pause, kube-dns and client images.
func Simple(files []File, entrypoint []string, arch string, created time.Time) (v1.Image, error) {
	var inMemory []layerFile
	for _, f := range files {
		inMemory = append(inMemory, layerFile{path: f.Path, mode: f.Mode, data: f.Data, link: f.Link})
	}
	tar, err := layerTar("", nil, inMemory, created.UTC().Truncate(time.Second))
	if err != nil {
		return nil, err
	}
	return assemble([]Layer{{tar, "files"}}, v1.Config{Entrypoint: entrypoint, Env: []string{"PATH=/bin:/usr/bin:/usr/sbin"}}, arch, created.UTC().Truncate(time.Second))
}
