// Command gen writes manifests/base/configmap.yaml from corefile.tmpl,
// manifests/nodelocaldns.yaml from the kustomize base, and the chart's copies
// of the Corefile template, the alerts, the dashboard, and the node
// readiness's RBAC and admission policies. Run from the repository
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
	// The chart ships the same Corefile template, alerts and dashboard.
	for src, dst := range map[string]string{
		"corefile.tmpl": "charts/node-local-dns/files/Corefile.tmpl",
		"manifests/components/monitoring/prometheusrule.yaml": "charts/node-local-dns/files/prometheusrule.yaml",
		"manifests/components/monitoring/dashboard.json":      "charts/node-local-dns/files/dashboard.json",
		"manifests/components/node-readiness/rbac.yaml":       "charts/node-local-dns/files/node-readiness-rbac.yaml",
		"manifests/components/node-readiness/policy.yaml":     "charts/node-local-dns/files/node-readiness-policy.yaml",
	} {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			return err
		}
	}
	all, err := manifests.Render("manifests/base")
	if err != nil {
		return err
	}
	return os.WriteFile("manifests/nodelocaldns.yaml", all, 0o644)
}
