package coalesce

import (
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
)

func init() { plugin.Register(pluginName, setup) }

func setup(c *caddy.Controller) error {
	maxWait, err := parse(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	co := New(maxWait)
	dnsserver.GetConfig(c).AddPlugin(func(next plugin.Handler) plugin.Handler {
		co.Next = next
		return co
	})
	return nil
}

// parse reads
//
//	coalesce {
//	    max_wait DURATION
//	}
func parse(c *caddy.Controller) (time.Duration, error) {
	maxWait := DefaultMaxWait
	seen := false
	for c.Next() {
		if seen {
			return 0, c.Errf("coalesce given twice in one server block")
		}
		seen = true
		if len(c.RemainingArgs()) > 0 {
			return 0, c.ArgErr()
		}
		for c.NextBlock() {
			switch c.Val() {
			case "max_wait":
				args := c.RemainingArgs()
				if len(args) != 1 {
					return 0, c.ArgErr()
				}
				d, err := time.ParseDuration(args[0])
				if err != nil || d <= 0 {
					return 0, c.Errf("max_wait %q: want a positive duration such as 5s", args[0])
				}
				maxWait = d
			default:
				return 0, c.Errf("unknown option %q: want max_wait", c.Val())
			}
		}
	}
	return maxWait, nil
}
