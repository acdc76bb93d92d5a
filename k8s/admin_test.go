package k8s_test

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	corev1 "k8s.io/api/core/v1"
)

// Every container of a pod shares its network namespace, loopback included. Caddy's admin
// API on a TCP address (127.0.0.1:2019, or its default localhost:2019) is therefore open to
// the connector, and it can load a configuration that prints {env.CLIENT_SECRET} or sends
// the tokens elsewhere (DESIGN.md, trust model). So the admin API must be off or on a unix
// socket whose directory is a volume that only Caddy's own container mounts.

// TestAdminEndpointPrivate renders every kustomization and reads every Caddyfile in every
// ConfigMap: each one's admin endpoint is off or a unix socket (never TCP, never Caddy's
// default), and for each container that runs one, the socket's directory is an emptyDir
// that no other container of the pod mounts, in a pod that does not share its process
// namespace.
func TestAdminEndpointPrivate(t *testing.T) {
	t.Parallel()
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			m := mustRender(t, dir)

			// The Caddyfiles that a container runs (--config), with that container.
			run := map[string]bool{} // "ConfigMap/key"
			sidecarChecked := false
			for _, w := range m.workloads() {
				spec := &w.pod.Spec
				for _, c := range allContainers(spec) {
					configPath := configArg(c)
					if configPath == "" {
						continue
					}
					cm, key, text, err := configMapFile(m, spec, c, configPath)
					if err != nil {
						t.Errorf("%s container %s: %v", w.name, c.Name, err)
						continue
					}
					run[cm+"/"+key] = true
					where := fmt.Sprintf("%s container %s, %s (ConfigMap %s, key %s)", w.name, c.Name, configPath, cm, key)
					socket, problems := adminEndpoint(configPath, text)
					problems = append(problems, socketVolumeProblems(spec, c, socket)...)
					for _, p := range problems {
						t.Errorf("%s: %s", where, p)
					}
					sidecarChecked = sidecarChecked || (w.name == "Deployment/"+deploymentName && c.Name == sidecarName)
				}
			}
			if !sidecarChecked {
				t.Errorf("found no Caddyfile that the %s container runs", sidecarName)
			}

			// Caddyfiles that no container runs (yet): a patch may mount them.
			for _, name := range slices.Sorted(maps.Keys(m.configMaps)) {
				cm := m.configMaps[name]
				for _, key := range slices.Sorted(maps.Keys(cm.Data)) {
					if run[name+"/"+key] || !strings.Contains(strings.ToLower(key), "caddyfile") {
						continue
					}
					_, problems := adminEndpoint(key, cm.Data[key])
					for _, p := range problems {
						t.Errorf("ConfigMap %s, key %s: %s", name, key, p)
					}
				}
			}
		})
	}
}

// configArg returns the file a container's --config flag names, or "" without one.
func configArg(c corev1.Container) string {
	argv := append(slices.Clone(c.Command), c.Args...)
	for i, arg := range argv {
		if arg == "--config" && i+1 < len(argv) {
			return argv[i+1]
		}
		if v, ok := strings.CutPrefix(arg, "--config="); ok {
			return v
		}
	}
	return ""
}

// configMapFile returns the ConfigMap key that container c sees at file, and its text.
func configMapFile(m *manifests, spec *corev1.PodSpec, c corev1.Container, file string) (cm, key, text string, err error) {
	dir, key := path.Split(file)
	for _, vm := range c.VolumeMounts {
		if path.Clean(vm.MountPath) != path.Clean(dir) {
			continue
		}
		vi := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == vm.Name })
		if vi < 0 || spec.Volumes[vi].ConfigMap == nil {
			return "", "", "", fmt.Errorf("%s is mounted from volume %q, not a ConfigMap", dir, vm.Name)
		}
		cm = spec.Volumes[vi].ConfigMap.Name
		configMap, ok := m.configMaps[cm]
		if !ok {
			return "", "", "", fmt.Errorf("ConfigMap %q is not rendered", cm)
		}
		text, ok = configMap.Data[key]
		if !ok {
			return "", "", "", fmt.Errorf("ConfigMap %q has no key %q for %s", cm, key, file)
		}
		return cm, key, text, nil
	}
	return "", "", "", fmt.Errorf("no volume is mounted at %s, the directory of %s", dir, file)
}

// adminEndpoint reads a Caddyfile's admin endpoint twice: with Caddy's Caddyfile parser, for
// the global option as written, and through the caddyfile adapter, for the admin config
// Caddy would run. It returns the socket's path ("" when the admin API is off or not on a
// socket) and what is wrong: no admin option or no address (Caddy's default, localhost:2019,
// TCP), a network other than unix, an abstract socket (it lives in the network namespace,
// which the pod shares), a relative path, a socket mode that lets other users connect, or a
// remote admin endpoint.
func adminEndpoint(filename, text string) (socket string, problems []string) {
	blocks, err := caddyfile.Parse(filename, []byte(text))
	if err != nil {
		return "", []string{fmt.Sprintf("parsing: %v", err)}
	}
	// Whether the global options block (the first block, without keys) gives the admin
	// option an argument: an address, or off.
	addressWritten := false
	if len(blocks) > 0 && len(blocks[0].Keys) == 0 {
		if d := blocks[0].DispenseDirective("admin"); d.Next() {
			addressWritten = d.NextArg()
		}
	}

	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), map[string]any{"filename": filename})
	if err != nil {
		return "", []string{fmt.Sprintf("adapting: %v", err)}
	}
	var cfg struct {
		Admin *caddy.AdminConfig `json:"admin"`
	}
	if err := json.Unmarshal(adapted, &cfg); err != nil {
		return "", []string{fmt.Sprintf("decoding the adapted config: %v", err)}
	}
	admin := cfg.Admin
	if admin == nil {
		admin = &caddy.AdminConfig{}
	}
	if admin.Remote != nil {
		problems = append(problems, "a remote admin endpoint listens on TCP")
	}
	if admin.Disabled {
		return "", problems
	}
	if !addressWritten || admin.Listen == "" {
		// The adapter fills in caddy.DefaultAdminListen, which $CADDY_ADMIN changes in
		// this process: judge what is written, not what this process would default to.
		return "", append(problems, "no admin address: Caddy listens on its default, localhost:2019, "+
			"which every container of the pod can reach; want admin unix//<dir>/<file>.sock|0600 or admin off")
	}
	addr, err := caddy.ParseNetworkAddress(admin.Listen)
	if err != nil {
		return "", append(problems, fmt.Sprintf("admin %q: %v", admin.Listen, err))
	}
	if !addr.IsUnixNetwork() {
		return "", append(problems, fmt.Sprintf("admin %q listens on %s, which every container of the pod can reach; "+
			"want a unix socket on a volume only this container mounts", admin.Listen, addr.Network))
	}
	socket, bits, hasBits := strings.Cut(addr.Host, "|")
	switch {
	case strings.HasPrefix(socket, "@"):
		return "", append(problems, fmt.Sprintf("admin %q is an abstract socket, which lives in the pod's shared network namespace", admin.Listen))
	case !path.IsAbs(socket):
		return "", append(problems, fmt.Sprintf("admin %q: want an absolute socket path", admin.Listen))
	}
	if hasBits { // Caddy's default is 0200
		mode, err := strconv.ParseUint(bits, 8, 32)
		if err != nil || fs.FileMode(mode)&0o077 != 0 {
			problems = append(problems, fmt.Sprintf("admin %q: socket mode %s; want the owner only, e.g. |0600", admin.Listen, bits))
		}
	}
	return path.Clean(socket), problems
}

// socketVolumeProblems returns what is wrong with where container c's admin socket lives:
// not on a volume (the root filesystem is read-only, or shared with nobody by design), not on
// an emptyDir (a claim or host path outlives the pod and can be mounted elsewhere), mounted
// read-only, or mounted by another container of the pod, or reachable through a shared
// process namespace (/proc/<pid>/root of the sidecar's process).
func socketVolumeProblems(spec *corev1.PodSpec, c corev1.Container, socket string) []string {
	if socket == "" {
		return nil
	}
	var problems []string
	v := volumeAt(spec, c, socket)
	if v == nil {
		return []string{fmt.Sprintf("admin socket %s is on no volume of container %s; want an emptyDir mounted at %s", socket, c.Name, path.Dir(socket))}
	}
	if v.EmptyDir == nil {
		problems = append(problems, fmt.Sprintf("admin socket %s is on volume %q, not an emptyDir", socket, v.Name))
	}
	for _, vm := range c.VolumeMounts {
		if vm.Name == v.Name && vm.ReadOnly {
			problems = append(problems, fmt.Sprintf("admin socket %s is on volume %q, mounted read-only at %s: Caddy cannot create it", socket, v.Name, vm.MountPath))
		}
	}
	others := allContainers(spec)
	for _, ec := range spec.EphemeralContainers {
		others = append(others, corev1.Container{Name: ec.Name, VolumeMounts: ec.VolumeMounts})
	}
	for _, other := range others {
		if other.Name == c.Name {
			continue
		}
		for _, vm := range other.VolumeMounts {
			if vm.Name == v.Name {
				problems = append(problems, fmt.Sprintf("container %s mounts volume %q (at %s), which holds %s's admin socket %s; only %s may",
					other.Name, v.Name, vm.MountPath, c.Name, socket, c.Name))
			}
		}
	}
	if spec.ShareProcessNamespace != nil && *spec.ShareProcessNamespace {
		problems = append(problems, fmt.Sprintf("shareProcessNamespace: every container of the pod reaches %s's admin socket through /proc/<pid>/root", c.Name))
	}
	return problems
}

// TestAdminEndpointDetects proves adminEndpoint fails on what it should, and passes the
// shipped form.
func TestAdminEndpointDetects(t *testing.T) {
	t.Parallel()
	const site = "\n:8081 {\n\trespond 200\n}\n"
	endpoints := []struct {
		name       string
		global     string // the global options block, without braces; "-" for none
		wantSocket string
		wantError  bool
	}{
		{"shipped", "admin unix//run/oauth2-upstream/admin.sock|0600", "/run/oauth2-upstream/admin.sock", false},
		{"socket, Caddy's default mode", "admin unix//run/admin/admin.sock", "/run/admin/admin.sock", false},
		{"off", "admin off", "", false},
		{"no global options", "-", "", true},
		{"no admin option", "persist_config off", "", true},
		{"no address", "admin {\n\t\torigins localhost\n\t}", "", true},
		{"loopback", "admin 127.0.0.1:2019", "", true},
		{"localhost", "admin localhost:2019", "", true},
		{"every interface", "admin :2019", "", true},
		{"tcp network", "admin tcp/127.0.0.1:2019", "", true},
		{"abstract socket", "admin unix/@oauth2-upstream-admin", "", true},
		{"relative socket", "admin unix/admin.sock", "", true},
		{"socket open to all", "admin unix//run/oauth2-upstream/admin.sock|0666", "/run/oauth2-upstream/admin.sock", true},
	}
	for _, tt := range endpoints {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			text := site
			if tt.global != "-" {
				text = "{\n\t" + tt.global + "\n}\n" + site
			}
			socket, problems := adminEndpoint("Caddyfile", text)
			if socket != tt.wantSocket || (len(problems) > 0) != tt.wantError {
				t.Errorf("adminEndpoint(%q) = %q, %q; want %q, error %v", text, socket, problems, tt.wantSocket, tt.wantError)
			}
		})
	}
}

// TestSocketVolumeDetects proves socketVolumeProblems fails on what it should, and passes the
// shipped form.
func TestSocketVolumeDetects(t *testing.T) {
	t.Parallel()
	const socket = "/run/oauth2-upstream/admin.sock"
	pod := func() (*corev1.PodSpec, corev1.Container) {
		sidecar := corev1.Container{Name: sidecarName, VolumeMounts: []corev1.VolumeMount{
			{Name: "tmp", MountPath: "/tmp"},
			{Name: "admin", MountPath: "/run/oauth2-upstream"},
		}}
		return &corev1.PodSpec{
			InitContainers: []corev1.Container{sidecar},
			Containers:     []corev1.Container{{Name: "connector", VolumeMounts: []corev1.VolumeMount{{Name: "tmp", MountPath: "/tmp"}}}},
			Volumes: []corev1.Volume{
				{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "admin", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			},
		}, sidecar
	}
	yes := true
	pods := []struct {
		name   string
		change func(spec *corev1.PodSpec, sidecar *corev1.Container)
		want   int
	}{
		{"shipped", func(*corev1.PodSpec, *corev1.Container) {}, 0},
		{"connector mounts the socket's volume", func(spec *corev1.PodSpec, _ *corev1.Container) {
			spec.Containers[0].VolumeMounts = append(spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "admin", MountPath: "/admin"})
		}, 1},
		{"ephemeral container mounts it", func(spec *corev1.PodSpec, _ *corev1.Container) {
			spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
				Name: "debug", VolumeMounts: []corev1.VolumeMount{{Name: "admin", MountPath: "/admin"}},
			}}}
		}, 1},
		{"socket on the root filesystem", func(_ *corev1.PodSpec, sidecar *corev1.Container) {
			sidecar.VolumeMounts = sidecar.VolumeMounts[:1]
		}, 1},
		{"socket on a claim", func(spec *corev1.PodSpec, _ *corev1.Container) {
			spec.Volumes[1].VolumeSource = corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "x"}}
		}, 1},
		{"read-only", func(_ *corev1.PodSpec, sidecar *corev1.Container) { sidecar.VolumeMounts[1].ReadOnly = true }, 1},
		{"shared process namespace", func(spec *corev1.PodSpec, _ *corev1.Container) { spec.ShareProcessNamespace = &yes }, 1},
	}
	for _, tt := range pods {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			spec, sidecar := pod()
			tt.change(spec, &sidecar)
			if got := socketVolumeProblems(spec, sidecar, socket); len(got) != tt.want {
				t.Errorf("socketVolumeProblems(%s) = %q; want %d problems", tt.name, got, tt.want)
			}
		})
	}
}
