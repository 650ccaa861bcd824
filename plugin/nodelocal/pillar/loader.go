package pillar

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/coredns/caddy"
	clog "github.com/coredns/coredns/plugin/pkg/log"

	"github.com/nodelocal/nodelocal/internal/atomicfile"
	"github.com/nodelocal/nodelocal/plugin/nodelocal"
)

var log = clog.NewWithPlugin("nodelocal")

// Loader is the Caddyfile loader of node-cache. The reload plugin calls it on
// every tick and reloads when its output changes, so it is deterministic and
// has no side effects beyond writing the rendered file for inspection.
type Loader struct {
	Options *Options
	Env     *Environment

	mu          sync.Mutex
	lastGood    []byte
	lastPath    string
	lastFailure string
}

// Render renders the Corefile and checks that CoreDNS's parser accepts it.
// It returns the path errors and relative imports refer to.
func (l *Loader) Render() ([]byte, string, error) {
	tmpl, path, err := l.Options.template(l.Env)
	if err != nil {
		return nil, path, fmt.Errorf("read template: %w", err)
	}
	v, err := l.Options.Values(l.Env, tmpl)
	if err != nil {
		return nil, path, err
	}
	dir := l.Options.KubeDNSConfigDir
	if dir == "" {
		dir = DefaultKubeDNSDir
	}
	kubeDNS, err := ReadKubeDNSConfig(l.Env.ReadFile, dir)
	if err != nil {
		return nil, path, err
	}
	out, err := Render(tmpl, path, v, kubeDNS)
	if err != nil {
		return nil, path, fmt.Errorf("%s: %w", path, err)
	}
	return out, path, nil
}

// Load implements caddy.Loader. A template or ConfigMap that does not render
// keeps the last good Corefile serving; the failure is logged and counted once.
func (l *Loader) Load(serverType string) (caddy.Input, error) {
	out, path, err := l.Render()
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if err.Error() != l.lastFailure {
			l.lastFailure = err.Error()
			nodelocal.CountConfigError()
			if l.lastGood != nil {
				log.Errorf("Corefile not updated, the running one keeps serving: %v", err)
			}
		}
		if l.lastGood == nil {
			return nil, err
		}
		out, path = l.lastGood, l.lastPath
	} else {
		l.lastFailure = ""
		if !bytes.Equal(out, l.lastGood) {
			l.lastGood, l.lastPath = out, path
			l.write(out)
		}
	}
	return caddy.CaddyfileInput{Contents: out, Filepath: path, ServerTypeName: serverType}, nil
}

// write leaves the rendered Corefile where upstream did (-conf, -corefile), so
// an operator can read it; a read-only filesystem only costs that.
func (l *Loader) write(corefile []byte) {
	path := l.Options.OutputPath(l.Env)
	if path == "" {
		return
	}
	err := atomicfile.Write(path, func(w io.Writer) error { _, err := w.Write(corefile); return err })
	if err != nil {
		log.Infof("Rendered Corefile not written to %s (%v); `node-cache -render` prints it", path, strings.TrimSpace(err.Error()))
		return
	}
	log.Infof("Rendered Corefile written to %s", path)
}
