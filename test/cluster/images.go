package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/nodelocal/nodelocal/build/image"
	"github.com/nodelocal/nodelocal/test/harness"
)

// busyboxStatic is the client image's shell and nslookup, from Debian.
var busyboxStatic = image.Package{Name: "busybox-static", Version: "1:1.35.0-4+deb12u1+b1",
	SHA256: map[string]string{"amd64": "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744"}}

// writeConfigsAndImages writes the nodes' resolv.conf, and the pause,
// kube-dns and client images as archives that each node imports.
func (c *Cluster) writeConfigsAndImages() error {
	if err := c.writeResolvConf(); err != nil {
		return err
	}
	pause, err := harness.Binary("pause")
	if err != nil {
		return err
	}
	dnsload, err := harness.Binary("dnsload")
	if err != nil {
		return err
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return err
	}
	debs, err := image.Unpack([]image.Package{busyboxStatic}, "amd64", filepath.Join(cache, "nodelocal"), image.FetchOptions{Unpinned: true, Logf: c.Opts.Logf})
	if err != nil {
		return err
	}
	defer os.RemoveAll(debs)
	file := func(path, src string) (image.File, error) {
		b, err := os.ReadFile(src)
		return image.File{Path: path, Mode: 0o755, Data: b}, err
	}
	images := []struct {
		ref        string
		entrypoint []string
		files      [][2]string // path in the image, file on this machine
		links      []string    // names for busybox
	}{
		{PauseImage, []string{"/pause"}, [][2]string{{"pause", pause}}, nil},
		{KubeDNSImage, []string{"/coredns"}, [][2]string{{"coredns", filepath.Join(c.Bin, "coredns")}}, nil},
		{ClientImage, []string{"/bin/sh"}, [][2]string{{"bin/busybox", filepath.Join(debs, "bin", "busybox")}, {"bin/dnsload", dnsload}},
			[]string{"sh", "nslookup", "sleep", "cat", "date", "timeout"}},
	}
	for _, im := range images {
		var files []image.File
		for _, f := range im.files {
			imf, err := file(f[0], f[1])
			if err != nil {
				return err
			}
			files = append(files, imf)
		}
		for _, l := range im.links {
			files = append(files, image.File{Path: "bin/" + l, Link: "busybox"})
		}
		img, err := image.Simple(files, im.entrypoint, "amd64", time.Unix(0, 0))
		if err != nil {
			return err
		}
		if err := writeArchive(c.path("images", filepath.Base(im.ref)+".tar"), img, im.ref); err != nil {
			return err
		}
	}
	return nil
}

func writeArchive(path string, img v1.Image, ref string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	err = image.WriteArchive(f, img, ref, time.Unix(0, 0))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// importImages imports the images of writeConfigsAndImages and the
// shipping node-cache archive (`make image`), tagged as NodeCacheImage too.
func (n *Node) importImages() error {
	archives, err := filepath.Glob(n.c.path("images", "*.tar"))
	if err != nil {
		return err
	}
	for _, archive := range archives {
		if _, err := n.Ctr("images", "import", archive); err != nil {
			return err
		}
	}
	nodeCache, err := harness.ImageArchive()
	if err != nil {
		return err
	}
	if _, err := n.Ctr("images", "import", nodeCache); err != nil {
		return err
	}
	if _, err := n.Ctr("images", "tag", "--force", shippedImageRef, NodeCacheImage); err != nil {
		return fmt.Errorf("tag the node-cache image: %w", err)
	}
	return nil
}
