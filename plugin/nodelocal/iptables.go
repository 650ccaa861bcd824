package nodelocal

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// Backend is the iptables backend rules are written to.
type Backend string

const (
	BackendAuto   Backend = "auto"
	BackendLegacy Backend = "legacy"
	BackendNFT    Backend = "nft"
	BackendOff    Backend = "off"
)

// RuleTables reads and changes the rules of one IP family.
type RuleTables interface {
	// List returns `iptables -t TABLE -S`: one process per table.
	List(table string) (string, error)
	// ListChain returns `iptables -t TABLE -S CHAIN`.
	ListChain(table, chain string) (string, error)
	Insert(r Rule) error // first in its chain
	Append(r Rule) error // last in its chain
	Delete(r Rule) error
}

// lockWaitSeconds bounds how long one iptables call waits for the xtables lock.
const lockWaitSeconds = 5

// binaryName is the iptables command of a backend and family.
func binaryName(b Backend, f Family) string {
	name := "iptables"
	if f == IPv6 {
		name = "ip6tables"
	}
	return name + "-" + string(b)
}

// iptablesCmd runs one iptables binary: go-iptables for changes (it waits for
// the xtables lock), a plain listing of a whole table for checks.
type iptablesCmd struct {
	path string
	ipt  *iptables.IPTables
}

func newIPTablesCmd(b Backend, f Family) (*iptablesCmd, error) {
	name := binaryName(b, f)
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("iptables binary %s not found in PATH: install the iptables package (both backends), or set `iptables off`", name)
	}
	proto := iptables.ProtocolIPv4
	if f == IPv6 {
		proto = iptables.ProtocolIPv6
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Path(path), iptables.Timeout(lockWaitSeconds))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &iptablesCmd{path: path, ipt: ipt}, nil
}

func (c *iptablesCmd) List(table string) (string, error) { return c.ListChain(table, "") }

func (c *iptablesCmd) ListChain(table, chain string) (string, error) {
	args := []string{"-w", fmt.Sprint(lockWaitSeconds), "-t", table, "-S"}
	if chain != "" {
		args = append(args, chain)
	}
	cmd := exec.Command(c.path, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %v: %s", c.path, strings.Join(args[2:], " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

func (c *iptablesCmd) Insert(r Rule) error { return c.ipt.Insert(r.Table, r.Chain, 1, r.Args...) }
func (c *iptablesCmd) Append(r Rule) error { return c.ipt.Append(r.Table, r.Chain, r.Args...) }
func (c *iptablesCmd) Delete(r Rule) error { return c.ipt.Delete(r.Table, r.Chain, r.Args...) }

// isLockError tells xtables lock contention from other iptables failures.
func isLockError(err error) bool {
	var e *iptables.Error
	msg := err.Error()
	if errors.As(err, &e) {
		msg = e.Error()
	}
	return strings.Contains(msg, "xtables lock") || strings.Contains(msg, "Resource temporarily unavailable")
}

// kubeHintChains are created by kubelet and kube-proxy in the backend the node
// uses; kube's iptables-wrapper looks for the same ones.
var kubeHintChains = []string{"-N KUBE-IPTABLES-HINT", "-N KUBE-KUBELET-CANARY"}

// errPermission marks a backend whose rules this process may not read.
var errPermission = errors.New("permission denied")

// DetectBackend picks the backend the node's kube rules live in: the one
// holding kubelet's hint chains (nft first), else the one with more nat rules,
// else nft. list returns `iptables-BACKEND -t TABLE -S`, or an error when that
// backend is unusable; a backend it may not read (errPermission) makes the
// answer unknowable, which is an error rather than a guess.
func DetectBackend(list func(b Backend, table string) (string, error)) (Backend, error) {
	outputs := map[Backend]map[string]string{}
	for _, b := range []Backend{BackendNFT, BackendLegacy} {
		outputs[b] = map[string]string{}
		for _, table := range []string{"mangle", "nat"} {
			out, err := list(b, table)
			if errors.Is(err, errPermission) {
				legacyHint := ""
				if b == BackendLegacy {
					legacyHint = ": the missing NET_RAW capability; add NET_RAW to the container's securityContext.capabilities"
				}
				return "", fmt.Errorf("cannot read the iptables-%s rules to find the node's backend (%v)%s", b, err, legacyHint)
			}
			if err == nil {
				outputs[b][table] = out
			}
		}
	}
	for _, b := range []Backend{BackendNFT, BackendLegacy} {
		for _, hint := range kubeHintChains {
			if strings.Contains(outputs[b]["mangle"], hint) {
				return b, nil
			}
		}
	}
	count := func(b Backend) int {
		out, ok := outputs[b]["nat"]
		if !ok {
			return -1
		}
		return strings.Count(out, "\n-A ")
	}
	if count(BackendLegacy) > count(BackendNFT) {
		return BackendLegacy, nil
	}
	return BackendNFT, nil
}

// listWithBinary is DetectBackend's listing on a real node.
func listWithBinary(b Backend, table string) (string, error) {
	cmd := exec.Command(binaryName(b, IPv4), "-w", fmt.Sprint(lockWaitSeconds), "-t", table, "-S")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil && strings.Contains(stderr.String(), "Permission denied") {
		return "", fmt.Errorf("%w: %s", errPermission, strings.TrimSpace(stderr.String()))
	}
	return "\n" + string(out), err
}
