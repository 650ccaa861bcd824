package harness

import "net"

// The node's IPv6 addresses (Options.IPv6), in the benchmarking range
// 2001:2::/48. The cache's own is not link-local, as an IPv6 cache's
// fd00::10 is not: nodelocal is told it is the cache's own (`local`).
const (
	LocalIPv6       = "2001:2::a"
	ClusterIPv6     = "2001:2:0:1::10"
	UpstreamIPv6    = "2001:2:0:1::11"
	KubeDNSPodIPv6  = "2001:2:0:2::2"
	nodeToKubeDNSv6 = "2001:2:0:2::1"
	ServiceCIDRv6   = "2001:2:0:1::/112"
	podSubnetFmtv6  = "2001:2:0:%x::%s" // pod i: 2001:2:0:(10+i)::2, its gateway ::1
)

// Family is the addresses node-cache serves on a node, and where they go.
type Family struct {
	Local, Cluster, Upstream, KubeDNSPod string
}

// The families of the simulated node.
var (
	IPv4 = Family{Local: LocalIP, Cluster: ClusterIP, Upstream: UpstreamIP, KubeDNSPod: KubeDNSPodIP}
	IPv6 = Family{Local: LocalIPv6, Cluster: ClusterIPv6, Upstream: UpstreamIPv6, KubeDNSPod: KubeDNSPodIPv6}
)

// Family is the family node-cache serves on this node.
func (n *Node) Family() Family {
	if n.Opts.IPv6 {
		return IPv6
	}
	return IPv4
}

func (f Family) is6() bool { return f == IPv6 }

// nftFamily is the family's nf_tables name, as in `ip6 daddr`.
func (f Family) nftFamily() string {
	if f.is6() {
		return "ip6"
	}
	return "ip"
}

// host is ip as a host prefix.
func (f Family) host(ip string) string {
	if f.is6() {
		return ip + "/128"
	}
	return ip + "/32"
}

// port53 is ip's DNS port, as iptables and nft take it.
func (f Family) port53(ip string) string { return net.JoinHostPort(ip, "53") }
