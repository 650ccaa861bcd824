// Command imagebuild writes node-cache's container image as an OCI archive
// (`make image`), with no container engine: see package build/image.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/nodelocal/nodelocal/build/image"
)

func main() {
	binary := flag.String("binary", "bin/node-cache", "the static node-cache to put in the image")
	ref := flag.String("image", "", "the image's name and tag (the Makefile's IMAGE)")
	out := flag.String("out", "bin/node-cache-image.tar", "where to write the OCI archive")
	version := flag.String("version", "dev", "node-cache's version, for the image's labels")
	revision := flag.String("revision", "", "the commit, for the image's labels")
	created := flag.String("created", "0", "the image's creation time in Unix seconds (the commit's, for reproducible builds)")
	arch := flag.String("arch", "amd64", "the image's architecture")
	pins := flag.String("packages", "build/image/packages.txt", "the pinned Debian packages of the base layer")
	unpinned := flag.Bool("unpinned", false, "when Debian no longer serves a pinned version, take the one it serves (for tests); without it the build fails")
	flag.Parse()
	if err := run(*binary, *ref, *out, *version, *revision, *created, *arch, *pins, *unpinned); err != nil {
		fmt.Fprintf(os.Stderr, "imagebuild: %v\n", err)
		os.Exit(1)
	}
}

func run(binary, ref, out, version, revision, created, arch, pins string, unpinned bool) error {
	if ref == "" {
		return fmt.Errorf("-image is required (for example ghcr.io/nodelocal/node-cache:0.1.0)")
	}
	secs, err := strconv.ParseInt(created, 10, 64)
	if err != nil {
		return fmt.Errorf("-created %q: want Unix seconds", created)
	}
	list, err := os.ReadFile(pins)
	if err != nil {
		return err
	}
	pkgs, err := image.ParsePackages(list)
	if err != nil {
		return fmt.Errorf("%s: %w", pins, err)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return err
	}
	mtime := time.Unix(secs, 0).UTC()
	img, sbom, err := image.Build(image.Options{
		Binary: binary, Ref: ref, Version: version, Revision: revision, Source: "https://github.com/nodelocal/nodelocal",
		Created: mtime, Arch: arch, Packages: pkgs, CacheDir: filepath.Join(cache, "nodelocal", "debs"), Unpinned: unpinned,
		Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) },
	})
	if err != nil {
		return err
	}
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := image.WriteArchive(f, img, ref, mtime); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, out); err != nil {
		return err
	}
	// The SBOM the image carries, beside the archive too, for a release to
	// publish or attest.
	if err := os.WriteFile(strings.TrimSuffix(out, ".tar")+".spdx.json", sbom, 0o644); err != nil {
		return err
	}
	return report(img, ref, out)
}

// report prints the digest, the sizes and how to use the archive.
func report(img v1.Image, ref, out string) error {
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	var compressed, uncompressed int64
	for _, l := range layers {
		size, err := l.Size()
		if err != nil {
			return err
		}
		rc, err := l.Uncompressed()
		if err != nil {
			return err
		}
		n, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
		compressed, uncompressed = compressed+size, uncompressed+n
	}
	const mib = 1 << 20
	fmt.Printf("%s %s\n", ref, digest)
	fmt.Printf("wrote %s: layers %.1f MiB compressed, %.1f MiB uncompressed\n", out, float64(compressed)/mib, float64(uncompressed)/mib)
	fmt.Printf("load it with one of:  docker load -i %[1]s;  podman load -i %[1]s;  ctr -n k8s.io images import %[1]s\n", out)
	fmt.Printf("push it:  skopeo copy oci-archive:%s docker://REGISTRY/node-cache:TAG\n", out)
	fmt.Printf("its SBOM (SPDX; in the image at /%s too): %s.spdx.json\n", image.SBOMPath, strings.TrimSuffix(out, ".tar"))
	return nil
}
