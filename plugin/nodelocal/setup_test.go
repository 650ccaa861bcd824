package nodelocal

import (
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/caddy/caddyfile"
	"github.com/coredns/coredns/core/dnsserver"
)

func newController(input string, bind ...string) *caddy.Controller {
	c := caddy.NewTestController("dns", input)
	cfg := dnsserver.GetConfig(c)
	cfg.Port = "53"
	cfg.ListenHosts = bind
	return c
}

func TestParse(t *testing.T) {
	ap := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	tests := []struct {
		name    string
		input   string
		bind    []string
		want    Config
		wantErr string
	}{
		{
			name: "defaults take the bind addresses", input: "nodelocal", bind: []string{"169.254.20.10", "198.18.0.10"},
			want: Config{Listen: []netip.AddrPort{ap("169.254.20.10:53"), ap("198.18.0.10:53")}, Interface: "nodelocaldns",
				ManageInterface: true, Backend: BackendAuto, CheckInterval: 5 * time.Second, HealthPort: 8080, Teardown: true, FailOpen: true},
		},
		{
			name: "explicit IPs and every option", bind: []string{"0.0.0.0"},
			input: `nodelocal 169.254.20.10 2001:2::10 {
				interface cache0
				iptables legacy
				check_interval 2s
				health_port 9090
				skip_teardown
				fail_open off
				fallback 198.18.0.11 2001:2::11
				local 2001:2::10
			}`,
			want: Config{Listen: []netip.AddrPort{ap("169.254.20.10:53"), ap("[2001:2::10]:53")}, Interface: "cache0",
				ManageInterface: true, Backend: BackendLegacy, CheckInterval: 2 * time.Second, HealthPort: 9090,
				Fallback: []netip.Addr{netip.MustParseAddr("198.18.0.11"), netip.MustParseAddr("2001:2::11")},
				Local:    []netip.Addr{netip.MustParseAddr("2001:2::10")}},
		},
		{
			name: "no interface, no iptables", input: "nodelocal {\n no_interface\n iptables off\n health_port 0\n}", bind: []string{"169.254.20.10"},
			want: Config{Listen: []netip.AddrPort{ap("169.254.20.10:53")}, Interface: "nodelocaldns", Backend: BackendOff,
				CheckInterval: 5 * time.Second, Teardown: true, FailOpen: true},
		},
		{name: "zone is dropped", input: "nodelocal fe80::10%eth0", want: Config{}, wantErr: ""},
		{name: "no IP anywhere", input: "nodelocal", wantErr: "no IP to listen on"},
		{name: "block without bind", input: "nodelocal", bind: []string{""}, wantErr: "no IP to listen on"},
		{name: "not an IP", input: "nodelocal nodelocaldns", wantErr: `"nodelocaldns" is not an IP address`},
		{name: "wildcard", input: "nodelocal", bind: []string{"0.0.0.0"}, wantErr: "cannot intercept traffic to 0.0.0.0"},
		{name: "loopback", input: "nodelocal 127.0.0.1", wantErr: "cannot intercept traffic to 127.0.0.1"},
		{name: "bad backend", input: "nodelocal 169.254.20.10 {\n iptables nftables\n}", wantErr: `iptables "nftables": want auto, legacy, nft or off`},
		{name: "bad interval", input: "nodelocal 169.254.20.10 {\n check_interval 1ms\n}", wantErr: "check_interval"},
		{name: "bad health port", input: "nodelocal 169.254.20.10 {\n health_port 70000\n}", wantErr: "health_port"},
		{name: "long interface", input: "nodelocal 169.254.20.10 {\n interface a-very-long-interface\n}", wantErr: "not valid"},
		{name: "missing argument", input: "nodelocal 169.254.20.10 {\n interface\n}", wantErr: "Wrong argument count"},
		{name: "extra argument", input: "nodelocal 169.254.20.10 {\n skip_teardown now\n}", wantErr: "Wrong argument count"},
		{name: "unknown option", input: "nodelocal 169.254.20.10 {\n setup_interface false\n}", wantErr: `unknown property "setup_interface"`},
		{name: "bad fail_open", input: "nodelocal 169.254.20.10 {\n fail_open maybe\n}", wantErr: `fail_open "maybe": want on or off`},
		{name: "fallback link-local", input: "nodelocal 169.254.20.10 {\n fallback 169.254.20.11\n}", wantErr: `fallback "169.254.20.11": want the kube-dns Service IP`},
		{name: "fallback not an IP", input: "nodelocal 169.254.20.10 {\n fallback kube-dns\n}", wantErr: `fallback "kube-dns": want the kube-dns Service IP`},
		{name: "fallback twice in a family", input: "nodelocal 169.254.20.10 {\n fallback 198.18.0.10 198.18.0.11\n}", wantErr: "fallback 198.18.0.11: one address per IP family"},
		{name: "local not an IP", input: "nodelocal 169.254.20.10 {\n local fd00::10/128\n}", wantErr: `local "fd00::10/128": want one of the cache's own listen IPs`},
		{name: "local without address", input: "nodelocal 169.254.20.10 {\n local\n}", wantErr: "Wrong argument count"},
		{name: "fallback also local", input: "nodelocal fd00::10 {\n local fd00::10\n fallback fd00::10\n}", wantErr: "fallback fd00::10 is also local"},
		{name: "fallback without address", input: "nodelocal 169.254.20.10 {\n fallback\n}", wantErr: "Wrong argument count"},
		{name: "option twice", input: "nodelocal 169.254.20.10 {\n iptables nft\n iptables nft\n}", wantErr: "given twice"},
		{name: "directive twice", input: "nodelocal 169.254.20.10\nnodelocal 169.254.20.10", wantErr: "this plugin"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			blk, err := parse(newController(tc.input, tc.bind...))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want it to contain %q", err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), "Testfile:") && !strings.Contains(err.Error(), "this plugin") {
					t.Errorf("error %q does not name the file and line", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.name == "zone is dropped" {
				if blk.Listen[0].Addr().Zone() != "" {
					t.Fatalf("zone kept: %v", blk.Listen)
				}
				return
			}
			if !blk.Config.equal(&tc.want) {
				t.Fatalf("got %+v\nwant %+v", blk.Config, tc.want)
			}
		})
	}
}

// TestNodeConditionOption: node_condition needs the node's name, which the
// DaemonSet gives from the downward API.
func TestNodeConditionOption(t *testing.T) {
	for _, tc := range []struct {
		name, input, nodeName, wantErr string
		want                           bool
	}{
		{name: "on", input: "nodelocal 169.254.20.10 {\n node_condition on\n}", nodeName: "node-a", want: true},
		{name: "off", input: "nodelocal 169.254.20.10 {\n node_condition off\n}", nodeName: "node-a"},
		{name: "without the node's name", input: "nodelocal 169.254.20.10 {\n node_condition on\n}", wantErr: "node_condition needs the node's name in $NODE_NAME"},
		{name: "bad value", input: "nodelocal 169.254.20.10 {\n node_condition yes\n}", nodeName: "node-a", wantErr: `node_condition "yes": want on or off`},
		{name: "startup_taint without the node's name", input: "nodelocal 169.254.20.10 {\n startup_taint on\n}", wantErr: "startup_taint needs the node's name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("NODE_NAME", tc.nodeName)
			blk, err := parse(newController(tc.input))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || blk.NodeCondition != tc.want {
				t.Fatalf("node_condition %v (%v), want %v", blk.NodeCondition, err, tc.want)
			}
		})
	}
}

func TestBlocksMergeAndConflict(t *testing.T) {
	ctxCtl := newController("nodelocal", "169.254.20.10")
	blk1, err := parse(ctxCtl)
	if err != nil {
		t.Fatal(err)
	}
	inst, first, err := joinInstance(ctxCtl, blk1)
	if err != nil || !first {
		t.Fatalf("first block: first=%v err=%v", first, err)
	}
	defer forgetInstance(ctxCtl)

	// A second block of the same instance, another port.
	second := blockOf(ctxCtl, 1, "nodelocal 169.254.20.10 198.18.0.10", "5353")
	blk2, err := parse(second)
	if err != nil {
		t.Fatal(err)
	}
	if _, first, err := joinInstance(second, blk2); err != nil || first {
		t.Fatalf("second block: first=%v err=%v", first, err)
	}
	got := inst.merged().Listen
	want := []netip.AddrPort{
		netip.MustParseAddrPort("169.254.20.10:53"),
		netip.MustParseAddrPort("169.254.20.10:5353"),
		netip.MustParseAddrPort("198.18.0.10:5353"),
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("merged listen %v, want %v", got, want)
	}

	third := blockOf(ctxCtl, 2, "nodelocal 169.254.20.10 {\n interface other0\n}", "53")
	blk3, err := parse(third)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := joinInstance(third, blk3); err == nil || !strings.Contains(err.Error(), "options differ") {
		t.Fatalf("conflicting interface accepted: %v", err)
	}
}

// blockOf is another server block of the same Corefile instance as of.
func blockOf(of *caddy.Controller, index int, input, port string) *caddy.Controller {
	ctl := *of
	ctl.Dispenser = caddyfile.NewDispenser("Testfile", strings.NewReader(input))
	ctl.ServerBlockIndex = index
	dnsserver.GetConfig(&ctl).Port = port
	return &ctl
}

func FuzzParse(f *testing.F) {
	f.Add("nodelocal 169.254.20.10 {\n interface cache0\n iptables nft\n check_interval 2s\n}")
	f.Add("nodelocal {\n no_interface\n health_port 0\n skip_teardown\n}")
	f.Fuzz(func(t *testing.T, input string) {
		blk, err := parse(newController(input, "169.254.20.10"))
		if err != nil {
			return
		}
		for _, ap := range blk.Listen {
			if !ap.Addr().IsValid() || ap.Addr().IsUnspecified() || ap.Addr().IsLoopback() {
				t.Fatalf("accepted listen address %v from %q", ap, input)
			}
		}
		if blk.CheckInterval < 100*time.Millisecond || len(blk.Interface) > 15 {
			t.Fatalf("accepted %+v from %q", blk.Config, input)
		}
	})
}

// TestPreflightNamesTheMissingBinary: without iptables in PATH node-cache
// stops before touching the node, naming the binaries and the fix.
func TestPreflightNamesTheMissingBinary(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (NET_ADMIN, checked first), and CI=true forbids skipping")
		}
		t.Skip("needs root: NET_ADMIN is checked before the binaries")
	}
	t.Setenv("PATH", t.TempDir())
	cfg := &Config{ManageInterface: true, Backend: BackendAuto, Listen: []netip.AddrPort{netip.MustParseAddrPort("169.254.20.10:53")}}
	err := preflight(cfg)
	want := "iptables binary iptables-nft or iptables-legacy not found in PATH: install the iptables package (both backends), or set `iptables off`"
	if err == nil || err.Error() != want {
		t.Fatalf("preflight without iptables: %v, want %q", err, want)
	}
}
