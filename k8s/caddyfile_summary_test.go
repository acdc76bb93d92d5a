package k8s_test

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	corev1 "k8s.io/api/core/v1"
)

// caddyfileSummary is what the manifests must agree with in a Caddyfile, read with Caddy's own
// Caddyfile parser. It needs no directive to be registered, so it works without the
// oauth2_upstream module.
type caddyfileSummary struct {
	listeners []listener // one per site address and bind host
	// keystore holds the arguments of oauth2_upstream's keystore option ("file", path or
	// "redis"); redisAddress and redisPassword come from a redis keystore's block.
	keystore      []string
	redisAddress  string
	redisPassword string
	encryptionKey string
	// env names the environment variables the Caddyfile reads without a default: {env.X}
	// when the handler starts, {$X} when the Caddyfile is adapted.
	env []string
}

// listener is one address a site block listens on.
type listener struct {
	host  string // "" for every interface
	port  int32
	block caddyfile.ServerBlock
}

// handlesCredential reports whether the listener's site injects the credential.
func (l listener) handlesCredential() bool {
	return slices.ContainsFunc(l.block.Segments, func(s caddyfile.Segment) bool { return s.Directive() == "oauth2_upstream" })
}

// loopback reports whether only the pod itself can reach the listener.
func (l listener) loopback() bool {
	ip := net.ParseIP(l.host)
	return l.host == "localhost" || (ip != nil && ip.IsLoopback())
}

// hasToken reports whether the listener's site block holds the token text, e.g. a path.
func (l listener) hasToken(text string) bool {
	for _, seg := range l.block.Segments {
		if slices.ContainsFunc(seg, func(tok caddyfile.Token) bool { return tok.Text == text }) {
			return true
		}
	}
	return false
}

func summarizeCaddyfile(filename, text string) (caddyfileSummary, error) {
	var sum caddyfileSummary
	sum.env = caddyfileEnv(text)
	blocks, err := caddyfile.Parse(filename, []byte(text))
	if err != nil {
		return sum, err
	}
	redirectsOff := false
	for _, block := range blocks {
		if len(block.Keys) == 0 { // the global options block; admin_test.go reads its admin option
			if d := block.DispenseDirective("auto_https"); d.Next() && d.NextArg() {
				redirectsOff = d.Val() == "disable_redirects" || d.Val() == "off"
			}
			continue
		}
		listeners, err := blockListeners(block, redirectsOff)
		if err != nil {
			return sum, err
		}
		sum.listeners = append(sum.listeners, listeners...)
		for _, seg := range block.Segments {
			if seg.Directive() == "oauth2_upstream" {
				readHandlerOptions(caddyfile.NewDispenser(seg), &sum)
			}
		}
	}
	return sum, nil
}

// blockListeners returns the addresses a site block listens on: each site address's port on
// each host of its bind directive, or on every interface without one. A site address with a
// host needs redirectsOff (auto_https disable_redirects), or automatic HTTPS would add a
// redirect listener on :80.
func blockListeners(block caddyfile.ServerBlock, redirectsOff bool) ([]listener, error) {
	hosts := []string{""}
	if d := block.DispenseDirective("bind"); d.Next() {
		hosts = d.RemainingArgs()
	}
	var ls []listener
	for _, key := range block.GetKeysText() {
		addr, err := httpcaddyfile.ParseAddress(key)
		if err != nil {
			return nil, err
		}
		port, err := strconv.ParseInt(addr.Port, 10, 32)
		if err != nil || (addr.Host != "" && !redirectsOff) {
			// A default port, or a host with redirects on, would bring automatic HTTPS's ports.
			return nil, fmt.Errorf("site address %q: want a bare :port, or host:port with auto_https disable_redirects", key)
		}
		for _, host := range hosts {
			ls = append(ls, listener{host: host, port: int32(port), block: block})
		}
	}
	return ls, nil
}

// readHandlerOptions reads the oauth2_upstream options the manifests depend on.
func readHandlerOptions(d *caddyfile.Dispenser, sum *caddyfileSummary) {
	d.Next() // the directive's name
	for d.NextBlock(0) {
		switch d.Val() {
		case "keystore":
			sum.keystore = d.RemainingArgs()
			if slices.Equal(sum.keystore, []string{"redis"}) {
				for nesting := d.Nesting(); d.NextBlock(nesting); {
					switch option := d.Val(); {
					case option == "address" && d.NextArg():
						sum.redisAddress = d.Val()
					case option == "password" && d.NextArg():
						sum.redisPassword = d.Val()
					}
				}
			}
		case "encryption_key":
			if d.NextArg() {
				sum.encryptionKey = d.Val()
			}
		}
	}
}

var (
	runtimeEnvRef = regexp.MustCompile(`\{env\.([A-Za-z_][A-Za-z0-9_]*)\}`)
	adaptEnvRef   = regexp.MustCompile(`\{\$([A-Za-z_][A-Za-z0-9_]*)(:[^}]*)?\}`)
	commentStart  = regexp.MustCompile(`(^|[ \t])#`)
)

// caddyfileEnv returns the environment variables the Caddyfile text needs, sorted: those in
// {env.X} placeholders and those in {$X} substitutions that have no default.
func caddyfileEnv(text string) []string {
	var names []string
	for line := range strings.Lines(text) {
		if loc := commentStart.FindStringIndex(line); loc != nil {
			line = line[:loc[0]]
		}
		for _, m := range runtimeEnvRef.FindAllStringSubmatch(line, -1) {
			names = append(names, m[1])
		}
		for _, m := range adaptEnvRef.FindAllStringSubmatch(line, -1) {
			if m[2] == "" {
				names = append(names, m[1])
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// TestCaddyfileEnv pins down which references count, comments and defaults included.
func TestCaddyfileEnv(t *testing.T) {
	t.Parallel()
	text := "# {env.IN_COMMENT}\n" +
		"a {env.RUNTIME} {$ADAPT} {$WITH_DEFAULT:127.0.0.1} # {$TRAILING}\n" +
		"b {env.RUNTIME}#not-a-comment\n"
	got := caddyfileEnv(text)
	want := []string{"ADAPT", "RUNTIME"}
	if !slices.Equal(got, want) {
		t.Errorf("caddyfileEnv(%q) = %q; want %q", text, got, want)
	}
}

// sidecarOf returns the connector's pod spec and its oauth2-upstream sidecar.
func sidecarOf(t *testing.T, m *manifests) (*corev1.PodSpec, corev1.Container) {
	t.Helper()
	d, ok := m.deployments[deploymentName]
	if !ok {
		t.Fatalf("no Deployment %q", deploymentName)
	}
	spec := &d.Spec.Template.Spec
	i := slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == sidecarName })
	if i < 0 {
		t.Fatalf("Deployment %q has no init container %q", deploymentName, sidecarName)
	}
	return spec, spec.InitContainers[i]
}

// sidecarCaddyfile returns the Caddyfile the sidecar runs: the file its --config argument
// names, read from the ConfigMap mounted at that file's directory.
func sidecarCaddyfile(t *testing.T, m *manifests) (configPath, text string) {
	t.Helper()
	spec, c := sidecarOf(t, m)
	args := c.Args
	i := slices.Index(args, "--config")
	if len(args) == 0 || args[0] != "run" || i < 0 || i+1 >= len(args) {
		t.Fatalf("sidecar args %q; want run --config <file> ...", args)
	}
	if j := slices.Index(args, "--adapter"); j < 0 || j+1 >= len(args) || args[j+1] != "caddyfile" {
		t.Errorf("sidecar args %q; want --adapter caddyfile", args)
	}
	configPath = args[i+1]
	_, _, text, err := configMapFile(m, spec, c, configPath)
	if err != nil {
		t.Fatalf("sidecar --config %s: %v", configPath, err)
	}
	return configPath, text
}

// sidecarEnv returns the names of the environment variables set in container c.
func sidecarEnv(m *manifests, c corev1.Container) []string {
	var names []string
	for _, env := range c.Env {
		names = append(names, env.Name)
	}
	for _, from := range c.EnvFrom {
		var keys []string
		if from.ConfigMapRef != nil {
			keys = configMapKeys(m, from.ConfigMapRef.Name)
		}
		if from.SecretRef != nil {
			keys = secretKeys(m, from.SecretRef.Name)
		}
		for _, k := range keys {
			names = append(names, from.Prefix+k)
		}
	}
	return names
}
