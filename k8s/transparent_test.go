package k8s_test

import (
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	corev1 "k8s.io/api/core/v1"
)

// TestTransparentOverlay covers the connector whose API base URL cannot change: its pod's
// hostAliases leads API_HOST to the sidecar's loopback listener for API_HOST:443, which has a
// certificate of Caddy's internal CA and may bind 443 without root; the sidecar itself
// resolves API_HOST without the alias (a hosts file of its own), or it would proxy to itself.
func TestTransparentOverlay(t *testing.T) {
	t.Parallel()
	m := mustRender(t, transparentDir)
	spec, sidecar := sidecarOf(t, m)
	apiHost := configMapEnv(t, m, sidecar, "API_HOST")
	configPath, text := sidecarCaddyfile(t, m)
	// As Caddy adapts it in the pod: API_HOST substituted from the settings.
	sum, err := summarizeCaddyfile(configPath, strings.ReplaceAll(text, "{$API_HOST}", apiHost))
	if err != nil {
		t.Fatalf("summarizeCaddyfile(%s): %v", configPath, err)
	}
	i := slices.IndexFunc(sum.listeners, func(l listener) bool {
		return l.port == 443 && slices.Contains(l.block.GetKeysText(), apiHost+":443")
	})
	if i < 0 {
		t.Fatalf("the Caddyfile serves no site %s:443", apiHost)
	}
	api := sum.listeners[i]
	if !api.handlesCredential() || !api.loopback() || !hasDirective(api.block, "tls", "internal") {
		t.Errorf("site %s:443 on %q: want oauth2_upstream, tls internal, bound to loopback", apiHost, api.host)
	}
	if !globalOption(t, text, "skip_install_trust") {
		t.Errorf("no skip_install_trust: Caddy would try to install its root in the sidecar's system trust store")
	}

	aliased := map[string]string{} // host name -> IP
	for _, alias := range spec.HostAliases {
		for _, name := range alias.Hostnames {
			aliased[name] = alias.IP
		}
	}
	if aliased[apiHost] != api.host {
		t.Errorf("hostAliases leads %s to %q; want %q, where the sidecar listens", apiHost, aliased[apiHost], api.host)
	}
	checkSidecarHosts(t, m, spec, sidecar, aliased)
	checkUnprivilegedPort(t, spec, 443)
}

// checkSidecarHosts checks that the sidecar's /etc/hosts is a ConfigMap file that names none of
// the aliased hosts, and that every other container keeps the pod's, aliases included.
func checkSidecarHosts(t *testing.T, m *manifests, spec *corev1.PodSpec, sidecar corev1.Container, aliased map[string]string) {
	t.Helper()
	for _, c := range allContainers(spec) {
		mi := slices.IndexFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool { return path.Clean(vm.MountPath) == "/etc/hosts" })
		if c.Name != sidecarName {
			if mi >= 0 {
				t.Errorf("container %s mounts its own /etc/hosts: it would not see the hostAliases entry", c.Name)
			}
			continue
		}
		if mi < 0 {
			t.Fatalf("the sidecar has the pod's /etc/hosts, whose alias leads API_HOST back to itself; want a hosts file of its own")
		}
		mount := c.VolumeMounts[mi]
		vi := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == mount.Name })
		if vi < 0 || spec.Volumes[vi].ConfigMap == nil || mount.SubPath == "" {
			t.Fatalf("the sidecar's /etc/hosts is volume %q; want a ConfigMap key (subPath)", mount.Name)
		}
		cm, ok := m.configMaps[spec.Volumes[vi].ConfigMap.Name]
		hosts, hasKey := cm.Data[mount.SubPath]
		if !ok || !hasKey {
			t.Fatalf("the sidecar's /etc/hosts: ConfigMap %q has no key %q", spec.Volumes[vi].ConfigMap.Name, mount.SubPath)
		}
		for line := range strings.Lines(hosts) {
			line, _, _ = strings.Cut(line, "#")
			for _, name := range strings.Fields(line)[min(1, len(strings.Fields(line))):] {
				if _, ok := aliased[name]; ok {
					t.Errorf("the sidecar's /etc/hosts maps %s, which hostAliases leads to the sidecar", name)
				}
			}
		}
	}
}

// checkUnprivilegedPort checks that the pod lets a user without capabilities bind port, with
// only sysctls that the restricted Pod Security Standard allows.
func checkUnprivilegedPort(t *testing.T, spec *corev1.PodSpec, port int) {
	t.Helper()
	// The "safe" sysctls of the baseline (and so restricted) Pod Security Standard.
	safe := []string{"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
		"net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
		"net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
	allowed := false
	if spec.SecurityContext != nil {
		for _, s := range spec.SecurityContext.Sysctls {
			if !slices.Contains(safe, s.Name) {
				t.Errorf("sysctl %s is not allowed by the restricted Pod Security Standard", s.Name)
			}
			if start, err := strconv.Atoi(s.Value); s.Name == "net.ipv4.ip_unprivileged_port_start" && err == nil && start <= port {
				allowed = true
			}
		}
	}
	if !allowed {
		t.Errorf("the sidecar runs without root or capabilities; want sysctl net.ipv4.ip_unprivileged_port_start <= %d to bind %d", port, port)
	}
}

// fetchURL finds the loopback URL a container's command fetches.
var fetchURL = regexp.MustCompile(`http://127\.0\.0\.1:(\d+)(/[^\s'"]*)`)

// TestTransparentRootCertificateShared covers the connector's trust in the sidecar's internal
// CA: it trusts a root certificate in a volume of its own, which an init container fills after
// the sidecar started, from a loopback site that serves that one certificate. No container but
// the sidecar mounts a volume of the sidecar's (Caddy's data with the CA's keys, the admin
// socket), nor runs as its user.
func TestTransparentRootCertificateShared(t *testing.T) {
	t.Parallel()
	m := mustRender(t, transparentDir)
	spec, sidecar := sidecarOf(t, m)
	mountsOf := func(c corev1.Container) []string {
		var names []string
		for _, vm := range c.VolumeMounts {
			names = append(names, vm.Name)
		}
		return names
	}
	sidecarVolumes := mountsOf(sidecar)
	for _, c := range allContainers(spec) {
		for _, vm := range c.VolumeMounts {
			if c.Name != sidecarName && slices.Contains(sidecarVolumes, vm.Name) {
				t.Errorf("container %s mounts the sidecar's volume %q", c.Name, vm.Name)
			}
		}
	}

	connector := spec.Containers[slices.IndexFunc(spec.Containers, func(c corev1.Container) bool { return c.Name == deploymentName })]
	trustMount := slices.IndexFunc(connector.VolumeMounts, func(vm corev1.VolumeMount) bool {
		return slices.ContainsFunc(connector.Env, func(e corev1.EnvVar) bool { return strings.HasPrefix(e.Value, path.Clean(vm.MountPath)+"/") })
	})
	if trustMount < 0 || !connector.VolumeMounts[trustMount].ReadOnly {
		t.Fatalf("the connector's environment names no file of a read-only volume (its trust in the sidecar's CA)")
	}
	caVolume := connector.VolumeMounts[trustMount].Name

	sidecarAt := slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == sidecarName })
	filler := -1
	for i, c := range spec.InitContainers {
		if slices.ContainsFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.Name == caVolume && !vm.ReadOnly }) {
			filler = i
		}
	}
	if filler < 0 || filler < sidecarAt || spec.InitContainers[filler].RestartPolicy != nil {
		t.Fatalf("no init container after the sidecar writes volume %q, which the connector trusts", caVolume)
	}
	fill := spec.InitContainers[filler]
	match := fetchURL.FindStringSubmatch(strings.Join(append(slices.Clone(fill.Command), fill.Args...), " "))
	if match == nil {
		t.Fatalf("init container %s fetches nothing from http://127.0.0.1", fill.Name)
	}

	_, text := sidecarCaddyfile(t, m)
	sum, err := summarizeCaddyfile("Caddyfile", text)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(sum.listeners, func(l listener) bool { return strconv.Itoa(int(l.port)) == match[1] })
	if i < 0 {
		t.Fatalf("init container %s fetches %s; the Caddyfile does not listen on port %s", fill.Name, match[0], match[1])
	}
	site := sum.listeners[i]
	if !site.loopback() || site.handlesCredential() || !site.hasToken(match[2]) {
		t.Errorf("port %s: want a loopback site without oauth2_upstream that serves %s", match[1], match[2])
	}
	for _, seg := range site.block.Segments {
		for _, tok := range seg {
			if strings.Contains(tok.Text, "{file.") && !strings.HasSuffix(tok.Text, "/pki/authorities/local/root.crt}") {
				t.Errorf("port %s serves %s; want the internal CA's root certificate only", match[1], tok.Text)
			}
		}
	}
}

// configMapEnv returns the value container c's environment variable name takes from a
// rendered ConfigMap.
func configMapEnv(t *testing.T, m *manifests, c corev1.Container, name string) string {
	t.Helper()
	i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name })
	if i < 0 || c.Env[i].ValueFrom == nil || c.Env[i].ValueFrom.ConfigMapKeyRef == nil {
		t.Fatalf("container %s: %s does not come from a ConfigMap", c.Name, name)
	}
	ref := c.Env[i].ValueFrom.ConfigMapKeyRef
	value, ok := m.configMaps[ref.Name].Data[ref.Key]
	if !ok || value == "" {
		t.Fatalf("container %s: %s: ConfigMap %q has no key %q", c.Name, name, ref.Name, ref.Key)
	}
	return value
}

// hasDirective reports whether a site block has the directive with exactly args.
func hasDirective(block caddyfile.ServerBlock, name string, args ...string) bool {
	d := block.DispenseDirective(name)
	for d.Next() {
		if slices.Equal(d.RemainingArgs(), args) {
			return true
		}
	}
	return false
}

// globalOption reports whether the Caddyfile's global options block holds option.
func globalOption(t *testing.T, text, option string) bool {
	t.Helper()
	blocks, err := caddyfile.Parse("Caddyfile", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) == 0 || len(blocks[0].Keys) != 0 {
		return false
	}
	d := blocks[0].DispenseDirective(option)
	return d.Next()
}
