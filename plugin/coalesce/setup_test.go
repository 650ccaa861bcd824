package coalesce

import (
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		input   string
		want    time.Duration
		wantErr string
	}{
		{input: "coalesce", want: DefaultMaxWait},
		{input: "coalesce {\n max_wait 2s\n}", want: 2 * time.Second},
		{input: "coalesce 2s", wantErr: "Wrong argument count"},
		{input: "coalesce {\n max_wait\n}", wantErr: "Wrong argument count"},
		{input: "coalesce {\n max_wait soon\n}", wantErr: `max_wait "soon": want a positive duration`},
		{input: "coalesce {\n max_wait -1s\n}", wantErr: "want a positive duration"},
		{input: "coalesce {\n wait 1s\n}", wantErr: `unknown option "wait"`},
		{input: "coalesce\ncoalesce", wantErr: "coalesce given twice"},
	} {
		got, err := parse(caddy.NewTestController("dns", tc.input))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: error %v, want %q", tc.input, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %v, %v; want %v", tc.input, got, err, tc.want)
		}
	}
}
