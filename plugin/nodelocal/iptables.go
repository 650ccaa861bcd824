package nodelocal

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"slices"
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
	Insert(r Rule, position int) error // at position in its chain, 1 the first
	Append(r Rule) error               // last in its chain
	Delete(r Rule) error
	// InsertAll puts rules first in their chains, and DeleteAll removes
	// them, in one process (iptables-restore) for all.
	InsertAll(rules []Rule) error
	DeleteAll(rules []Rule) error
	// NewChain makes an empty chain; DeleteChain removes one, with its rules.
	NewChain(table, chain string) error
	DeleteChain(table, chain string) error
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
// the xtables lock), a plain listing of a whole table for checks, and its
// iptables-restore for changes in bulk.
type iptablesCmd struct {
	path        string
	restorePath string
	ipt         *iptables.IPTables
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
	restorePath, err := exec.LookPath(name + "-restore")
	if err != nil {
		return nil, fmt.Errorf("iptables binary %s-restore not found in PATH: install the iptables package (both backends), or set `iptables off`", name)
	}
	return &iptablesCmd{path: path, restorePath: restorePath, ipt: ipt}, nil
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

func (c *iptablesCmd) Insert(r Rule, position int) error {
	return c.ipt.Insert(r.Table, r.Chain, position, r.Args...)
}
func (c *iptablesCmd) Append(r Rule) error { return c.ipt.Append(r.Table, r.Chain, r.Args...) }
func (c *iptablesCmd) Delete(r Rule) error { return c.ipt.Delete(r.Table, r.Chain, r.Args...) }

func (c *iptablesCmd) NewChain(table, chain string) error { return c.ipt.NewChain(table, chain) }
func (c *iptablesCmd) DeleteChain(table, chain string) error {
	return c.ipt.ClearAndDeleteChain(table, chain)
}

func (c *iptablesCmd) InsertAll(rules []Rule) error { return c.restore("-I", rules) }
func (c *iptablesCmd) DeleteAll(rules []Rule) error { return c.restore("-D", rules) }

// restore runs iptables-restore without flushing anything, with one command
// (-I: at the top, -D) per rule, each table's committed at once.
func (c *iptablesCmd) restore(command string, rules []Rule) error {
	var in strings.Builder
	for _, table := range tablesOf(rules) {
		fmt.Fprintf(&in, "*%s\n", table)
		for _, r := range rules {
			if r.Table != table {
				continue
			}
			if command == "-I" {
				fmt.Fprintf(&in, "-I %s 1 %s\n", r.Chain, r.spec())
			} else {
				fmt.Fprintf(&in, "-D %s %s\n", r.Chain, r.spec())
			}
		}
		in.WriteString("COMMIT\n")
	}
	cmd := exec.Command(c.restorePath, "-w", fmt.Sprint(lockWaitSeconds), "--noflush")
	cmd.Stdin = strings.NewReader(in.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s of %d rules: %v: %s", c.restorePath, command, len(rules), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// tablesOf lists the tables rules are in, in their order.
func tablesOf(rules []Rule) []string {
	var tables []string
	for _, r := range rules {
		if !slices.Contains(tables, r.Table) {
			tables = append(tables, r.Table)
		}
	}
	return tables
}

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
					legacyHint = ": the missing NET_RAW capability; " + addNetRaw
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

// legacyTablesFile lists the iptables-legacy tables of this network
// namespace; the kernel makes one only when something first uses it.
const legacyTablesFile = "/proc/net/ip_tables_names"

// listWithBinary is DetectBackend's listing on a real node. A legacy table
// the kernel never made holds no rules: it is not listed, so a node whose
// rules are all in nf_tables needs no NET_RAW (which reading iptables-legacy
// takes), and no legacy table is made here.
func listWithBinary(b Backend, table string) (string, error) {
	if b == BackendLegacy {
		if names, err := os.ReadFile(legacyTablesFile); errors.Is(err, fs.ErrNotExist) || err == nil && !slices.Contains(strings.Fields(string(names)), table) {
			return "\n", nil
		}
	}
	cmd := exec.Command(binaryName(b, IPv4), "-w", fmt.Sprint(lockWaitSeconds), "-t", table, "-S")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil && strings.Contains(stderr.String(), "Permission denied") {
		return "", fmt.Errorf("%w: %s", errPermission, strings.TrimSpace(stderr.String()))
	}
	return "\n" + string(out), err
}
