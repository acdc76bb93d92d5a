package integration_test

import (
	"bytes"
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/popserver"
)

// writeFile writes data (0600) into dir and returns the path.
func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func newPopServer(t *testing.T, cfg popserver.Config) *popserver.Server {
	t.Helper()
	s, err := popserver.New(cfg)
	if err != nil {
		t.Fatalf("popserver.New() = %v", err)
	}
	registerTokenIssuer(s.TokenValues) // for the suite's log leak check
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("popserver Close() = %v", err)
		}
	})
	return s
}

// mtlsClient is a client that presents cert to servers of pki.
func mtlsClient(t *testing.T, pki *popserver.PKI, cert tls.Certificate) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool, Certificates: []tls.Certificate{cert}}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// Certificate-bound tokens (RFC 8705): the sidecar authenticates to the
// token endpoint with tls_client_auth, which binds the access token to the
// certificate's thumbprint (cnf x5t#S256); reverse_proxy presents the same
// certificate to the API (the README's pairing), which takes the token only
// over such a connection. A revoked token meets a 401, the sidecar makes a
// new grant and replays the body. The stored token is refused with another
// certificate of the same CA and subject, and taken with the sidecar's.
func TestCertificateBoundTokens(t *testing.T) {
	t.Parallel()
	pki, err := popserver.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	clientCert, err := pki.ClientCert("sidecar-client")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile := writeFile(t, dir, "ca.pem", pki.CAPEM)
	certFile := writeFile(t, dir, "client.crt", clientCert.CertPEM)
	keyFile := writeFile(t, dir, "client.key", clientCert.KeyPEM)
	pop := newPopServer(t, popserver.Config{Mode: popserver.MTLS, ClientID: "mtls-client", PKI: pki, ClientSubject: "sidecar-client"})

	ksDir, ksOption := fileKeystore(t)
	sc := startSidecar(t, spec{
		tokenURL: pop.TokenURL(), upstream: pop.URL(), keystore: ksOption,
		client: &authserver.Client{ID: "mtls-client"},
		// The token endpoint's certificate comes from the test CA.
		env: []string{"SSL_CERT_FILE=" + caFile},
		options: []string{"client_auth tls_client_auth", "client_certificate " + certFile + " " + keyFile,
			"grant client_credentials", "refresh reactive"},
		proxy: "transport http {\ntls_client_auth " + certFile + " " + keyFile + "\ntls_trust_pool file " + caFile + "\n}",
	})
	c := newClient(t, 2)
	if r := get(c, sc.URL()+"/first"); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("GET /first: %s; want 200", r)
	}
	time.Sleep(2 * minRefreshInterval) // the token is old enough for a rejection to make a grant
	pop.RevokeAccessTokens()
	postThrough(t, c, sc.URL()+"/upload", bytes.Repeat([]byte("bound "), 50<<10))
	if got := pop.Grants(popserver.GrantClientCredentials); got != 2 {
		t.Errorf("grants = %d; want 2 (the first, and after the revoked token's 401)", got)
	}
	if got := pop.Unauthorized(); got != 1 {
		t.Errorf("resource server 401s = %d; want 1 (the revoked token); refusals %v", got, pop.Refusals())
	}

	ks, _ := readKeySet(t, ksDir, keySetName)
	stolen, err := pki.ClientCert("sidecar-client")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		cert   tls.Certificate
		status int
	}{
		{"another certificate", stolen.Cert, http.StatusUnauthorized},
		{"the sidecar's certificate", clientCert.Cert, http.StatusOK},
	} {
		req, _ := http.NewRequest(http.MethodGet, pop.URL()+"/direct", nil)
		req.Header.Set("Authorization", "Bearer "+ks.Token.AccessToken())
		if r := do(mtlsClient(t, pki, tt.cert), req); r.status != tt.status {
			t.Errorf("the stored token with %s: %s; want %d", tt.name, r, tt.status)
		}
	}
	if got := pop.Refusals()["wrong certificate"]; got != 1 {
		t.Errorf("refusals for the wrong certificate = %d; want 1", got)
	}
}
