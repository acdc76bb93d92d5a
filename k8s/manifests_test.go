// Package k8s_test renders every kustomization under k8s/ and checks it without a cluster:
// each object decodes strictly into its Kubernetes API type, everything a pod refers to
// exists, and the sidecar's manifests agree with the Caddyfile it runs.
package k8s_test

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// The kustomizations this directory ships, relative to it.
const (
	baseDir        = "base"
	replicasDir    = "overlays/replicas"
	transparentDir = "overlays/transparent"
)

var kustomizations = []string{baseDir, replicasDir, transparentDir}

// Names the manifests and the README share.
const (
	deploymentName = "connector"
	sidecarName    = "oauth2-upstream"
	keystoreClaim  = "oauth2-upstream-keystore"
)

// manifests holds the objects of one rendered kustomization by name, each decoded into its
// k8s.io/api type.
type manifests struct {
	deployments     map[string]*appsv1.Deployment
	statefulSets    map[string]*appsv1.StatefulSet
	services        map[string]*corev1.Service
	configMaps      map[string]*corev1.ConfigMap
	secrets         map[string]*corev1.Secret
	claims          map[string]*corev1.PersistentVolumeClaim
	networkPolicies map[string]*networkingv1.NetworkPolicy
}

// workload is a pod template and the object that owns it.
type workload struct {
	name string // "Deployment/connector"
	pod  *corev1.PodTemplateSpec
	// claimTemplates names a StatefulSet's volumeClaimTemplates, which its pods mount
	// without a volume entry.
	claimTemplates []string
}

func (m *manifests) workloads() []workload {
	var ws []workload
	for name, d := range m.deployments {
		ws = append(ws, workload{name: "Deployment/" + name, pod: &d.Spec.Template})
	}
	for name, s := range m.statefulSets {
		w := workload{name: "StatefulSet/" + name, pod: &s.Spec.Template}
		for _, claim := range s.Spec.VolumeClaimTemplates {
			w.claimTemplates = append(w.claimTemplates, claim.Name)
		}
		ws = append(ws, w)
	}
	slices.SortFunc(ws, func(a, b workload) int { return cmp.Compare(a.name, b.name) })
	return ws
}

// rendered renders each kustomization once for all the tests that need it.
var rendered = func() map[string]func() (*manifests, error) {
	fns := make(map[string]func() (*manifests, error))
	for _, dir := range kustomizations {
		fns[dir] = sync.OnceValues(func() (*manifests, error) { return render(dir) })
	}
	return fns
}()

// mustRender returns the objects of the kustomization in dir, failing the test when it does
// not render or an object does not decode.
func mustRender(t *testing.T, dir string) *manifests {
	t.Helper()
	m, err := rendered[dir]()
	if err != nil {
		t.Fatalf("render(%q): %v", dir, err)
	}
	return m
}

// render runs kustomize on dir, as `kubectl apply -k` would, and decodes every object strictly:
// a misspelt or misplaced field is an error here instead of being dropped by the API server
// (kubectl's client-side validation would only warn).
func render(dir string) (*manifests, error) {
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, err
	}
	m := &manifests{
		deployments:     map[string]*appsv1.Deployment{},
		statefulSets:    map[string]*appsv1.StatefulSet{},
		services:        map[string]*corev1.Service{},
		configMaps:      map[string]*corev1.ConfigMap{},
		secrets:         map[string]*corev1.Secret{},
		claims:          map[string]*corev1.PersistentVolumeClaim{},
		networkPolicies: map[string]*networkingv1.NetworkPolicy{},
	}
	for _, res := range resMap.Resources() {
		data, err := res.AsYAML()
		if err != nil {
			return nil, err
		}
		kind, name := res.GetKind(), res.GetName()
		var decodeErr error
		switch kind {
		case "Deployment":
			m.deployments[name], decodeErr = decodeStrict[appsv1.Deployment](data, "apps/v1")
		case "StatefulSet":
			m.statefulSets[name], decodeErr = decodeStrict[appsv1.StatefulSet](data, "apps/v1")
		case "Service":
			m.services[name], decodeErr = decodeStrict[corev1.Service](data, "v1")
		case "ConfigMap":
			m.configMaps[name], decodeErr = decodeStrict[corev1.ConfigMap](data, "v1")
		case "Secret":
			m.secrets[name], decodeErr = decodeStrict[corev1.Secret](data, "v1")
		case "PersistentVolumeClaim":
			m.claims[name], decodeErr = decodeStrict[corev1.PersistentVolumeClaim](data, "v1")
		case "NetworkPolicy":
			m.networkPolicies[name], decodeErr = decodeStrict[networkingv1.NetworkPolicy](data, "networking.k8s.io/v1")
		default:
			// A new kind needs its type here, or it would go unchecked.
			decodeErr = fmt.Errorf("no decoder for this kind")
		}
		if decodeErr != nil {
			return nil, fmt.Errorf("%s %s/%s: %w", dir, kind, name, decodeErr)
		}
	}
	return m, nil
}

// decodeStrict decodes one object's YAML into T, failing on unknown or duplicate fields and
// on an apiVersion other than want.
func decodeStrict[T any](data []byte, apiVersion string) (*T, error) {
	obj := new(T)
	if err := yaml.UnmarshalStrict(data, obj); err != nil {
		return nil, err
	}
	var meta struct {
		APIVersion string `json:"apiVersion"`
	}
	if err := yaml.Unmarshal(data, &meta); err != nil {
		return nil, err
	}
	if meta.APIVersion != apiVersion {
		return nil, fmt.Errorf("apiVersion %q; want %q", meta.APIVersion, apiVersion)
	}
	return obj, nil
}

// TestManifestsDecodeStrictly covers the typos that kubectl would silently drop: every
// object of every kustomization must decode into its k8s.io/api type with no unknown field.
func TestManifestsDecodeStrictly(t *testing.T) {
	t.Parallel()
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			m := mustRender(t, dir)
			if _, ok := m.deployments[deploymentName]; !ok {
				t.Errorf("render(%q) has no Deployment %q", dir, deploymentName)
			}
		})
	}
}

// TestDecodeStrictRejectsUnknownFields proves the strict decoding above can fail.
func TestDecodeStrictRejectsUnknownFields(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		yaml string
	}{
		{"misplaced field", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\nspec: {}\n"},
		{"misspelt field", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  nmae: x\n"},
		{"wrong apiVersion", "apiVersion: apps/v1\nkind: ConfigMap\nmetadata:\n  name: x\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := decodeStrict[corev1.ConfigMap]([]byte(tt.yaml), "v1"); err == nil {
				t.Errorf("decodeStrict(%q) = nil error; want an error", tt.yaml)
			}
		})
	}
}
