package main

import (
	"bytes"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"

	"github.com/nodelocal/nodelocal/build/internal/plugincfg"
)

func readPluginCfg(t *testing.T) []plugincfg.Entry {
	t.Helper()
	f, err := os.Open("../plugin.cfg")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries, err := plugincfg.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

// TestGeneratedFilesAreFresh fails when plugin.cfg changed without `make generate`.
func TestGeneratedFilesAreFresh(t *testing.T) {
	entries := readPluginCfg(t)
	for file, render := range map[string]func(string, []plugincfg.Entry) ([]byte, error){
		"zdirectives.go": plugincfg.RenderDirectives,
		"zplugin.go":     plugincfg.RenderImports,
	} {
		want, err := render("main", entries)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run `make generate` and commit the result", file)
		}
	}
}

// TestEveryDirectiveHasASetupAction proves that each directive of plugin.cfg
// is registered, and that the binary registers no plugin beyond plugin.cfg.
func TestEveryDirectiveHasASetupAction(t *testing.T) {
	entries := readPluginCfg(t)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name)
		if _, err := caddy.DirectiveAction("dns", e.Name); err != nil {
			t.Errorf("directive %q (plugin.cfg line %d): %v", e.Name, e.Line, err)
		}
	}
	if !slices.Equal(dnsserver.Directives, names) {
		t.Errorf("dnsserver.Directives = %v, want plugin.cfg order %v", dnsserver.Directives, names)
	}
	var registered []string
	for _, p := range caddy.ListPlugins()["others"] {
		if name, ok := strings.CutPrefix(p, "dns."); ok {
			registered = append(registered, name)
		}
	}
	slices.Sort(registered)
	slices.Sort(names)
	if !slices.Equal(registered, names) {
		t.Errorf("registered plugins %v, plugin.cfg lists %v", registered, names)
	}
}

// TestCoalesceSitsBetweenCacheAndForward: after cache, so cache hits never
// reach it, and right before forward, so every miss that goes upstream does.
func TestCoalesceSitsBetweenCacheAndForward(t *testing.T) {
	var names []string
	for _, e := range readPluginCfg(t) {
		names = append(names, e.Name)
	}
	cache, coalesce, forward := slices.Index(names, "cache"), slices.Index(names, "coalesce"), slices.Index(names, "forward")
	if cache < 0 || coalesce < cache || forward != coalesce+1 {
		t.Fatalf("plugin.cfg order %v: want cache, ..., coalesce, forward", names)
	}
}
