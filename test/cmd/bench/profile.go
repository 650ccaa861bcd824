package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nodelocal/nodelocal/test/harness"
)

// profileFor is how long the CPU profile for PGO is taken.
const profileFor = 20 * time.Second

// pprofAddr serves node-cache's profiles on the node netns's loopback, only
// while a profile is taken.
const pprofAddr = "127.0.0.1:6060"

// profile runs the shipped node-cache as the throughput section does (pinned,
// the DaemonSet's environment) under the load a node sees: saturated cache
// hits, plus the harness's mixed load of misses, TCP and both IPs. It writes
// the CPU profile taken meanwhile to out: `go build` optimises ./build with it
// (build/default.pgo, profile-guided optimisation).
func profile(out string) error {
	node, tmpl, err := newNode()
	if err != nil {
		return err
	}
	defer node.Close()
	withPprof := strings.Replace(tmpl, ".:53 {\n", ".:53 {\n    pprof "+pprofAddr+"\n", 1)
	if withPprof == tmpl {
		return fmt.Errorf("corefile.tmpl has no .:53 block to serve pprof from")
	}
	p, err := node.StartNodeCacheProcess("node-cache", withPprof, append(append([]string{"env"}, shippedEnv...), serverCPU...))
	if err != nil {
		return err
	}
	defer p.Kill()
	if err := node.WaitReady(p, 10*time.Second); err != nil {
		return err
	}
	if _, err := client(node, harness.LocalIP, "-queries", cachedMix, "-rate", "500", "-duration", "1s"); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mixed := node.StartMixedLoad(ctx, 100, profileFor+2*time.Second)
	saturated := make(chan error, 1)
	go func() {
		_, err := saturate(node, harness.LocalIP, profileFor+time.Second)
		saturated <- err
	}()
	prof, err := node.Host.HTTPGetTimeout(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", pprofAddr, int(profileFor.Seconds())), profileFor+10*time.Second)
	if err != nil {
		return fmt.Errorf("CPU profile: %w", err)
	}
	if err := <-saturated; err != nil {
		return err
	}
	<-mixed
	if err := os.WriteFile(out, []byte(prof), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote a %v CPU profile of node-cache (%d bytes) to %s\n", profileFor, len(prof), out)
	return nil
}
