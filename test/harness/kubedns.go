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

const clusterZone = `$ORIGIN cluster.local.
@ 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5
@ 30 IN NS ns.dns.cluster.local.
ns.dns 30 IN A 198.18.0.10
kubernetes.default.svc 30 IN A 198.18.0.1
kube-dns.kube-system.svc 30 IN A 198.18.0.10
kube-dns-upstream.kube-system.svc 30 IN A 198.18.0.11
web.default.svc 30 IN A 198.18.4.10
web.default.svc 30 IN AAAA 2001:2::10
_http._tcp.web.default.svc 30 IN SRV 0 100 80 web.default.svc.cluster.local.
*.fill.svc 30 IN A 198.18.4.99
`

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
    file {{DIR}}/db.cluster.local
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

func writeKubeDNSConfig(dir string) (string, error) {
	files := map[string]string{
		"db.cluster.local": clusterZone,
		"db.in-addr.arpa":  reverseZone,
		"Corefile.kdns": strings.NewReplacer("{{IP}}", KubeDNSPodIP, "{{DIR}}", dir, "{{METRICS}}", KubeDNSMetrics).
			Replace(kubeDNSCorefile),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return "", fmt.Errorf("write %s: %w", name, err)
		}
	}
	return filepath.Join(dir, "Corefile.kdns"), nil
}
