// Command node-cache is CoreDNS built with the plugins listed in plugin.cfg,
// the nodelocal plugin among them.
package main

//go:generate go run ./directivegen -cfg ../plugin.cfg -out .

import (
	"fmt"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/coremain"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func init() {
	// Runs after coremain's init, so these override CoreDNS's name and version
	// in -version and in the start-up banner.
	caddy.AppName = "node-cache"
	caddy.AppVersion = fmt.Sprintf("%s (CoreDNS %s)", version, coremain.CoreVersion)
}

func main() {
	coremain.Run()
}
