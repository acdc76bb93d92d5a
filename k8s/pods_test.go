package k8s_test

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// allContainers returns a pod's init containers (the sidecar among them) and containers.
func allContainers(spec *corev1.PodSpec) []corev1.Container {
	return append(slices.Clone(spec.InitContainers), spec.Containers...)
}

// TestPodReferencesResolve covers a pod stuck in ContainerCreating or CreateContainerConfigError
// because of a name: every ConfigMap, Secret, key and claim a pod refers to is rendered
// beside it (generated names carry a hash suffix that kustomize must have rewritten), every
// mount has its volume and every volume is mounted.
func TestPodReferencesResolve(t *testing.T) {
	t.Parallel()
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			m := mustRender(t, dir)
			for _, w := range m.workloads() {
				checkVolumes(t, m, w)
				for _, c := range allContainers(&w.pod.Spec) {
					checkEnvSources(t, m, w.name, c)
					checkMounts(t, w, c)
				}
			}
		})
	}
}

func checkVolumes(t *testing.T, m *manifests, w workload) {
	t.Helper()
	for _, v := range w.pod.Spec.Volumes {
		if n := volumeSources(v.VolumeSource); n != 1 {
			// A patch that adds a source without removing the old one.
			t.Errorf("%s: volume %q has %d sources; want exactly one", w.name, v.Name, n)
		}
		switch {
		case v.ConfigMap != nil:
			checkKeys(t, w.name, "ConfigMap", v.ConfigMap.Name, configMapKeys(m, v.ConfigMap.Name), v.ConfigMap.Items)
		case v.Secret != nil:
			checkKeys(t, w.name, "Secret", v.Secret.SecretName, secretKeys(m, v.Secret.SecretName), v.Secret.Items)
		case v.PersistentVolumeClaim != nil:
			if _, ok := m.claims[v.PersistentVolumeClaim.ClaimName]; !ok {
				t.Errorf("%s: volume %q claims %q, which is not rendered", w.name, v.Name, v.PersistentVolumeClaim.ClaimName)
			}
		case v.EmptyDir != nil:
		default:
			t.Errorf("%s: volume %q has a source this test does not check", w.name, v.Name)
		}
		mounted := false
		for _, c := range allContainers(&w.pod.Spec) {
			mounted = mounted || slices.ContainsFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.Name == v.Name })
		}
		if !mounted {
			t.Errorf("%s: volume %q is mounted by no container", w.name, v.Name)
		}
	}
}

// volumeSources counts the sources set in a volume (the API server accepts only one).
func volumeSources(source corev1.VolumeSource) int {
	n := 0
	v := reflect.ValueOf(source)
	for i := range v.NumField() {
		if !v.Field(i).IsNil() {
			n++
		}
	}
	return n
}

// configMapKeys returns the keys of the rendered ConfigMap name, or nil when there is none.
func configMapKeys(m *manifests, name string) []string {
	cm, ok := m.configMaps[name]
	if !ok {
		return nil
	}
	keys := make([]string, 0, len(cm.Data)+len(cm.BinaryData))
	for k := range cm.Data {
		keys = append(keys, k)
	}
	for k := range cm.BinaryData {
		keys = append(keys, k)
	}
	return keys
}

// secretKeys returns the keys of the rendered Secret name, or nil when there is none.
func secretKeys(m *manifests, name string) []string {
	s, ok := m.secrets[name]
	if !ok {
		return nil
	}
	keys := make([]string, 0, len(s.Data)+len(s.StringData))
	for k := range s.Data {
		keys = append(keys, k)
	}
	for k := range s.StringData {
		keys = append(keys, k)
	}
	return keys
}

func checkKeys(t *testing.T, owner, kind, name string, keys []string, items []corev1.KeyToPath) {
	t.Helper()
	if keys == nil {
		t.Errorf("%s refers to %s %q, which is not rendered", owner, kind, name)
		return
	}
	for _, item := range items {
		if !slices.Contains(keys, item.Key) {
			t.Errorf("%s refers to key %q of %s %q; it has %v", owner, item.Key, kind, name, keys)
		}
	}
}

func checkEnvSources(t *testing.T, m *manifests, owner string, c corev1.Container) {
	t.Helper()
	owner += " container " + c.Name
	for _, env := range c.Env {
		if env.ValueFrom == nil {
			continue
		}
		if ref := env.ValueFrom.ConfigMapKeyRef; ref != nil {
			checkKeys(t, owner, "ConfigMap", ref.Name, configMapKeys(m, ref.Name), []corev1.KeyToPath{{Key: ref.Key}})
		}
		if ref := env.ValueFrom.SecretKeyRef; ref != nil {
			checkKeys(t, owner, "Secret", ref.Name, secretKeys(m, ref.Name), []corev1.KeyToPath{{Key: ref.Key}})
		}
	}
	for _, from := range c.EnvFrom {
		if ref := from.ConfigMapRef; ref != nil {
			checkKeys(t, owner, "ConfigMap", ref.Name, configMapKeys(m, ref.Name), nil)
		}
		if ref := from.SecretRef; ref != nil {
			checkKeys(t, owner, "Secret", ref.Name, secretKeys(m, ref.Name), nil)
		}
	}
}

func checkMounts(t *testing.T, w workload, c corev1.Container) {
	t.Helper()
	for _, vm := range c.VolumeMounts {
		if !slices.ContainsFunc(w.pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == vm.Name }) &&
			!slices.Contains(w.claimTemplates, vm.Name) {
			t.Errorf("%s container %s mounts volume %q at %s; the pod has no such volume", w.name, c.Name, vm.Name, vm.MountPath)
		}
	}
}

// TestProbePortsAreContainerPorts covers a probe that can never pass: every HTTP and TCP probe
// names a port its own container declares.
func TestProbePortsAreContainerPorts(t *testing.T) {
	t.Parallel()
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			m := mustRender(t, dir)
			for _, w := range m.workloads() {
				for _, c := range allContainers(&w.pod.Spec) {
					for _, p := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
						if p == nil {
							continue
						}
						if _, err := probePort(c, p); err != nil {
							t.Errorf("%s container %s: %v", w.name, c.Name, err)
						}
					}
				}
			}
		})
	}
}

// TestSecurityContextRestricted holds every container of every kustomization to the
// Kubernetes "restricted" Pod Security Standard, as the sidecar holds a credential.
func TestSecurityContextRestricted(t *testing.T) {
	t.Parallel()
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			m := mustRender(t, dir)
			for _, w := range m.workloads() {
				pod := w.pod.Spec.SecurityContext
				if pod == nil {
					pod = &corev1.PodSecurityContext{}
				}
				for _, c := range allContainers(&w.pod.Spec) {
					for _, problem := range restrictedViolations(pod, c) {
						t.Errorf("%s container %s: %s", w.name, c.Name, problem)
					}
				}
			}
		})
	}
}

// restrictedViolations lists how container c in a pod with security context pod falls
// short of: non-root, no privilege escalation, read-only root filesystem, every capability
// dropped, seccomp RuntimeDefault. Container settings override the pod's.
func restrictedViolations(pod *corev1.PodSecurityContext, c corev1.Container) []string {
	sc := c.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	var problems []string
	runAsNonRoot := sc.RunAsNonRoot
	if runAsNonRoot == nil {
		runAsNonRoot = pod.RunAsNonRoot
	}
	if runAsNonRoot == nil || !*runAsNonRoot {
		problems = append(problems, "runAsNonRoot is not true")
	}
	runAsUser := sc.RunAsUser
	if runAsUser == nil {
		runAsUser = pod.RunAsUser
	}
	if runAsUser != nil && *runAsUser == 0 {
		problems = append(problems, "runAsUser is 0")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		problems = append(problems, "allowPrivilegeEscalation is not false")
	}
	if sc.Privileged != nil && *sc.Privileged {
		problems = append(problems, "privileged")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		problems = append(problems, "readOnlyRootFilesystem is not true")
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		problems = append(problems, "capabilities do not drop ALL")
	} else if len(sc.Capabilities.Add) > 0 {
		problems = append(problems, "capabilities add "+strings.Join(capabilityNames(sc.Capabilities.Add), ","))
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil {
		seccomp = pod.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		problems = append(problems, "seccomp profile is not RuntimeDefault")
	}
	return problems
}

func capabilityNames(caps []corev1.Capability) []string {
	names := make([]string, len(caps))
	for i, c := range caps {
		names[i] = string(c)
	}
	return names
}

// TestRestrictedViolationsDetects proves the check above fails on what it should.
func TestRestrictedViolationsDetects(t *testing.T) {
	t.Parallel()
	yes, no, root := true, false, int64(0)
	restricted := func() *corev1.SecurityContext {
		return &corev1.SecurityContext{
			RunAsNonRoot:             &yes,
			AllowPrivilegeEscalation: &no,
			ReadOnlyRootFilesystem:   &yes,
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		}
	}
	tests := []struct {
		name   string
		change func(*corev1.SecurityContext)
		want   int
	}{
		{"restricted", func(*corev1.SecurityContext) {}, 0},
		{"root user", func(sc *corev1.SecurityContext) { sc.RunAsUser = &root }, 1},
		{"writable root", func(sc *corev1.SecurityContext) { sc.ReadOnlyRootFilesystem = nil }, 1},
		{"escalation", func(sc *corev1.SecurityContext) { sc.AllowPrivilegeEscalation = &yes }, 1},
		{"added capability", func(sc *corev1.SecurityContext) { sc.Capabilities.Add = []corev1.Capability{"NET_ADMIN"} }, 1},
		{"no seccomp", func(sc *corev1.SecurityContext) { sc.SeccompProfile = nil }, 1},
		{"may run as root", func(sc *corev1.SecurityContext) { sc.RunAsNonRoot = nil }, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sc := restricted()
			tt.change(sc)
			got := restrictedViolations(&corev1.PodSecurityContext{}, corev1.Container{SecurityContext: sc})
			if len(got) != tt.want {
				t.Errorf("restrictedViolations(%s) = %q; want %d problems", tt.name, got, tt.want)
			}
		})
	}
}

// TestResourcesBounded covers a container the scheduler cannot place sensibly or that can
// starve its pod: every container requests and limits CPU and memory.
func TestResourcesBounded(t *testing.T) {
	t.Parallel()
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			m := mustRender(t, dir)
			for _, w := range m.workloads() {
				for _, c := range allContainers(&w.pod.Spec) {
					for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
						req, hasReq := c.Resources.Requests[name]
						lim, hasLim := c.Resources.Limits[name]
						if !hasReq || !hasLim {
							t.Errorf("%s container %s: %s request set %v, limit set %v; want both", w.name, c.Name, name, hasReq, hasLim)
						} else if req.Cmp(lim) > 0 {
							t.Errorf("%s container %s: %s request %s exceeds limit %s", w.name, c.Name, name, req.String(), lim.String())
						}
					}
				}
			}
		})
	}
}

// probePort returns the container port that probe p of container c targets: nil for a probe
// without a port (exec), an error when c declares no such port.
func probePort(c corev1.Container, p *corev1.Probe) (*corev1.ContainerPort, error) {
	var port intstr.IntOrString
	switch {
	case p.HTTPGet != nil:
		port = p.HTTPGet.Port
	case p.TCPSocket != nil:
		port = p.TCPSocket.Port
	case p.GRPC != nil:
		port = intstr.FromInt32(p.GRPC.Port)
	default:
		return nil, nil
	}
	for i, cp := range c.Ports {
		if (port.Type == intstr.String && cp.Name == port.StrVal) ||
			(port.Type == intstr.Int && cp.ContainerPort == port.IntVal) {
			return &c.Ports[i], nil
		}
	}
	return nil, fmt.Errorf("a probe targets port %s, which the container does not declare", port.String())
}

// The connector runs as a user of its own: the sidecar's keystore files and its admin
// socket are 0600, owned by the sidecar's user, so another uid cannot open them even
// where a volume is shared by mistake.
func TestConnectorRunsAsAnotherUser(t *testing.T) {
	t.Parallel()
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			m := mustRender(t, dir)
			for _, w := range m.workloads() {
				pod := w.pod.Spec.SecurityContext
				if pod == nil {
					pod = &corev1.PodSecurityContext{}
				}
				uids := map[string]int64{}
				for _, c := range allContainers(&w.pod.Spec) {
					uid := pod.RunAsUser
					if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
						uid = c.SecurityContext.RunAsUser
					}
					if uid == nil {
						t.Errorf("%s container %s: no runAsUser: the image's user decides", w.name, c.Name)
						continue
					}
					uids[c.Name] = *uid
				}
				sidecar, ok := uids[sidecarName]
				if !ok {
					continue
				}
				for name, uid := range uids {
					if name != sidecarName && uid == sidecar {
						t.Errorf("%s container %s runs as %d, the sidecar's user", w.name, name, uid)
					}
				}
			}
		})
	}
}
