// Command gen writes manifests/base/configmap.yaml from corefile.tmpl and
// manifests/nodelocaldns.yaml from the kustomize base. Run from the repository
// root: `make manifests`.
package main

import (
	"fmt"
	"os"

	"github.com/nodelocal/nodelocal/manifests"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "manifests: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	tmpl, err := os.ReadFile("corefile.tmpl")
	if err != nil {
		return err
	}
	cm, err := manifests.ConfigMap(tmpl)
	if err != nil {
		return err
	}
	if err := os.WriteFile("manifests/base/configmap.yaml", cm, 0o644); err != nil {
		return err
	}
	all, err := manifests.Render("manifests/base")
	if err != nil {
		return err
	}
	return os.WriteFile("manifests/nodelocaldns.yaml", all, 0o644)
}
