package k8s_test

import (
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestReplicasOverlay covers the several-replica deployment: three replicas, no
// ReadWriteOnce keystore claim (three pods on three nodes cannot share it), key sets in the
// Redis that the Caddyfile names, encrypted with a key from a Secret.
func TestReplicasOverlay(t *testing.T) {
	t.Parallel()
	m := mustRender(t, replicasDir)
	d := m.deployments[deploymentName]
	if d == nil {
		t.Fatalf("no Deployment %q", deploymentName)
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
		t.Errorf("replicas = %v; want 3", ptrValue(d.Spec.Replicas))
	}
	if len(m.claims) != 0 {
		t.Errorf("PersistentVolumeClaims %v; want none", slices.Sorted(maps.Keys(m.claims)))
	}
	spec, c := sidecarOf(t, m)
	for _, v := range spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			t.Errorf("connector volume %q claims %q; want no claim", v.Name, v.PersistentVolumeClaim.ClaimName)
		}
	}

	configPath, text := sidecarCaddyfile(t, m)
	sum, err := summarizeCaddyfile(configPath, text)
	if err != nil {
		t.Fatalf("summarizeCaddyfile(%s): %v", configPath, err)
	}
	if !slices.Equal(sum.keystore, []string{"redis"}) {
		t.Fatalf("keystore %q; want redis", sum.keystore)
	}
	checkRedisService(t, m, sum.redisAddress, d.Spec.Template.Labels)
	checkRedisPassword(t, m, c, sum.redisPassword)

	if sum.encryptionKey != "{env.KEYSTORE_KEY}" {
		t.Errorf("encryption_key %q; want {env.KEYSTORE_KEY}", sum.encryptionKey)
	}
	i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "KEYSTORE_KEY" })
	if i < 0 || c.Env[i].ValueFrom == nil || c.Env[i].ValueFrom.SecretKeyRef == nil {
		t.Errorf("sidecar's KEYSTORE_KEY does not come from a Secret")
	}
}

// checkRedisService checks that address (host:port) names a rendered Service whose port
// leads to a Redis pod's declared port, that the Service does not select the connector's
// pods, and that no NetworkPolicy keeps the connector out.
func checkRedisService(t *testing.T, m *manifests, address string, connectorLabels map[string]string) {
	t.Helper()
	host, portText, err := net.SplitHostPort(address)
	if err != nil {
		t.Fatalf("redis address %q: %v", address, err)
	}
	port, _ := strconv.Atoi(portText)
	svc, ok := m.services[host]
	if !ok {
		t.Fatalf("redis address %q names no rendered Service", address)
	}
	si := slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return int(p.Port) == port })
	if si < 0 {
		t.Fatalf("Service %q has no port %d", host, port)
	}
	selector := labels.SelectorFromSet(svc.Spec.Selector)
	if len(svc.Spec.Selector) == 0 || selector.Matches(labels.Set(connectorLabels)) {
		t.Errorf("Service %q selector %v; want one that selects Redis, not the connector", host, svc.Spec.Selector)
	}
	target := svc.Spec.Ports[si].TargetPort
	var redisLabels map[string]string
	for _, w := range m.workloads() {
		if !selector.Matches(labels.Set(w.pod.Labels)) {
			continue
		}
		redisLabels = w.pod.Labels
		for _, c := range w.pod.Spec.Containers {
			if slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return servesTarget(p, target, port) }) {
				checkNetworkPolicies(t, m, redisLabels, connectorLabels, port)
				return
			}
		}
	}
	t.Errorf("Service %q port %d (target %s) reaches no declared port of a selected pod (labels %v)", host, port, target.String(), redisLabels)
}

// servesTarget reports whether container port p is the target of a Service port numbered
// servicePort (an unset target port means the same number).
func servesTarget(p corev1.ContainerPort, target intstr.IntOrString, servicePort int) bool {
	switch {
	case target.Type == intstr.String && target.StrVal != "":
		return p.Name == target.StrVal
	case target.IntVal != 0:
		return int(p.ContainerPort) == int(target.IntVal)
	}
	return int(p.ContainerPort) == servicePort
}

// checkNetworkPolicies checks that, when policies isolate the Redis pods, one lets the
// connector's pods in on the Redis port.
func checkNetworkPolicies(t *testing.T, m *manifests, redisLabels, connectorLabels map[string]string, port int) {
	t.Helper()
	isolated := false
	for name, np := range m.networkPolicies {
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			t.Fatalf("NetworkPolicy %q: %v", name, err)
		}
		if !sel.Matches(labels.Set(redisLabels)) {
			continue
		}
		isolated = true
		for _, rule := range np.Spec.Ingress {
			if admitsConnector(rule, connectorLabels, port) {
				return
			}
		}
	}
	if isolated {
		t.Errorf("NetworkPolicies isolate Redis (labels %v) and none admits the connector (labels %v) on port %d",
			redisLabels, connectorLabels, port)
	}
}

func admitsConnector(rule networkingv1.NetworkPolicyIngressRule, connectorLabels map[string]string, port int) bool {
	portOK := len(rule.Ports) == 0 || slices.ContainsFunc(rule.Ports, func(p networkingv1.NetworkPolicyPort) bool {
		return p.Port == nil || (p.Port.Type == intstr.Int && int(p.Port.IntVal) == port)
	})
	peerOK := len(rule.From) == 0 || slices.ContainsFunc(rule.From, func(peer networkingv1.NetworkPolicyPeer) bool {
		if peer.PodSelector == nil || peer.NamespaceSelector != nil || peer.IPBlock != nil {
			return false
		}
		sel, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
		return err == nil && sel.Matches(labels.Set(connectorLabels))
	})
	return portOK && peerOK
}

// checkRedisPassword covers sidecars locked out of Redis: the password the Caddyfile reads
// ({env.X}) comes from the same Secret key as the one Redis requires (--requirepass $(Y)).
func checkRedisPassword(t *testing.T, m *manifests, sidecar corev1.Container, password string) {
	t.Helper()
	name, ok := strings.CutPrefix(password, "{env.")
	name, closed := strings.CutSuffix(name, "}")
	if !ok || !closed {
		t.Fatalf("redis password %q; want {env.NAME}, from a Secret", password)
	}
	want := secretRef(sidecar, name)
	if want == nil {
		t.Fatalf("sidecar's %s does not come from a Secret", name)
	}
	for _, w := range m.workloads() {
		for _, c := range w.pod.Spec.Containers {
			i := slices.Index(c.Args, "--requirepass")
			if i < 0 || i+1 >= len(c.Args) {
				continue
			}
			env, ok := strings.CutPrefix(c.Args[i+1], "$(")
			env, closed := strings.CutSuffix(env, ")")
			got := secretRef(c, env)
			if !ok || !closed || got == nil || got.Name != want.Name || got.Key != want.Key {
				t.Errorf("%s container %s requires password %q; want $(VAR) from Secret %q key %q",
					w.name, c.Name, c.Args[i+1], want.Name, want.Key)
			}
			return
		}
	}
	t.Errorf("no Redis container sets --requirepass")
}

// secretRef returns where container c's environment variable name comes from, or nil when
// it does not come from a Secret key.
func secretRef(c corev1.Container, name string) *corev1.SecretKeySelector {
	for _, env := range c.Env {
		if env.Name == name && env.ValueFrom != nil {
			return env.ValueFrom.SecretKeyRef
		}
	}
	return nil
}

// ptrValue returns *p, or "unset" when p is nil, for messages.
func ptrValue[T any](p *T) any {
	if p == nil {
		return "unset"
	}
	return *p
}
