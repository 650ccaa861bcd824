// Command node-cache is CoreDNS built with the plugins listed in plugin.cfg,
// the nodelocal plugin among them. Its Corefile is rendered from a template
// (see plugin/nodelocal/pillar), and upstream node-cache's flags work unchanged.
package main

//go:generate go run ./directivegen -cfg ../plugin.cfg -out .

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/coremain"

	nodelocal "github.com/nodelocal/nodelocal"
	"github.com/nodelocal/nodelocal/build/internal/heapfloor"
	nodelocalplugin "github.com/nodelocal/nodelocal/plugin/nodelocal"
	"github.com/nodelocal/nodelocal/plugin/nodelocal/pillar"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

var options = pillar.RegisterFlags(flag.CommandLine)

var heapFloorMiB = flag.Uint64("heapfloor", 16, "MiB of heap below which the Go GC does not collect (GOGC raised while the live heap is small); 0, or GOGC set: Go's default")

func init() {
	// Runs after coremain's init, so these override CoreDNS's name and version
	// in -version and in the start-up banner.
	caddy.AppName = "node-cache"
	caddy.AppVersion = fmt.Sprintf("%s (CoreDNS %s)", version, coremain.CoreVersion)
}

func main() {
	// `node-cache status`: ask this node's instances, as kubectl asks the
	// cluster; it starts no server.
	if len(os.Args) > 1 && os.Args[1] == "status" {
		os.Exit(nodelocalplugin.StatusCommand(os.Args[2:], os.Stdout, os.Stderr))
	}
	confPath, args := takeConf(os.Args[1:])
	os.Args = append(os.Args[:1], args...)
	flag.Parse() // coremain.Run parses again; the result is the same
	explicit := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	loader := &pillar.Loader{Options: options, Env: pillar.SystemEnvironment(nodelocal.CorefileTemplate, confPath, explicit)}

	if options.Render {
		corefile, _, err := loader.Render()
		if err != nil {
			fmt.Fprintf(os.Stderr, "node-cache: %v\n", err)
			os.Exit(1)
		}
		os.Stdout.Write(corefile)
		os.Exit(0)
	}
	if confPath != "stdin" {
		caddy.RegisterCaddyfileLoader("nodelocal", loader)
	}
	_, gogcSet := os.LookupEnv("GOGC")
	heapfloor.Start(*heapFloorMiB<<20, gogcSet)
	coremain.Run()
}

// takeConf removes CoreDNS's -conf from args and returns its value, so that
// CoreDNS's own loader stays silent and ours renders that file (or, with
// upstream's args, writes the rendered Corefile there). "-conf stdin" stays
// CoreDNS's.
func takeConf(args []string) (string, []string) {
	var conf string
	var rest []string
	for i := 0; i < len(args); i++ {
		name, value, hasValue := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		if !strings.HasPrefix(args[i], "-") || name != "conf" {
			rest = append(rest, args[i])
			continue
		}
		if !hasValue && i+1 < len(args) {
			i++
			value = args[i]
		}
		conf = value
	}
	if conf == "stdin" {
		return conf, args
	}
	return conf, rest
}
