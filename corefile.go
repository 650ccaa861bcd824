// Package nodelocal holds node-cache's built-in Corefile template, so that
// node-cache runs with no file at all.
package nodelocal

import _ "embed"

// CorefileTemplate is corefile.tmpl.
//
//go:embed corefile.tmpl
var CorefileTemplate []byte
