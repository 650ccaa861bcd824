package coalesce

import (
	"strconv"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
)

func init() { plugin.Register(pluginName, setup) }

func setup(c *caddy.Controller) error {
	co, err := parse(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
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
//	    max_followers N
//	}
func parse(c *caddy.Controller) (*Coalesce, error) {
	maxWait, maxFollowers := DefaultMaxWait, int64(DefaultMaxFollowers)
	seen := false
	for c.Next() {
		if seen {
			return nil, c.Errf("coalesce given twice in one server block")
		}
		seen = true
		if len(c.RemainingArgs()) > 0 {
			return nil, c.ArgErr()
		}
		for c.NextBlock() {
			option := c.Val()
			args := c.RemainingArgs()
			if len(args) != 1 {
				return nil, c.ArgErr()
			}
			switch option {
			case "max_wait":
				d, err := time.ParseDuration(args[0])
				if err != nil || d <= 0 {
					return nil, c.Errf("max_wait %q: want a positive duration such as 5s", args[0])
				}
				maxWait = d
			case "max_followers":
				n, err := strconv.ParseInt(args[0], 10, 32)
				if err != nil || n <= 0 {
					return nil, c.Errf("max_followers %q: want a positive number such as 1024", args[0])
				}
				maxFollowers = n
			default:
				return nil, c.Errf("unknown option %q: want max_wait or max_followers", option)
			}
		}
	}
	return New(maxWait, maxFollowers), nil
}
