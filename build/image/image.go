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
	Logf     func(string, ...any)
}

// Build assembles the image.
func Build(opts Options) (v1.Image, error) {
	triplet, ok := triplets[opts.Arch]
	if !ok {
		return nil, fmt.Errorf("architecture %q: want amd64 or arm64", opts.Arch)
	}
	created := opts.Created.UTC().Truncate(time.Second)
	debs, err := fetchPackages(opts.Packages, opts.Arch, opts.CacheDir, opts.Logf)
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp("", "node-cache-image-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	if err := extractPackages(debs, root); err != nil {
		return nil, err
	}
	files, err := selectFiles(root, triplet)
	if err != nil {
		return nil, err
	}
	base, err := layerTar(root, files, nil, created)
	if err != nil {
		return nil, err
	}
	binary, err := os.ReadFile(opts.Binary)
	if err != nil {
		return nil, fmt.Errorf("node-cache binary: %w (run make build)", err)
	}
	top, err := layerTar("", nil, []layerFile{{path: "node-cache", mode: 0o755, data: binary}}, created)
	if err != nil {
		return nil, err
	}

	var pkgNames []string
	for _, p := range opts.Packages {
		pkgNames = append(pkgNames, p.Name+"="+p.Version)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, l := range []struct {
		data      []byte
		createdBy string
	}{
		{base, "iptables (legacy, nft) and what it loads, from Debian: " + strings.Join(pkgNames, " ")},
		{top, "node-cache " + opts.Version},
	} {
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(l.data)), nil },
			tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, err
		}
		img, err = mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCILayer,
			History: v1.History{Created: v1.Time{Time: created}, CreatedBy: l.createdBy}})
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
	cf.OS, cf.Architecture = "linux", opts.Arch
	cf.Config = v1.Config{
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
	}
	return mutate.ConfigFile(img, cf)
}
