package nodelocal

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// preflight fails before anything touches the network when the process cannot
// do what the config asks: one line naming what is missing and the fix.
var preflight = func(cfg *Config) error {
	if !cfg.ManageInterface && cfg.Backend == BackendOff {
		return nil
	}
	caps, err := effectiveCapabilities()
	if err != nil {
		return err
	}
	if caps&(1<<capNetAdmin) == 0 {
		return fmt.Errorf("missing NET_ADMIN capability, needed to manage interface %s and iptables rules: "+
			"add NET_ADMIN to the container's securityContext.capabilities (or set no_interface and `iptables off`)", cfg.Interface)
	}
	if cfg.Backend == BackendOff {
		return nil
	}
	backends := []Backend{cfg.Backend}
	if cfg.Backend == BackendAuto {
		backends = []Backend{BackendNFT, BackendLegacy}
	}
	var missing []string
	for _, f := range cfg.Families() {
		found := false
		for _, b := range backends {
			if _, err := exec.LookPath(binaryName(b, f)); err == nil {
				found = true
			} else {
				missing = append(missing, binaryName(b, f))
			}
		}
		if !found {
			return fmt.Errorf("iptables binary %s not found in PATH: install the iptables package (both backends), or set `iptables off`",
				strings.Join(missing, " or "))
		}
	}
	if cfg.Backend == BackendLegacy && caps&(1<<capNetRaw) == 0 {
		return fmt.Errorf("missing NET_RAW capability, needed by iptables-legacy: %s", addNetRaw)
	}
	return nil
}

// addNetRaw says how to give node-cache NET_RAW on a node whose rules are in
// iptables-legacy.
const addNetRaw = "add NET_RAW to the container's securityContext.capabilities " +
	"(the manifests' overlays/iptables-legacy, or the chart's iptablesLegacy value)"

const (
	capNetAdmin = 12
	capNetRaw   = 13
)

// effectiveCapabilities reads the CapEff mask of this process.
func effectiveCapabilities() (uint64, error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("read capabilities: %w", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		}
	}
	return 0, fmt.Errorf("no CapEff line in /proc/self/status")
}
