package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Addresses of the node, all in 198.18.0.0/15.
const (
	NodeIP       = "198.19.255.1" // the control plane node's InternalIP: kubelet, the API server; workers' follow
	lanCIDR      = "198.19.255.0/24"
	ServiceCIDR  = "198.18.0.0/16"
	KubeDNSIP    = "198.18.0.10"
	APIServiceIP = "198.18.0.1"
	// The fake internet: a resolver in a namespace of its own, the node's
	// only upstream (kubelet's resolvConf), answering every name under
	// example.org with ExternalIP.
	UpstreamIP     = "198.19.254.53"
	upstreamGW     = "198.19.254.1"
	upstreamCIDR   = "198.19.254.0/24"
	ExternalDomain = "example.org"
	ExternalIP     = "198.19.254.99"
	// BigAnswerBytes is about the size of the fake internet's TXT answers.
	BigAnswerBytes = 30_000
	// NodeName is the control plane node's name in the API; workers'
	// follow (NodeName-w1, ...).
	NodeName = "nodelocal-test"
)

// Image names the node imports.
const (
	PauseImage      = "registry.k8s.io/pause:3.10"
	KubeDNSImage    = "registry.k8s.io/coredns/coredns:v1.15.0"
	ClientImage     = "nodelocal.test/client:1"
	NodeCacheImage  = "nodelocal.test/node-cache:e2e" // the make image archive, tagged for the tests
	shippedImageRef = "ghcr.io/nodelocal/node-cache:0.1.0"
)

func (c *Cluster) path(parts ...string) string {
	return filepath.Join(append([]string{c.Dir}, parts...)...)
}

func writeFile(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), 0o644)
}

// writeResolvConf writes what every process of the nodes' mount namespaces
// sees: the fake upstream only, never the machine's resolver.
func (c *Cluster) writeResolvConf() error {
	return writeFile(c.path("resolv.conf"), "nameserver "+UpstreamIP+"\n")
}

// writeConfigs writes the node's containerd, CNI, kubelet and kube-proxy
// configuration.
func (n *Node) writeConfigs() error {
	files := map[string]string{
		"containerd/config.toml": fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q

[grpc]
  address = %[3]q

[plugins."io.containerd.cri.v1.runtime"]
  # No process here may lower an oom_score_adj (no CAP_SYS_RESOURCE).
  restrict_oom_score_adj = true
  # Pod network namespaces are pinned here, not under /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = %[4]q
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      BinaryName = "/usr/sbin/runc"

# NRI's socket is a fixed path, /var/run/nri/nri.sock, on the machine's
# filesystem: the nodes' containerds, booting side by side, would race for it.
[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %[5]q
`, n.path("containerd", "root"), n.path("containerd", "state"), n.socket(), n.path("cni", "net.d"), PauseImage),
		"cni/net.d/10-nodelocal-test.conflist": fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "nodelocal-test",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": %q, "gateway": %q}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}
  }]
}
`, n.PodCIDR(), n.podGateway(), n.path("cni", "ipam")),
		"kubelet/config.yaml": fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /%[1]s
failSwapOn: false
enforceNodeAllocatable: []
containerRuntimeEndpoint: unix://%[2]s
address: %[3]s
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
podLogsDir: %[4]s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %[5]s}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
clusterDNS: [%[6]s]
resolvConf: %[7]s
serializeImagePulls: false
# ConfigMap edits reach pods within seconds (the default is a minute).
syncFrequency: 10s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
`, cgroupRoot(n.c.state.Name, n.Index), n.socket(), n.IP(), n.path("pod-logs"), n.c.pki.path("ca.crt"), n.c.clusterDNS(), n.c.path("resolv.conf")),
		"kube-proxy/config.yaml": fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: %[1]s
clusterCIDR: 198.19.0.0/16
hostnameOverride: %[2]s
clientConnection: {kubeconfig: %[3]s}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# conntrack limits are machine-wide sysctls: leave them alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
`, n.c.Opts.ProxyMode, n.Name, n.c.path("kube-proxy.kubeconfig")),
	}
	for name, content := range files {
		if err := writeFile(n.path(name), content); err != nil {
			return err
		}
	}
	return nil
}

// kubeDNSManifest is kube-dns as kubeadm deploys it: CoreDNS with the
// kubernetes plugin, its RBAC and ConfigMap, a Deployment of replicas
// (placed on node, if set) and the kube-dns Service on 198.18.0.10.
func kubeDNSManifest(replicas int, node string) string {
	placement := ""
	if node != "" {
		placement = "      nodeSelector: {kubernetes.io/hostname: " + node + "}\n"
	}
	return `apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {kind: ServiceAccount, name: coredns, namespace: kube-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health {
           lameduck 5s
        }
        ready
        kubernetes cluster.local in-addr.arpa ip6.arpa {
           pods insecure
           fallthrough in-addr.arpa ip6.arpa
           ttl 30
        }
        prometheus :9153
        forward . /etc/resolv.conf {
           max_concurrent 1000
        }
        cache 30
        loop
        reload
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: ` + strconv.Itoa(replicas) + `
  selector:
    matchLabels: {k8s-app: kube-dns}
  template:
    metadata:
      labels: {k8s-app: kube-dns}
    spec:
` + placement + `      priorityClassName: system-cluster-critical
      serviceAccountName: coredns
      dnsPolicy: Default
      containers:
      - name: coredns
        image: ` + KubeDNSImage + `
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        - {name: metrics, containerPort: 9153, protocol: TCP}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
        volumeMounts:
        - {name: config-volume, mountPath: /etc/coredns, readOnly: true}
      volumes:
      - name: config-volume
        configMap: {name: coredns}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  selector: {k8s-app: kube-dns}
  clusterIP: ` + KubeDNSIP + `
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
  - {name: metrics, port: 9153, protocol: TCP}
`
}

// upstreamCorefile is the fake internet's resolver. Its TXT answers are
// large (BigAnswerBytes, over TCP), for filling a cache until its memory
// limit.
var upstreamCorefile = `example.org:53 {
    bind ` + UpstreamIP + `
    template IN A {
        answer "{{ .Name }} 60 IN A ` + ExternalIP + `"
    }
    template IN AAAA {
        rcode NOERROR
    }
    template IN TXT {
` + strings.Repeat(`        answer "{{ .Name }} 60 IN TXT `+strings.Repeat(strings.Repeat("x", 250)+" ", 40)+`"
`, BigAnswerBytes/10_000) + `    }
}
.:53 {
    bind ` + UpstreamIP + `
    template ANY ANY {
        rcode NXDOMAIN
    }
}
`
