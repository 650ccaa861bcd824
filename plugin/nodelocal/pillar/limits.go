package pillar

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Each forward's max_concurrent is one query in flight per this much of the
// memory limit: 1024 for the DaemonSet's 256 MiB. A query waiting for a
// silent upstream holds a goroutine and its buffers (a few KiB); capped this
// way, the four forwards of the shipped Corefile cannot pile up more than a
// small share of the limit, and further misses get REFUSED at once instead of
// growing the cache past its limit until the kernel kills it.
const memoryPerQuery = 256 << 10

// Bounds of max_concurrent, and its value when the limit is unknown (as for
// 256 MiB).
const (
	minConcurrent     = 128
	maxConcurrent     = 16384
	defaultConcurrent = 1024
)

// cgroupMemoryLimits are where the container's memory limit is read when
// GOMEMLIMIT is not set: cgroup v2, then v1.
var cgroupMemoryLimits = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

var goMemLimit = regexp.MustCompile(`^([0-9]+)(B|KiB|MiB|GiB|TiB)?$`)

// memoryLimit is the process's memory limit in bytes, and where it was read;
// 0 when there is none.
func memoryLimit(env *Environment) (int64, string, error) {
	if v := env.Getenv("GOMEMLIMIT"); v != "" && v != "off" {
		m := goMemLimit.FindStringSubmatch(v)
		if m == nil {
			return 0, "", fmt.Errorf("$GOMEMLIMIT %q is not a size such as 256MiB", v)
		}
		n, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil {
			return 0, "", fmt.Errorf("$GOMEMLIMIT %q: %w", v, err)
		}
		shift := map[string]uint{"": 0, "B": 0, "KiB": 10, "MiB": 20, "GiB": 30, "TiB": 40}[m[2]]
		return n << shift, "$GOMEMLIMIT", nil
	}
	for _, path := range cgroupMemoryLimits {
		b, err := env.ReadFile(path)
		if err != nil {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || n >= 1<<50 {
			return 0, "", nil // "max", or v1's "no limit"
		}
		return n, path, nil
	}
	return 0, "", nil
}

// forwardConcurrency is max_concurrent for each forward, from the memory limit.
func forwardConcurrency(env *Environment) (int, error) {
	limit, _, err := memoryLimit(env)
	if err != nil || limit == 0 {
		return defaultConcurrent, err
	}
	return min(max(int(limit/memoryPerQuery), minConcurrent), maxConcurrent), nil
}
