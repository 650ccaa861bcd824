package plugincfg

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    []Entry
		wantErr string
	}{
		{
			name:  "short and full paths, comments and blanks",
			input: "# comment\n\ncache:cache\n  nodelocal:example.com/x/nodelocal  \non:github.com/coredns/caddy/onevent\n",
			want: []Entry{
				{Name: "cache", ImportPath: "github.com/coredns/coredns/plugin/cache", Line: 3},
				{Name: "nodelocal", ImportPath: "example.com/x/nodelocal", Line: 4},
				{Name: "on", ImportPath: "github.com/coredns/caddy/onevent", Line: 5},
			},
		},
		{name: "no colon", input: "cache:cache\nforward\n", wantErr: `line 2: "forward" is not name:importpath`},
		{name: "duplicate", input: "cache:cache\n\nx:y/z\ncache:cache\n", wantErr: `line 4: directive "cache" already listed on line 1`},
		{name: "empty name", input: ":cache\n", wantErr: `line 1: directive name ""`},
		{name: "bad name", input: "Cache:cache\n", wantErr: `line 1: directive name "Cache"`},
		{name: "empty path", input: "cache:\n", wantErr: `line 1: import path "" of directive "cache"`},
		{name: "space in path", input: "cache:github.com/a b\n", wantErr: `line 1: import path "github.com/a b"`},
		{name: "nothing listed", input: "# only a comment\n", wantErr: "no directives listed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(strings.NewReader(tc.input))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d entries %+v, want %+v", len(got), got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("entry %d = %+v, want %+v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestRenderImportsDeduplicates(t *testing.T) {
	entries := []Entry{{Name: "a", ImportPath: "x.org/p"}, {Name: "b", ImportPath: "x.org/p"}}
	out, err := RenderImports("main", entries)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(out), `"x.org/p"`); n != 1 {
		t.Fatalf("import appears %d times, want once:\n%s", n, out)
	}
	if !strings.HasPrefix(string(out), Header) {
		t.Fatalf("missing generated-code header:\n%s", out)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("cache:cache\nforward:forward\n")
	f.Add("# c\nx:a/b:c\n")
	f.Fuzz(func(t *testing.T, input string) {
		entries, err := Parse(strings.NewReader(input))
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, e := range entries {
			if seen[e.Name] || e.Name == "" || e.ImportPath == "" {
				t.Fatalf("accepted invalid entry %+v from %q", e, input)
			}
			seen[e.Name] = true
		}
		if _, err := RenderDirectives("main", entries); err != nil {
			t.Fatalf("render of accepted input %q failed: %v", input, err)
		}
	})
}
