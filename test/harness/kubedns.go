package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Records served by the simulated kube-dns.
const (
	KubernetesSvc  = "kubernetes.default.svc.cluster.local."
	KubernetesIP   = "198.18.0.1"
	WebSvc         = "web.default.svc.cluster.local."
	WebIP          = "198.18.4.10"
	WebIPv6        = "2001:2::10"
	WebSRV         = "_http._tcp.web.default.svc.cluster.local."
	ExternalDomain = "example.org."
	ExternalIP     = "198.18.5.5" // every name under example.org resolves to it
	ExternalIPv6   = "2001:2::5"
)

// clusterZone's {{SERIAL}} and {{FILL}} change with SetFillAddress.
const clusterZone = `$ORIGIN cluster.local.
@ 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. {{SERIAL}} 7200 1800 86400 5
@ 30 IN NS ns.dns.cluster.local.
ns.dns 30 IN A 198.18.0.10
kubernetes.default.svc 30 IN A 198.18.0.1
kube-dns.kube-system.svc 30 IN A 198.18.0.10
kube-dns-upstream.kube-system.svc 30 IN A 198.18.0.11
web.default.svc 30 IN A 198.18.4.10
web.default.svc 30 IN AAAA 2001:2::10
_http._tcp.web.default.svc 30 IN SRV 0 100 80 web.default.svc.cluster.local.
*.fill.svc 30 IN A {{FILL}}
`

// FillIP is what every name under fill.svc.cluster.local resolves to, until
// SetFillAddress changes it.
const FillIP = "198.18.4.99"

const reverseZone = `$ORIGIN in-addr.arpa.
@ 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5
@ 30 IN NS ns.dns.cluster.local.
1.0.18.198 30 IN PTR kubernetes.default.svc.cluster.local.
10.0.18.198 30 IN PTR kube-dns.kube-system.svc.cluster.local.
10.4.18.198 30 IN PTR web.default.svc.cluster.local.
*.fill 30 IN PTR fill.svc.cluster.local.
`

// kubeDNSCorefile serves cluster.local and in-addr.arpa from zone files, any
// name under example.org from a template (the fake internet), NXDOMAIN for
// everything else, and counts queries in coredns_dns_requests_total.
const kubeDNSCorefile = `cluster.local:53 {
    bind {{IP}}
    file {{DIR}}/db.cluster.local {
        reload 500ms
    }
    prometheus {{METRICS}}
}
in-addr.arpa:53 {
    bind {{IP}}
    file {{DIR}}/db.in-addr.arpa
    prometheus {{METRICS}}
}
example.org:53 {
    bind {{IP}}
    template IN A {
        answer "{{ .Name }} 60 IN A 198.18.5.5"
    }
    template IN AAAA {
        answer "{{ .Name }} 60 IN AAAA 2001:2::5"
    }
    prometheus {{METRICS}}
}
.:53 {
    bind {{IP}}
    template ANY ANY {
        rcode NXDOMAIN
    }
    prometheus {{METRICS}}
}
`

// KubeDNSMetrics is where the simulated kube-dns serves metrics, inside its netns.
const KubeDNSMetrics = "127.0.0.1:9153"

// writeKubeDNSConfig writes kube-dns's files in dir; it listens on ips.
func writeKubeDNSConfig(dir string, ips ...string) (string, error) {
	files := map[string]string{
		"db.cluster.local": fillZone(1, FillIP),
		"db.in-addr.arpa":  reverseZone,
		"Corefile.kdns": strings.NewReplacer("{{IP}}", strings.Join(ips, " "), "{{DIR}}", dir, "{{METRICS}}", KubeDNSMetrics).
			Replace(kubeDNSCorefile),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return "", fmt.Errorf("write %s: %w", name, err)
		}
	}
	return filepath.Join(dir, "Corefile.kdns"), nil
}

func fillZone(serial int, fill string) string {
	return strings.NewReplacer("{{SERIAL}}", fmt.Sprint(serial), "{{FILL}}", fill).Replace(clusterZone)
}

// SetFillAddress makes kube-dns answer ip for every name under
// fill.svc.cluster.local, within a second (it reloads the zone on a new
// serial), as when a headless Service's pods move.
func (n *Node) SetFillAddress(ip string) error {
	n.zoneSerial++
	path := filepath.Join(n.Dir, "db.cluster.local")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(fillZone(n.zoneSerial+1, ip)), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// SilenceKubeDNS makes kube-dns drop every DNS packet it gets, as a hung or
// blackholed kube-dns does (no answer, no refusal), or answer again.
func (n *Node) SilenceKubeDNS(silent bool) error {
	op := "-D"
	if silent {
		op = "-I"
	}
	for _, proto := range []string{"udp", "tcp"} {
		if err := n.KubeDNS.Run(n.Opts.Backend.IPTables(), "-w", op, "INPUT", "-p", proto, "--dport", "53", "-j", "DROP"); err != nil {
			return err
		}
	}
	return nil
}

// MoveClusterIP emulates the kube-dns Service recreated with ClusterIP ip:
// kube-proxy (iptables mode) sends ip to kube-dns and forgets ClusterIP.
func (n *Node) MoveClusterIP(ip string) error {
	if n.Opts.Mode != ModeIPTables {
		return fmt.Errorf("MoveClusterIP emulates kube-proxy's iptables mode only")
	}
	ipt := n.Opts.Backend.IPTables()
	for _, proto := range []string{"udp", "tcp"} {
		rule := func(svc string) []string {
			return []string{"-t", "nat", "KUBE-SERVICES", "-d", svc + "/32", "-p", proto, "--dport", "53",
				"-m", "comment", "--comment", "kube-system/kube-dns:dns", "-j", "DNAT", "--to-destination", KubeDNSPodIP + ":53"}
		}
		add, del := rule(ip), rule(ClusterIP)
		if err := n.Host.Run(ipt, append([]string{"-w", "5", add[0], add[1], "-A"}, add[2:]...)...); err != nil {
			return err
		}
		if err := n.Host.Run(ipt, append([]string{"-w", "5", del[0], del[1], "-D"}, del[2:]...)...); err != nil {
			return err
		}
	}
	return nil
}
