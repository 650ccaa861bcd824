package harness

import (
	"fmt"
	"strings"
)

// ProxyMode is the kube-proxy flavour being emulated.
type ProxyMode string

const (
	ModeIPTables ProxyMode = "iptables"
	ModeIPVS     ProxyMode = "ipvs"
	ModeNFTables ProxyMode = "nftables"
)

// Backend is the iptables backend the node's kube-proxy rules live in.
type Backend string

const (
	BackendLegacy Backend = "legacy"
	BackendNFT    Backend = "nft"
)

// Modes and Backends list every flavour, for table-driven tests.
var (
	Modes    = []ProxyMode{ModeIPTables, ModeIPVS, ModeNFTables}
	Backends = []Backend{BackendLegacy, BackendNFT}
)

// IPTables is the iptables command of the backend.
func (b Backend) IPTables() string { return "iptables-" + string(b) }

// IP6Tables is the ip6tables command of the backend.
func (b Backend) IP6Tables() string { return "ip6tables-" + string(b) }

// installKubeProxy DNATs both kube-dns Service IPs to the kube-dns pod, the
// way the emulated kube-proxy mode does it, in each family of the node.
func (n *Node) installKubeProxy() error {
	families := []Family{IPv4}
	if n.Opts.IPv6 {
		families = append(families, IPv6)
	}
	switch n.Opts.Mode {
	case ModeNFTables:
		for _, f := range families {
			rules := nftServiceRules(f, f.Cluster, f.Upstream)
			script := "table " + f.nftFamily() + " kube-proxy {\n" +
				"  chain nat-prerouting {\n    type nat hook prerouting priority dstnat;\n" + rules + "  }\n" +
				"  chain nat-output {\n    type nat hook output priority -100;\n" + rules + "  }\n}\n"
			if err := n.nft(script); err != nil {
				return err
			}
		}
		return nil
	case ModeIPVS:
		// kube-proxy IPVS puts every ClusterIP on kube-ipvs0 (a dummy link; a
		// port-less bridge here, where dummy is missing). The DNAT below stands
		// in for the IPVS virtual server.
		if err := n.Host.Run("ip", "link", "add", "kube-ipvs0", "type", "bridge"); err != nil {
			return err
		}
		for _, f := range families {
			for _, svc := range []string{f.Cluster, f.Upstream} {
				if err := n.Host.Run("ip", "addr", "add", f.host(svc), "dev", "kube-ipvs0"); err != nil {
					return err
				}
			}
		}
	}
	for _, f := range families {
		cmds := [][]string{
			{"-t", "mangle", "-N", "KUBE-IPTABLES-HINT"},
			{"-t", "mangle", "-N", "KUBE-KUBELET-CANARY"},
			{"-t", "nat", "-N", "KUBE-SERVICES"},
			{"-t", "nat", "-A", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"},
			{"-t", "nat", "-A", "OUTPUT", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"},
		}
		for _, svc := range []string{f.Cluster, f.Upstream} {
			cmds = append(cmds, iptablesServiceRules(f, "-A", svc)...)
		}
		if err := n.iptables(f, cmds...); err != nil {
			return err
		}
	}
	return nil
}

// DeleteUpstreamService does what kube-proxy does when the kube-dns-upstream
// Service is deleted (an uninstall): its rules go, and so do its UDP
// conntrack entries. IPv4 only.
func (n *Node) DeleteUpstreamService() error {
	var err error
	switch n.Opts.Mode {
	case ModeNFTables:
		rules := nftServiceRules(IPv4, ClusterIP)
		err = n.nft("flush chain ip kube-proxy nat-prerouting\nflush chain ip kube-proxy nat-output\n" +
			"table ip kube-proxy {\n  chain nat-prerouting {\n" + rules + "  }\n  chain nat-output {\n" + rules + "  }\n}\n")
	case ModeIPVS:
		if err = n.Host.Run("ip", "addr", "del", UpstreamIP+"/32", "dev", "kube-ipvs0"); err == nil {
			err = n.iptables(IPv4, iptablesServiceRules(IPv4, "-D", UpstreamIP)...)
		}
	default:
		err = n.iptables(IPv4, iptablesServiceRules(IPv4, "-D", UpstreamIP)...)
	}
	if err != nil {
		return err
	}
	// conntrack -D exits 1 when it deleted nothing
	_ = n.Host.Run("conntrack", "-D", "-p", "udp", "--orig-dst", UpstreamIP)
	return nil
}

// iptablesServiceRules are the commands that add (op -A) or delete (-D) a
// Service's DNAT rules.
func iptablesServiceRules(f Family, op, svc string) [][]string {
	var cmds [][]string
	for _, proto := range []string{"udp", "tcp"} {
		cmds = append(cmds, []string{"-t", "nat", op, "KUBE-SERVICES", "-d", f.host(svc), "-p", proto, "--dport", "53",
			"-m", "comment", "--comment", "kube-system/kube-dns:dns", "-j", "DNAT", "--to-destination", f.port53(f.KubeDNSPod)})
	}
	return cmds
}

// nftServiceRules are the services' DNAT rules in a kube-proxy nft chain.
func nftServiceRules(f Family, services ...string) string {
	var rules strings.Builder
	for _, svc := range services {
		for _, proto := range []string{"udp", "tcp"} {
			fmt.Fprintf(&rules, "    %s daddr %s %s dport 53 dnat to %s\n", f.nftFamily(), svc, proto, f.port53(f.KubeDNSPod))
		}
	}
	return rules.String()
}

func (n *Node) nft(script string) error {
	cmd := n.Host.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %v: %s", err, out)
	}
	return nil
}

func (n *Node) iptables(f Family, cmds ...[]string) error {
	ipt := n.Opts.Backend.IPTables()
	if f.is6() {
		ipt = n.Opts.Backend.IP6Tables()
	}
	for _, args := range cmds {
		if err := n.Host.Run(ipt, append([]string{"-w", "5"}, args...)...); err != nil {
			return err
		}
	}
	return nil
}
