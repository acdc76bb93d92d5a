package integration_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/resourceserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
)

// apiHost is the API's host name in the transparent scenarios: the connector knows only
// https://api.test, and its dialer leads that name to the sidecar, as the pod's hostAliases
// entry does in k8s/overlays/transparent.
const apiHost = "api.test"

// Transparent mode: a connector whose base URL cannot change calls https://api.test, trusting
// only the root certificate of the sidecar's internal CA, fetched from the sidecar's loopback
// site as the overlay's trust-ca container fetches it (the one in Caddy's data directory).
// The sidecar serves api.test with a certificate of that CA, replaces the connector's own
// Authorization, meets a 401 with the stored (revoked) access token, refreshes once and
// replays the body; the API receives the body whole, one Authorization, and the connector's
// Host and server name, api.test.
func TestTransparentMode(t *testing.T) {
	t.Parallel()
	auth := newAuthServer(t, authserver.Config{AccessTokenLifespan: time.Minute})
	api := newResourceServer(t, auth)
	caFile, cert := newAPICertificate(t, apiHost)
	endpoint, err := api.ServeTLS(cert)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := endpoint.Close(); err != nil {
			t.Error(err)
		}
	})
	dir, ksOption := fileKeystore(t)
	storeStaleKeySet(t, auth, dir, keySetName)

	// The sidecar reaches the API by address (the test has no DNS for api.test), with the
	// API's name as the TLS server name, and passes the connector's Host on (reverse_proxy
	// would set the upstream's address for an https upstream).
	sc := startTransparentSidecar(t, auth, ksOption, "https://"+endpoint.Addr(),
		"header_up Host {http.request.hostport}\ntransport http {\ntls_server_name "+apiHost+"\ntls_trust_pool file "+caFile+"\n}")
	root := sidecarRoot(t, sc)
	client := connectorClient(t, sc.Addr, root)

	body := make([]byte, 256<<10)
	_, _ = rand.Read(body)
	sum := sha256.Sum256(body)
	requests, rejected := api.Requests(), api.Unauthorized()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "https://"+apiHost+"/orders", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	// An SDK that insists on a credential of its own: replaced, as everywhere else.
	req.Header.Set("Authorization", "Bearer the-connectors-own-token")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST https://%s/orders: %v", apiHost, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("POST https://%s/orders: %d %s (%v); want 200", apiHost, resp.StatusCode, truncate(string(answer), 300), err)
	}
	if chain := resp.TLS.VerifiedChains; len(chain) == 0 || !chain[0][len(chain[0])-1].Equal(root) {
		t.Errorf("the connector's TLS chain does not end at the sidecar's root certificate")
	}

	var echo resourceserver.Echo
	if err := json.Unmarshal(answer, &echo); err != nil {
		t.Fatalf("decoding the API's answer %s: %v", answer, err)
	}
	if echo.Length != int64(len(body)) || echo.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("the API received %d bytes, sha256 %s; want %d bytes, sha256 %x", echo.Length, echo.SHA256, len(body), sum)
	}
	if echo.AuthorizationCount != 1 {
		t.Errorf("the API saw %d Authorization headers; want 1, the injected one", echo.AuthorizationCount)
	}
	if got := api.Unauthorized() - rejected; got != 1 {
		t.Errorf("the API answered 401 %d times; want 1 (the revoked token)", got)
	}
	if got := api.Requests() - requests; got != 2 {
		t.Errorf("the API saw %d requests; want 2 (the request and its replay)", got)
	}
	if ks, _ := readKeySet(t, dir, keySetName); ks.Generation != 2 {
		t.Errorf("stored generation %d; want 2 (one refresh)", ks.Generation)
	}
	hosts, serverNames := endpoint.Seen()
	want := []string{apiHost, apiHost}
	if !slices.Equal(hosts, want) || !slices.Equal(serverNames, want) {
		t.Errorf("the API saw Host %q and server names %q; want %q for both", hosts, serverNames, want)
	}
}

// A sidecar whose upstream resolves to its own listener would proxy to itself forever: it
// refuses to start, naming the loop. "localhost" resolves through /etc/hosts, as the API's
// name would through the pod's hostAliases entry.
func TestTransparentSelfProxyRefused(t *testing.T) {
	t.Parallel()
	auth := newAuthServer(t, authserver.Config{})
	_, ksOption := fileKeystore(t)
	port, err := sidecar.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p := newTransparentSidecar(t, auth, ksOption, fmt.Sprintf("https://localhost:%d", port), "", port)
	err = p.Start(t.Context())
	if err == nil {
		t.Fatalf("the sidecar started with reverse_proxy https://localhost:%d on its own listener; want it refused", port)
	}
	for _, want := range []string{"would proxy to itself", fmt.Sprintf("127.0.0.1:%d", port)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("starting the sidecar: %v; want an error containing %q", err, want)
		}
	}
}

// transparentSidecar is a sidecar serving https://api.test.
type transparentSidecar struct {
	*sidecar.Process
	dir      string // its Options.Dir
	rootPort int    // the loopback port of its root certificate site
}

// startTransparentSidecar starts a sidecar serving https://api.test on a kernel-chosen port
// with a certificate of its internal CA, in front of reverse_proxy upstream { proxy }.
func startTransparentSidecar(t *testing.T, auth *authserver.Server, ksOption, upstream, proxy string) *transparentSidecar {
	t.Helper()
	port, err := sidecar.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p := newTransparentSidecar(t, auth, ksOption, upstream, proxy, port)
	mustStart(t, p.Process)
	waitForCertificate(t, p.Process)
	return p
}

func newTransparentSidecar(t *testing.T, auth *authserver.Server, ksOption, upstream, proxy string, port int) *transparentSidecar {
	t.Helper()
	rootPort, err := sidecar.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	handler := []string{
		"token_url " + auth.TokenURL(),
		"client_id " + authserver.DefaultClientID,
		"client_secret {env.CLIENT_SECRET}",
		"keystore " + ksOption,
		"min_refresh_interval " + minRefreshInterval.String(),
	}
	name := fmt.Sprintf("%03d-%s.log", logSeq.Add(1), unsafeName.ReplaceAllString(t.Name(), "_"))
	p, err := sidecar.NewWithCaddyfile(sidecar.Options{
		Bin:     caddyBin,
		Dir:     dir,
		Port:    port,
		Env:     []string{"CLIENT_SECRET=" + authserver.DefaultClientSecret},
		LogPath: filepath.Join(logDir, name),
	}, transparentCaddyfile(port, rootPort, sidecar.DataDir(dir), handler, upstream, proxy))
	if err != nil {
		t.Fatalf("sidecar.NewWithCaddyfile() = %v", err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("stopping the sidecar on %s: %v", p.Addr, err)
		}
	})
	return &transparentSidecar{Process: p, dir: dir, rootPort: rootPort}
}

// transparentCaddyfile is k8s/overlays/transparent/Caddyfile on test ports: the internal CA's
// root certificate on a loopback site, and the API's host name as the site address on
// loopback, with a certificate of that CA, no HTTP redirect listener and no attempt to
// install the root in the system's trust store.
func transparentCaddyfile(port, rootPort int, dataDir string, handler []string, upstream, proxy string) string {
	var b strings.Builder
	b.WriteString("{\n\tadmin off\n\tpersist_config off\n\tauto_https disable_redirects\n\tskip_install_trust\n")
	b.WriteString("\tlog {\n\t\tlevel DEBUG\n\t}\n}\n\n")
	fmt.Fprintf(&b, ":%d {\n\tbind 127.0.0.1\n\thandle /root.crt {\n\t\trespond \"{file.%s}\"\n\t}\n\trespond 404\n}\n\n",
		rootPort, filepath.Join(dataDir, "pki", "authorities", "local", "root.crt"))
	fmt.Fprintf(&b, "%s:%d {\n\tbind 127.0.0.1\n\ttls internal\n\toauth2_upstream {\n", apiHost, port)
	for _, line := range handler {
		b.WriteString("\t\t" + line + "\n")
	}
	fmt.Fprintf(&b, "\t}\n\treverse_proxy %s {\n", upstream)
	for _, line := range strings.Split(proxy, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			b.WriteString("\t\t" + line + "\n")
		}
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// sidecarRoot fetches the root certificate of the sidecar's internal CA from its loopback
// site, as the overlay's trust-ca container does, and checks it is the one in Caddy's data
// directory.
func sidecarRoot(t *testing.T, sc *transparentSidecar) *x509.Certificate {
	t.Helper()
	r := get(newClient(t, 1), fmt.Sprintf("http://127.0.0.1:%d/root.crt", sc.rootPort))
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("fetching the sidecar's root certificate: %s", r)
	}
	stored, err := os.ReadFile(filepath.Join(sidecar.DataDir(sc.dir), "pki", "authorities", "local", "root.crt"))
	if err != nil {
		t.Fatalf("reading the sidecar's root certificate: %v", err)
	}
	if strings.TrimSpace(string(r.body)) != strings.TrimSpace(string(stored)) {
		t.Fatalf("the sidecar serves a root certificate other than its CA's:\n%s", r.body)
	}
	block, _ := pem.Decode(r.body)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("the sidecar's root certificate site serves no PEM certificate: %s", r)
	}
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// connectorClient is a connector that knows only https://api.test: its dialer leads the
// name to the sidecar (as hostAliases does), and it trusts nothing but root.
func connectorClient(t *testing.T, sidecarAddr string, root *x509.Certificate) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(root)
	var dialer net.Dialer
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr != apiHost+":443" {
				return nil, fmt.Errorf("the connector dials %s only, not %s", apiHost+":443", addr)
			}
			return dialer.DialContext(ctx, network, sidecarAddr)
		},
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// waitForCertificate waits until the sidecar presents a certificate for api.test: Caddy
// issues it from its internal CA in the background once it started.
func waitForCertificate(t *testing.T, p *sidecar.Process) {
	t.Helper()
	waitFor(t, 10*time.Second, "a certificate for "+apiHost, func() bool {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", p.Addr,
			&tls.Config{ServerName: apiHost, InsecureSkipVerify: true}) //nolint:gosec // only whether one is served
		if err != nil {
			return false
		}
		_ = conn.Close()
		return true
	})
}

// newAPICertificate makes a certificate for host, issued by a CA of its own, and writes that
// CA's certificate to a file: the real API's certificate, which only the sidecar trusts.
func newAPICertificate(t *testing.T, host string) (caFile string, cert tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "API test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(t.TempDir(), "api-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return caFile, tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}
}
