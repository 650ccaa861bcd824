package nodelocal

import (
	"github.com/coredns/caddy"
	"github.com/coredns/coredns/plugin"
)

func init() { plugin.Register("nodelocal", setup) }

func setup(c *caddy.Controller) error {
	return plugin.Error("nodelocal", c.Err("not implemented yet"))
}
