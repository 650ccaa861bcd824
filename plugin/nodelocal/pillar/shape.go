package pillar

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/coredns/caddy/caddyfile"
	"github.com/coredns/coredns/core/dnsserver"
)

// errShape is a rendered Corefile whose structure differs from its
// template's. The value parsers refuse such values first; this is the last
// line of defence, and the fuzz tests check that it never has to act.
var errShape = fmt.Errorf("a value changed the structure of the Corefile")

// checkShape parses the rendered Corefile and compares its shape with that of
// the template filled with inert values. path is the template's, for errors
// and relative imports. It returns the rendered server blocks.
func checkShape(path string, rendered, inert []byte) ([]caddyfile.ServerBlock, error) {
	blocks, err := caddyfile.Parse(path, bytes.NewReader(rendered), dnsserver.Directives)
	if err != nil {
		return nil, fmt.Errorf("rendered Corefile does not parse: %w", err)
	}
	inertBlocks, err := caddyfile.Parse(path, bytes.NewReader(inert), dnsserver.Directives)
	if err != nil {
		return nil, fmt.Errorf("rendered Corefile does not parse: %w", err)
	}
	if got, want := shape(blocks), shape(inertBlocks); got != want {
		return nil, fmt.Errorf("%w: the template makes\n%s\nthe values made\n%s", errShape, want, got)
	}
	return blocks, nil
}

// shape is the Corefile without its values: each server block's number of
// keys, then its directives in name order, each line written as its
// directive or option name, "_" for each argument, and its blocks nested.
// Listeners are keys, bind arguments and the arguments of prometheus,
// health and ready: a value that added one would change the shape.
func shape(blocks []caddyfile.ServerBlock) string {
	var b strings.Builder
	for _, block := range blocks {
		fmt.Fprintf(&b, "%s {\n", strings.TrimSpace(strings.Repeat("_ ", len(block.Keys))))
		for _, name := range slices.Sorted(maps.Keys(block.Tokens)) {
			d := caddyfile.NewDispenserTokens("Corefile", block.Tokens[name])
			for d.Next() {
				writeLineShape(&b, &d, 1)
			}
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// writeLineShape writes the line whose first token d is at, and the block it
// opens. It reports whether the line closed the block it is in (a "}" on the
// same line, as in `forward . x { force_tcp }`).
func writeLineShape(b *strings.Builder, d *caddyfile.Dispenser, depth int) (closed bool) {
	indent := strings.Repeat("    ", depth)
	b.WriteString(indent + d.Val())
	for d.NextArg() {
		switch d.Val() {
		case "}":
			b.WriteString("\n")
			return true
		case "{":
			b.WriteString(" {\n")
			for d.Next() && d.Val() != "}" {
				if writeLineShape(b, d, depth+1) {
					break
				}
			}
			b.WriteString(indent + "}")
		default:
			b.WriteString(" _")
		}
	}
	b.WriteString("\n")
	return false
}

// checkStubZones refuses a stub domain that is also a zone the template
// serves (the cluster domain, a reverse zone, "."): CoreDNS would refuse to
// start with the same zone twice on the same listener.
func checkStubZones(blocks []caddyfile.ServerBlock, stubs []StubDomain) error {
	templateBlocks := blocks[:len(blocks)-len(stubs)]
	served := map[string]bool{}
	for _, block := range templateBlocks {
		for _, key := range block.Keys {
			served[keyZone(key)] = true
		}
	}
	for _, stub := range stubs {
		if served[zoneName(stub.Domain)] {
			return fmt.Errorf("%s: %q is a zone the Corefile template already serves: CoreDNS would refuse to start with it twice; "+
				"remove it from the ConfigMap (its names already go where the template sends them)", stubDomainsSource, stub.Domain)
		}
	}
	return nil
}

// keyZone is the zone of a server block key such as dns://cluster.local:53.
func keyZone(key string) string {
	if _, rest, ok := strings.Cut(key, "://"); ok {
		key = rest
	}
	if i := strings.LastIndex(key, ":"); i >= 0 {
		key = key[:i]
	}
	return zoneName(key)
}
