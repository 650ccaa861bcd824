//go:build tools

// Package tools pins syft, the SBOM scanner the image test reads node-cache's
// OCI archive with (test/e2e): it finds Debian packages through dpkg's
// records and Go modules through a binary's build information, as Trivy and
// Grype do, and needs no vulnerability database.
package tools

import _ "github.com/anchore/syft/cmd/syft"
