package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	corev1 "k8s.io/api/core/v1"
)

// PodRuntime is what the kubelet adds to a pod's spec on this node: the
// Service variables, the ConfigMaps' contents, the node's resolv.conf.
type PodRuntime struct {
	Node       *Node
	ServiceEnv []string                     // NAME_SERVICE_HOST=... for the Services of the pod's namespace
	ConfigMaps map[string]map[string]string // name → data; a missing one is absent from the cluster
	ResolvConf string                       // the node's resolv.conf, for dnsPolicy Default
	VolumeDir  string                       // where configMap volumes are written
}

// OCISpec is the runtime spec a kubelet and containerd would give container
// c of pod on this node, for image img: its command, environment,
// capabilities, read-only root, volumes, memory limit and, for hostNetwork,
// the node's network namespace. What the translation does not know is an
// error, so a manifest change cannot pass unnoticed.
func OCISpec(pod *corev1.PodSpec, c *corev1.Container, img *Image, rt PodRuntime) (*specs.Spec, error) {
	if err := os.MkdirAll(rt.VolumeDir, 0o755); err != nil {
		return nil, err
	}
	args := append(append([]string{}, img.Config.Config.Entrypoint...), img.Config.Config.Cmd...)
	if len(c.Command) > 0 {
		args = append([]string{}, c.Command...)
	} else if len(c.Args) > 0 {
		args = append(append([]string{}, img.Config.Config.Entrypoint...), c.Args...)
	}
	env, err := containerEnv(c, img.Config.Config.Env, rt.ServiceEnv)
	if err != nil {
		return nil, err
	}
	caps, err := capabilities(c.SecurityContext)
	if err != nil {
		return nil, err
	}
	sc := c.SecurityContext
	spec := &specs.Spec{
		Version: "1.0.2-dev",
		Process: &specs.Process{
			Args: args, Env: env, Cwd: "/",
			User:            specs.User{UID: 0, GID: 0},
			Capabilities:    &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
			NoNewPrivileges: sc != nil && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation,
		},
		Root:   &specs.Root{Path: img.Rootfs, Readonly: sc != nil && sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem},
		Mounts: defaultMounts(),
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.MountNamespace}},
			MaskedPaths: []string{"/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
				"/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
	if pod.HostNetwork {
		// The node's network namespace; the UTS one stays shared too, as kubelet does.
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/var/run/netns/" + rt.Node.Host.Name})
	} else {
		return nil, fmt.Errorf("pod network: only hostNetwork pods run here")
	}
	if limit, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		bytes := limit.Value()
		spec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &bytes}}
	}
	switch pod.DNSPolicy {
	case corev1.DNSDefault:
		spec.Mounts = append(spec.Mounts, bind(rt.ResolvConf, "/etc/resolv.conf", true))
	default:
		return nil, fmt.Errorf("dnsPolicy %q: only Default (the node's resolv.conf) is translated", pod.DNSPolicy)
	}
	// Files kubelet mounts into every container: /etc/hosts (the node's, for
	// hostNetwork) and the termination log, writable.
	for _, f := range []struct {
		name, dst, content string
		readOnly           bool
	}{{"etc-hosts", "/etc/hosts", "127.0.0.1 localhost\n", true}, {"termination-log", "/dev/termination-log", "", false}} {
		path := filepath.Join(rt.VolumeDir, f.name)
		if err := os.WriteFile(path, []byte(f.content), 0o644); err != nil {
			return nil, err
		}
		spec.Mounts = append(spec.Mounts, bind(path, f.dst, f.readOnly))
	}
	for _, vm := range c.VolumeMounts {
		m, err := volumeMount(pod, vm, rt)
		if err != nil {
			return nil, err
		}
		spec.Mounts = append(spec.Mounts, m)
	}
	return spec, nil
}

// defaultMounts are what every container gets from the runtime.
func defaultMounts() []specs.Mount {
	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
	}
}

func bind(src, dst string, readOnly bool) specs.Mount {
	opts := []string{"rbind", "rprivate"}
	if readOnly {
		opts = append(opts, "ro")
	}
	return specs.Mount{Destination: dst, Type: "bind", Source: src, Options: opts}
}

// capabilities: drop ALL and add some is what the manifests do; the set is then the added ones.
func capabilities(sc *corev1.SecurityContext) ([]string, error) {
	if sc == nil || sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		return nil, fmt.Errorf("securityContext.capabilities: only `drop: [ALL]` plus `add` is translated")
	}
	var caps []string
	for _, c := range sc.Capabilities.Add {
		caps = append(caps, "CAP_"+string(c))
	}
	return caps, nil
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// containerEnv is the process environment: the image's, the Services', then
// the container's, with $(VAR) references to earlier ones expanded and
// resourceFieldRef values computed, as kubelet does.
func containerEnv(c *corev1.Container, imageEnv, serviceEnv []string) ([]string, error) {
	env := append(append([]string{}, imageEnv...), serviceEnv...)
	values := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		values[k] = v
	}
	for _, e := range c.Env {
		v := e.Value
		switch {
		case e.ValueFrom == nil:
			v = envRef.ReplaceAllStringFunc(v, func(ref string) string {
				if val, ok := values[ref[2:len(ref)-1]]; ok {
					return val
				}
				return ref
			})
		case e.ValueFrom.ResourceFieldRef != nil && e.ValueFrom.ResourceFieldRef.Resource == "limits.memory":
			limit, ok := c.Resources.Limits[corev1.ResourceMemory]
			if !ok {
				return nil, fmt.Errorf("env %s: no memory limit to read", e.Name)
			}
			divisor := e.ValueFrom.ResourceFieldRef.Divisor.Value()
			if divisor == 0 {
				divisor = 1
			}
			v = fmt.Sprint((limit.Value() + divisor - 1) / divisor)
		default:
			return nil, fmt.Errorf("env %s: this valueFrom is not translated", e.Name)
		}
		values[e.Name] = v
		env = append(env, e.Name+"="+v)
	}
	return env, nil
}

// volumeMount materialises a volume as kubelet would and mounts it.
func volumeMount(pod *corev1.PodSpec, vm corev1.VolumeMount, rt PodRuntime) (specs.Mount, error) {
	var vol *corev1.Volume
	for i := range pod.Volumes {
		if pod.Volumes[i].Name == vm.Name {
			vol = &pod.Volumes[i]
		}
	}
	switch {
	case vol == nil:
		return specs.Mount{}, fmt.Errorf("volumeMount %s: no such volume", vm.Name)
	case vol.HostPath != nil:
		if vol.HostPath.Type != nil && *vol.HostPath.Type == corev1.HostPathFileOrCreate {
			f, err := os.OpenFile(vol.HostPath.Path, os.O_CREATE|os.O_RDONLY, 0o600)
			if err != nil {
				return specs.Mount{}, fmt.Errorf("hostPath %s: %w", vol.HostPath.Path, err)
			}
			f.Close()
		}
		if vol.HostPath.Type != nil && *vol.HostPath.Type == corev1.HostPathDirectoryOrCreate {
			if err := os.MkdirAll(vol.HostPath.Path, 0o755); err != nil {
				return specs.Mount{}, fmt.Errorf("hostPath %s: %w", vol.HostPath.Path, err)
			}
		}
		return bind(vol.HostPath.Path, vm.MountPath, vm.ReadOnly), nil
	case vol.ConfigMap != nil:
		dir := filepath.Join(rt.VolumeDir, vm.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return specs.Mount{}, err
		}
		data, found := rt.ConfigMaps[vol.ConfigMap.Name]
		if !found && (vol.ConfigMap.Optional == nil || !*vol.ConfigMap.Optional) {
			return specs.Mount{}, fmt.Errorf("configMap %s is missing and not optional: the pod would not start", vol.ConfigMap.Name)
		}
		files := map[string]string{}
		if len(vol.ConfigMap.Items) == 0 {
			for k, v := range data {
				files[k] = v
			}
		}
		for _, item := range vol.ConfigMap.Items {
			if v, ok := data[item.Key]; ok {
				files[item.Path] = v
			} else if found {
				return specs.Mount{}, fmt.Errorf("configMap %s has no key %s", vol.ConfigMap.Name, item.Key)
			}
		}
		for name, v := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o644); err != nil {
				return specs.Mount{}, err
			}
		}
		return bind(dir, vm.MountPath, vm.ReadOnly), nil
	}
	return specs.Mount{}, fmt.Errorf("volume %s: only hostPath and configMap volumes are translated", vm.Name)
}
