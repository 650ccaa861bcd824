package nodelocal

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/proxy"
)

func init() { plugin.Register(pluginName, setup) }

// blockConfig is what one server block asks for.
type blockConfig struct {
	Config
	explicit []string          // options given so far, to refuse one given twice
	server   *dnsserver.Config // the block's server: its forward plugin, once the servers are made
}

func setup(c *caddy.Controller) error {
	blk, err := parse(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	inst, first, err := joinInstance(c, blk)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	if first {
		if err := preflight(&blk.Config); err != nil {
			return plugin.Error(pluginName, err)
		}
		mgr := theManager
		apply := func() error {
			forgetInstance(c)
			return mgr.Apply(inst.merged())
		}
		// First start: after every block's setup and before any plugin's
		// OnStartup, because health and ready listen on these IPs too.
		c.OnFirstStartup(apply)
		// Every start, reloads too (OnFirstStartup does not run then), after
		// forward's OnStartup (nodelocal comes after it in plugin.cfg) and
		// before the listeners open (beforeListeners).
		c.OnStartup(func() error { return mgr.beforeListeners(inst.warmers(), apply) })
		c.OnShutdown(func() error { mgr.OldServersStopped(); return nil })
		// A failed reload leaves this instance serving: its config again.
		c.OnRestartFailed(func() error {
			mgr.ReloadFailed()
			CountConfigError()
			log.Errorf("The new Corefile was rejected; the previous configuration keeps serving")
			return mgr.Apply(inst.merged())
		})
		// On exit only, and after health's lameduck: nodelocal comes after health in plugin.cfg.
		c.OnFinalShutdown(func() error { mgr.Shutdown(); return nil })
		registerListenHook()
	}
	n := &NodeLocal{mgr: theManager}
	dnsserver.GetConfig(c).AddPlugin(func(next plugin.Handler) plugin.Handler {
		n.Next = next
		return n
	})
	return nil
}

func parse(c *caddy.Controller) (*blockConfig, error) {
	blk := &blockConfig{Config: Config{
		Interface:       DefaultInterface,
		ManageInterface: true,
		Backend:         BackendAuto,
		CheckInterval:   DefaultCheckInterval,
		HealthPort:      DefaultHealthPort,
		Teardown:        true,
		FailOpen:        true,
	}}
	srv := dnsserver.GetConfig(c)
	blk.server = srv
	port, err := strconv.Atoi(srv.Port)
	if err != nil || port < 1 || port > 65535 {
		return nil, c.Errf("server block port %q is not a port number", srv.Port)
	}
	i := 0
	for c.Next() {
		if i > 0 {
			return nil, plugin.ErrOnce
		}
		i++
		ips := c.RemainingArgs()
		if len(ips) == 0 {
			ips = srv.ListenHosts
		}
		for _, s := range ips {
			if s == "" {
				continue // a block without bind listens on every address
			}
			ip, err := netip.ParseAddr(s)
			if err != nil {
				return nil, c.Errf("%q is not an IP address (with no arguments, nodelocal takes the block's bind addresses)", s)
			}
			ip = ip.WithZone("").Unmap()
			if ip.IsUnspecified() || ip.IsMulticast() || ip.IsLoopback() {
				return nil, c.Errf("cannot intercept traffic to %s: list the cache's own IPs, such as 169.254.20.10", ip)
			}
			blk.Listen = append(blk.Listen, netip.AddrPortFrom(ip, uint16(port)))
		}
		if len(blk.Listen) == 0 {
			return nil, c.Errf("no IP to listen on: give them as arguments or with bind, such as `bind 169.254.20.10`")
		}
		for c.NextBlock() {
			opt := c.Val()
			if slices.Contains(blk.explicit, opt) {
				return nil, c.Errf("option %q given twice", opt)
			}
			blk.explicit = append(blk.explicit, opt)
			if err := parseOption(c, blk, opt); err != nil {
				return nil, err
			}
		}
		for _, ip := range blk.Fallback {
			if blk.isLocal(ip) {
				return nil, c.Errf("fallback %s is also local: the fallback is the kube-dns Service IP the cache's own addresses fail open to", ip)
			}
		}
	}
	return blk, nil
}

func parseOption(c *caddy.Controller, blk *blockConfig, opt string) error {
	args := c.RemainingArgs()
	wantArgs := 1
	if opt == "no_interface" || opt == "skip_teardown" {
		wantArgs = 0
	}
	if (opt == "fallback" || opt == "local") && len(args) > 0 {
		wantArgs = len(args)
	}
	if len(args) != wantArgs {
		return c.ArgErr()
	}
	switch opt {
	case "interface":
		name := args[0]
		if len(name) > 15 || strings.ContainsAny(name, "/ \t:") || name == "." || name == ".." {
			return c.Errf("interface name %q is not valid: at most 15 characters, no '/', ':' or spaces", name)
		}
		blk.Interface = name
	case "no_interface":
		blk.ManageInterface = false
	case "iptables":
		b := Backend(args[0])
		if !slices.Contains([]Backend{BackendAuto, BackendLegacy, BackendNFT, BackendOff}, b) {
			return c.Errf("iptables %q: want auto, legacy, nft or off", args[0])
		}
		blk.Backend = b
	case "check_interval":
		d, err := time.ParseDuration(args[0])
		if err != nil || d < 100*time.Millisecond || d > time.Hour {
			return c.Errf("check_interval %q: want a duration from 100ms to 1h, such as 5s", args[0])
		}
		blk.CheckInterval = d
	case "health_port":
		p, err := strconv.Atoi(args[0])
		if err != nil || p < 0 || p > 65535 {
			return c.Errf("health_port %q: want a port number, or 0 for none", args[0])
		}
		blk.HealthPort = p
	case "skip_teardown":
		blk.Teardown = false
	case "fail_open":
		switch args[0] {
		case "on":
			blk.FailOpen = true
		case "off":
			blk.FailOpen = false
		default:
			return c.Errf("fail_open %q: want on or off", args[0])
		}
	case "node_condition", "startup_taint":
		on := args[0] == "on"
		if !on && args[0] != "off" {
			return c.Errf("%s %q: want on or off", opt, args[0])
		}
		if on && os.Getenv("NODE_NAME") == "" {
			return c.Errf("%s %v", opt, errNoNodeName)
		}
		if opt == "node_condition" {
			blk.NodeCondition = on
		} else {
			blk.StartupTaint = on
		}
	case "fallback":
		for _, s := range args {
			ip, err := netip.ParseAddr(s)
			if err != nil || !ip.Unmap().IsGlobalUnicast() || ip.Unmap().IsLinkLocalUnicast() {
				return c.Errf("fallback %q: want the kube-dns Service IP (a unicast address, not link-local)", s)
			}
			ip = ip.Unmap()
			if slices.ContainsFunc(blk.Fallback, func(o netip.Addr) bool { return familyOf(o) == familyOf(ip) }) {
				return c.Errf("fallback %s: one address per IP family", ip)
			}
			blk.Fallback = append(blk.Fallback, ip)
		}
	case "local":
		for _, s := range args {
			ip, err := netip.ParseAddr(s)
			if err != nil || !ip.Unmap().IsGlobalUnicast() && !ip.Unmap().IsLinkLocalUnicast() {
				return c.Errf("local %q: want one of the cache's own listen IPs, such as fd00::10", s)
			}
			blk.Local = append(blk.Local, ip.Unmap())
		}
	default:
		return c.Errf("unknown property %q", opt)
	}
	return nil
}

// instance gathers the blocks of one Corefile instance: CoreDNS runs setup per
// block, and the process has one interception state.
type instance struct {
	mu     sync.Mutex
	blocks []*blockConfig
}

var (
	instancesMu sync.Mutex
	instances   = map[caddy.Context]*instance{}
)

// joinInstance adds a block to its instance and reports whether it is the first.
func joinInstance(c *caddy.Controller, blk *blockConfig) (*instance, bool, error) {
	instancesMu.Lock()
	inst, ok := instances[c.Context()]
	if !ok {
		inst = &instance{}
		instances[c.Context()] = inst
	}
	instancesMu.Unlock()

	inst.mu.Lock()
	defer inst.mu.Unlock()
	if ok {
		if err := inst.blocks[0].conflict(blk); err != nil {
			return nil, false, c.Err(err.Error())
		}
	}
	inst.blocks = append(inst.blocks, blk)
	return inst, !ok, nil
}

func forgetInstance(c *caddy.Controller) {
	instancesMu.Lock()
	delete(instances, c.Context())
	instancesMu.Unlock()
}

// conflict rejects a block whose options differ from the first block's: there
// is one interface and one rule set per process.
func (b *blockConfig) conflict(o *blockConfig) error {
	first, other := b.Config, o.Config
	first.Listen, other.Listen = nil, nil
	if first.equal(&other) {
		return nil
	}
	return fmt.Errorf("options differ from the first nodelocal block (interface %s, iptables %s, check_interval %v, health_port %d, teardown %v): "+
		"give the options in one block only, or the same in all", b.Interface, b.Backend, b.CheckInterval, b.HealthPort, b.Teardown)
}

// merged is the instance's config: the first block's options, every block's
// listen addresses and forward upstreams.
func (inst *instance) merged() *Config {
	inst.mu.Lock()
	defer inst.mu.Unlock()
	cfg := inst.blocks[0].Config
	cfg.Listen = nil
	for _, b := range inst.blocks {
		for _, ap := range b.Listen {
			if !slices.Contains(cfg.Listen, ap) {
				cfg.Listen = append(cfg.Listen, ap)
			}
		}
		for _, up := range forwardUpstreams(b.server) {
			if !slices.Contains(cfg.Upstreams, up) {
				cfg.Upstreams = append(cfg.Upstreams, up)
			}
		}
	}
	// forward lists them in its policy's order, random by default
	slices.SortFunc(cfg.Upstreams, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return &cfg
}

// forwardUpstreams lists the IP upstreams of a server block's forward plugin.
// The servers are made before any startup callback, so it is registered then.
func forwardUpstreams(server *dnsserver.Config) []netip.AddrPort {
	if server == nil {
		return nil
	}
	fwd, ok := server.Handler("forward").(interface{ List() []*proxy.Proxy })
	if !ok {
		return nil
	}
	var ups []netip.AddrPort
	for _, p := range fwd.List() {
		if ap, err := netip.ParseAddrPort(p.Addr()); err == nil {
			ups = append(ups, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		}
	}
	return ups
}

// registerListenHook tells the manager when the listeners are up (after the
// first start and after each reload) and when the process starts to stop
// (SIGTERM or SIGINT, before any shutdown callback). SIGUSR1 purges event
// hooks, so setup registers it again when it is missing.
func registerListenHook() {
	if slices.Contains(caddy.ListPlugins()["event_hooks"], pluginName) {
		return
	}
	caddy.RegisterEventHook(pluginName, func(event caddy.EventName, _ any) error {
		switch event {
		case caddy.InstanceStartupEvent:
			go theManager.ListenersUp()
		case caddy.ShutdownEvent:
			theManager.HandOff()
		}
		return nil
	})
}
