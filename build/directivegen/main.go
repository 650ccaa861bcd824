// Command directivegen turns plugin.cfg into the directive list and the
// plugin imports of node-cache. It is run by `go generate` in build/.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nodelocal/nodelocal/build/internal/plugincfg"
)

func main() {
	cfg := flag.String("cfg", "../plugin.cfg", "plugin.cfg to read")
	out := flag.String("out", ".", "directory to write zdirectives.go and zplugin.go into")
	pkg := flag.String("pkg", "main", "package name of the generated files")
	without := flag.String("without", "", "comma-separated plugins to leave out (for a reference build without them)")
	flag.Parse()
	if err := run(*cfg, *out, *pkg, *without); err != nil {
		fmt.Fprintf(os.Stderr, "directivegen: %v\n", err)
		os.Exit(1)
	}
}

func run(cfgPath, outDir, pkg, without string) error {
	f, err := os.Open(cfgPath)
	if err != nil {
		return err
	}
	defer f.Close()
	entries, err := plugincfg.Parse(f)
	if err != nil {
		return fmt.Errorf("%s: %w", cfgPath, err)
	}
	for _, name := range strings.FieldsFunc(without, func(r rune) bool { return r == ',' }) {
		n := len(entries)
		entries = slices.DeleteFunc(entries, func(e plugincfg.Entry) bool { return e.Name == name })
		if len(entries) == n {
			return fmt.Errorf("%s: no plugin %q to leave out", cfgPath, name)
		}
	}
	directives, err := plugincfg.RenderDirectives(pkg, entries)
	if err != nil {
		return err
	}
	imports, err := plugincfg.RenderImports(pkg, entries)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(outDir, "zdirectives.go"), directives, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(outDir, "zplugin.go"), imports, 0o644)
}
