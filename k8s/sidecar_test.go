package k8s_test

import (
	"path"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestSidecarIsNative covers a sidecar that would block the pod as a plain init container or
// outlive it as a plain container: Kubernetes 1.29+ native sidecars are init containers with
// restartPolicy Always. It also wants the request-body spill directory /tmp on an emptyDir,
// the root filesystem being read-only.
func TestSidecarIsNative(t *testing.T) {
	t.Parallel()
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			spec, c := sidecarOf(t, mustRender(t, dir))
			if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Errorf("sidecar restartPolicy = %v; want Always", c.RestartPolicy)
			}
			if c.StartupProbe == nil {
				t.Errorf("sidecar has no startupProbe; the connector would start before the proxy listens")
			}
			vi := slices.IndexFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.MountPath == "/tmp" })
			if vi < 0 {
				t.Fatalf("sidecar mounts nothing at /tmp")
			}
			v := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == c.VolumeMounts[vi].Name })
			if v < 0 || spec.Volumes[v].EmptyDir == nil {
				t.Errorf("sidecar's /tmp is volume %q; want an emptyDir", c.VolumeMounts[vi].Name)
			}
		})
	}
}

// TestSidecarMatchesCaddyfile covers a Caddyfile edited without the manifests (or the other
// way round): the container ports are exactly the Caddyfile's listen ports; the probes target
// a listener the kubelet can reach (every interface) that serves the probe's path and holds
// no credential; the proxy stays on loopback (the admin API: admin_test.go); every
// environment variable the Caddyfile needs is set.
func TestSidecarMatchesCaddyfile(t *testing.T) {
	t.Parallel()
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			m := mustRender(t, dir)
			_, c := sidecarOf(t, m)
			configPath, text := sidecarCaddyfile(t, m)
			sum, err := summarizeCaddyfile(configPath, text)
			if err != nil {
				t.Fatalf("summarizeCaddyfile(%s): %v", configPath, err)
			}

			var caddyPorts, containerPorts []int32
			for _, l := range sum.listeners {
				caddyPorts = append(caddyPorts, l.port)
			}
			for _, p := range c.Ports {
				containerPorts = append(containerPorts, p.ContainerPort)
			}
			slices.Sort(caddyPorts)
			slices.Sort(containerPorts)
			if !slices.Equal(slices.Compact(caddyPorts), containerPorts) {
				t.Errorf("sidecar container ports %v; the Caddyfile listens on %v", containerPorts, caddyPorts)
			}

			for _, probe := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
				if probe != nil {
					checkProbeListener(t, c, probe, sum.listeners)
				}
			}

			proxies := 0
			for _, l := range sum.listeners {
				if l.handlesCredential() {
					proxies++
					if !l.loopback() {
						t.Errorf("the proxy listens on %q:%d; want loopback only, or any pod could borrow the credential", l.host, l.port)
					}
				}
			}
			if proxies == 0 {
				t.Errorf("no site of the Caddyfile uses oauth2_upstream")
			}

			provided := sidecarEnv(m, c)
			for _, name := range sum.env {
				if !slices.Contains(provided, name) {
					t.Errorf("the Caddyfile reads $%s; the sidecar's environment has %v", name, provided)
				}
			}
		})
	}
}

// checkProbeListener checks that probe reaches a Caddy listener meant for it.
func checkProbeListener(t *testing.T, c corev1.Container, probe *corev1.Probe, listeners []listener) {
	t.Helper()
	port, err := probePort(c, probe)
	if err != nil || port == nil {
		t.Errorf("sidecar probe %+v: want an HTTP probe on a declared port (%v)", probe.ProbeHandler, err)
		return
	}
	i := slices.IndexFunc(listeners, func(l listener) bool { return l.port == port.ContainerPort })
	if i < 0 {
		t.Errorf("a sidecar probe targets port %d; the Caddyfile does not listen there", port.ContainerPort)
		return
	}
	l := listeners[i]
	if l.loopback() {
		t.Errorf("a sidecar probe targets %s:%d; the kubelet probes the pod's IP", l.host, l.port)
	}
	if l.handlesCredential() {
		t.Errorf("a sidecar probe targets port %d, which injects the credential", l.port)
	}
	if probe.HTTPGet != nil && !l.hasToken(probe.HTTPGet.Path) {
		t.Errorf("a sidecar probe asks for %s; the site on port %d has no route for it", probe.HTTPGet.Path, l.port)
	}
}

// TestCredentialsOnlyInSidecar covers the connector (or anything else in the pod) being handed
// the client secret or refresh token: only the sidecar reads the Secrets it reads.
func TestCredentialsOnlyInSidecar(t *testing.T) {
	t.Parallel()
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			m := mustRender(t, dir)
			spec, sidecar := sidecarOf(t, m)
			secrets := secretsUsed(sidecar)
			if len(secrets) == 0 {
				t.Fatalf("the sidecar reads no Secret")
			}
			for _, c := range allContainers(spec) {
				if c.Name == sidecarName {
					continue
				}
				for _, s := range secretsUsed(c) {
					if slices.Contains(secrets, s) {
						t.Errorf("container %s reads the sidecar's Secret %q", c.Name, s)
					}
				}
			}
			for _, v := range spec.Volumes {
				if v.Secret != nil && slices.Contains(secrets, v.Secret.SecretName) {
					t.Errorf("volume %q exposes the sidecar's Secret %q as files", v.Name, v.Secret.SecretName)
				}
			}
		})
	}
}

// secretsUsed returns the Secrets container c reads through its environment.
func secretsUsed(c corev1.Container) []string {
	var names []string
	for _, env := range c.Env {
		if env.ValueFrom != nil && env.ValueFrom.SecretKeyRef != nil {
			names = append(names, env.ValueFrom.SecretKeyRef.Name)
		}
	}
	for _, from := range c.EnvFrom {
		if from.SecretRef != nil {
			names = append(names, from.SecretRef.Name)
		}
	}
	return names
}

// TestBaseKeystoreOnClaim covers rotated refresh tokens lost with the pod: the base's file
// keystore lives on the PersistentVolumeClaim.
func TestBaseKeystoreOnClaim(t *testing.T) {
	t.Parallel()
	m := mustRender(t, baseDir)
	spec, c := sidecarOf(t, m)
	configPath, text := sidecarCaddyfile(t, m)
	sum, err := summarizeCaddyfile(configPath, text)
	if err != nil {
		t.Fatalf("summarizeCaddyfile(%s): %v", configPath, err)
	}
	if len(sum.keystore) != 2 || sum.keystore[0] != "file" {
		t.Fatalf("base keystore %q; want file <dir>", sum.keystore)
	}
	volume := volumeAt(spec, c, sum.keystore[1])
	if volume == nil || volume.PersistentVolumeClaim == nil || volume.PersistentVolumeClaim.ClaimName != keystoreClaim {
		t.Errorf("keystore directory %s is on volume %+v; want the claim %q", sum.keystore[1], volume, keystoreClaim)
	}
	if m.deployments[deploymentName].Spec.Strategy.Type != "Recreate" {
		t.Errorf("base strategy %q; want Recreate, a ReadWriteOnce volume cannot follow a rolling update across nodes",
			m.deployments[deploymentName].Spec.Strategy.Type)
	}
}

// volumeAt returns the volume holding file in container c: the one mounted at the longest
// prefix of its path.
func volumeAt(spec *corev1.PodSpec, c corev1.Container, file string) *corev1.Volume {
	var best *corev1.VolumeMount
	for i, vm := range c.VolumeMounts {
		dir := path.Clean(vm.MountPath)
		if (file == dir || strings.HasPrefix(file, dir+"/")) && (best == nil || len(dir) > len(path.Clean(best.MountPath))) {
			best = &c.VolumeMounts[i]
		}
	}
	if best == nil {
		return nil
	}
	i := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == best.Name })
	if i < 0 {
		return nil
	}
	return &spec.Volumes[i]
}
