package coalesce

import (
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		input         string
		want          time.Duration
		wantFollowers int64
		wantErr       string
	}{
		{input: "coalesce", want: DefaultMaxWait, wantFollowers: DefaultMaxFollowers},
		{input: "coalesce {\n max_wait 2s\n}", want: 2 * time.Second, wantFollowers: DefaultMaxFollowers},
		{input: "coalesce {\n max_followers 64\n}", want: DefaultMaxWait, wantFollowers: 64},
		{input: "coalesce {\n max_followers 0\n}", wantErr: `max_followers "0": want a positive number such as 1024`},
		{input: "coalesce {\n max_followers many\n}", wantErr: `max_followers "many": want a positive number`},
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
		if err != nil || got.MaxWait != tc.want || got.MaxFollowers != tc.wantFollowers {
			t.Errorf("%q: %+v, %v; want max_wait %v, max_followers %d", tc.input, got, err, tc.want, tc.wantFollowers)
		}
	}
}
