package harness

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// ImageArchiveName is where `make image` writes the image, under the repository.
const ImageArchiveName = "bin/node-cache-image.tar"

var (
	imageOnce sync.Once
	imagePath string
	imageErr  error
)

// ImageArchive returns the path of the shipping image's OCI archive, made by
// `make image` once per process so tests never run a stale image.
// NODELOCAL_IMAGE_ARCHIVE overrides it.
func ImageArchive() (string, error) {
	imageOnce.Do(func() {
		if imagePath = os.Getenv("NODELOCAL_IMAGE_ARCHIVE"); imagePath != "" {
			return
		}
		root, err := RepoRoot()
		if err != nil {
			imageErr = err
			return
		}
		// Tests must not fail the day Debian replaces a pinned version;
		// the pins still hold for every file that is the pinned one.
		cmd := exec.Command("make", "-s", "image", "UNPINNED=1")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			imageErr = fmt.Errorf("make image: %v\n%s", err, out)
			return
		}
		imagePath = filepath.Join(root, ImageArchiveName)
	})
	return imagePath, imageErr
}

// Image is an image unpacked from an OCI archive.
type Image struct {
	Ref    string        // its org.opencontainers.image.ref.name
	Config v1.ConfigFile // entrypoint, environment, labels
	Rootfs string        // its layers applied, as a runtime would
}

// UnpackImage reads the OCI archive's layout, as `ctr images import` and
// `skopeo copy oci-archive:` do, and applies its one image's layers into dir.
func UnpackImage(archive, dir string) (*Image, error) {
	layoutDir := filepath.Join(dir, "layout")
	if err := untar(archive, layoutDir, false); err != nil {
		return nil, fmt.Errorf("unpack %s: %w", archive, err)
	}
	index, err := layout.ImageIndexFromPath(layoutDir)
	if err != nil {
		return nil, fmt.Errorf("%s is no OCI image layout: %w", archive, err)
	}
	im, err := index.IndexManifest()
	if err != nil {
		return nil, err
	}
	if len(im.Manifests) != 1 {
		return nil, fmt.Errorf("%s holds %d images, want 1", archive, len(im.Manifests))
	}
	desc := im.Manifests[0]
	img, err := index.Image(desc.Digest)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	out := &Image{Ref: desc.Annotations["org.opencontainers.image.ref.name"], Config: *cf, Rootfs: filepath.Join(dir, "rootfs")}
	flat := mutate.Extract(img)
	defer flat.Close()
	if err := untarStream(flat, out.Rootfs, true); err != nil {
		return nil, fmt.Errorf("apply the layers of %s: %w", archive, err)
	}
	return out, os.RemoveAll(layoutDir)
}

func untar(path, dir string, withLinks bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return untarStream(f, dir, withLinks)
}

// untarStream writes a tar stream's directories, files and (withLinks)
// symlinks under dir, refusing any path that would leave it.
func untarStream(r io.Reader, dir string, withLinks bool) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean("/" + h.Name)
		target := filepath.Join(dir, name)
		if strings.Contains(h.Name, "..") {
			return fmt.Errorf("tar entry %q leaves the directory", h.Name)
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, os.FileMode(h.Mode).Perm()); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode).Perm())
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if !withLinks {
				return fmt.Errorf("unexpected symlink %s", h.Name)
			}
			if err := os.Symlink(h.Linkname, target); err != nil {
				return err
			}
		default:
			return fmt.Errorf("tar entry %s: unexpected type %c", h.Name, h.Typeflag)
		}
	}
}
