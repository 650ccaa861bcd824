package warm

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
)

func init() { plugin.Register(pluginName, setup) }

// DefaultDir is node-cache's instance directory (nodelocal's), which the
// DaemonSet mounts from the host, so a pod's successor finds what it saved.
const DefaultDir = "/run/node-local-dns"

// dirEnv overrides DefaultDir, as it does nodelocal's (the simulated nodes'
// tests give each node its own).
const dirEnv = "NODELOCAL_STATE_DIR"

// DefaultNames: a node's working set, well within the cache's 9984 entries.
const DefaultNames = 2000

// DefaultWithin: a start (and a reload) waits at most this long for its cache
// to fill; the serving instance answers meanwhile.
const DefaultWithin = 2 * time.Second

// MaxWithin: a stopping instance waits 5 s at most for a starting one's
// listeners (nodelocal), and the warm-up comes before them.
const MaxWithin = 3 * time.Second

func setup(c *caddy.Controller) error {
	w, err := parse(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	server := dnsserver.GetConfig(c)
	w.addr = servingAddr(server)
	w.server = server.Zone + ":" + server.Port
	w.path = recordPath(w.dir, server)
	w.cache = func() plugin.Handler { return server.Handler("cache") }
	w.record = newRecord(4 * w.Names)
	c.OnStartup(w.checkDir)
	server.AddPlugin(func(next plugin.Handler) plugin.Handler {
		w.Next = next
		return w
	})
	return nil
}

// servingAddr is the block's first address: the one a peer serves too.
func servingAddr(server *dnsserver.Config) string {
	host := "127.0.0.1"
	if len(server.ListenHosts) > 0 && server.ListenHosts[0] != "" {
		host = server.ListenHosts[0]
	}
	return net.JoinHostPort(host, server.Port)
}

// recordPath is the block's record, one per zone and port, in the instance
// directory that only node-cache's pods mount.
func recordPath(dir string, server *dnsserver.Config) string {
	zone := strings.TrimSuffix(server.Zone, ".")
	if zone == "" {
		zone = "root"
	}
	return filepath.Join(dir, "hot-names-"+zone+"-"+server.Port)
}

// parse reads
//
//	warm [DIR] {
//	    names N
//	    within DURATION
//	}
func parse(c *caddy.Controller) (*Warm, error) {
	w := &Warm{Names: DefaultNames, Within: DefaultWithin, dir: DefaultDir}
	if d := os.Getenv(dirEnv); d != "" {
		w.dir = d
	}
	seen := false
	for c.Next() {
		if seen {
			return nil, c.Errf("warm given twice in one server block")
		}
		seen = true
		switch args := c.RemainingArgs(); len(args) {
		case 0:
		case 1:
			w.dir = args[0]
		default:
			return nil, c.ArgErr()
		}
		for c.NextBlock() {
			option := c.Val()
			args := c.RemainingArgs()
			if len(args) != 1 {
				return nil, c.ArgErr()
			}
			switch option {
			case "names":
				n, err := strconv.Atoi(args[0])
				if err != nil || n <= 0 || n > 100000 {
					return nil, c.Errf("names %q: want a number from 1 to 100000, such as %d", args[0], DefaultNames)
				}
				w.Names = n
			case "within":
				d, err := time.ParseDuration(args[0])
				if err != nil || d <= 0 || d > MaxWithin {
					return nil, c.Errf("within %q: want a duration up to %v (a stopping node-cache waits 5 s at most for a starting one's listeners, which open after the warm-up), such as %v", args[0], MaxWithin, DefaultWithin)
				}
				w.Within = d
			default:
				return nil, c.Errf("unknown option %q: want names or within", option)
			}
		}
	}
	return w, nil
}
