package discovery

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
)

// The well-known locations of an issuer: OpenID Connect Discovery's
// appended to the issuer (section 4.1), RFC 8414's inserted between host
// and path (section 3.1), a terminating / removed first.
func TestLocations(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, issuer string
		want         []string
	}{
		{"no path", "https://as.example.com",
			[]string{"https://as.example.com/.well-known/openid-configuration", "https://as.example.com/.well-known/oauth-authorization-server"}},
		{"a lone slash", "https://as.example.com/",
			[]string{"https://as.example.com/.well-known/openid-configuration", "https://as.example.com/.well-known/oauth-authorization-server"}},
		{"a path", "https://as.example.com/tenant1",
			[]string{"https://as.example.com/tenant1/.well-known/openid-configuration", "https://as.example.com/.well-known/oauth-authorization-server/tenant1"}},
		{"a path with a terminating slash", "https://as.example.com:8443/realms/acme/",
			[]string{"https://as.example.com:8443/realms/acme/.well-known/openid-configuration", "https://as.example.com:8443/.well-known/oauth-authorization-server/realms/acme"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Locations(tt.issuer)
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("Locations(%q) = %q, %v; want %q", tt.issuer, got, err, tt.want)
			}
		})
	}
}

// An issuer is https (http only on loopback), with no query or fragment:
// the document it names says where secrets go.
func TestCheckIssuer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		issuer string
		ok     bool
	}{
		{"https://as.example.com", true},
		{"https://as.example.com/tenant1", true},
		{"http://127.0.0.1:9000", true},
		{"http://localhost:9000/realms/acme", true},
		{"http://as.example.com", false},
		{"https://as.example.com?tenant=1", false},
		{"https://as.example.com#x", false},
		{"https://user:pw@as.example.com", false},
		{"as.example.com", false},
	}
	for _, tt := range tests {
		if err := CheckIssuer(tt.issuer); (err == nil) != tt.ok {
			t.Errorf("CheckIssuer(%q) = %v; want ok %v", tt.issuer, err, tt.ok)
		}
	}
}

// metadataServer answers documents by path; the issuer is its URL followed
// by issuerPath. A document's "issuer" of "{issuer}" is replaced by it.
type metadataServer struct {
	*httptest.Server
	issuerPath string

	mu       sync.Mutex // guards requests
	requests []string
}

func newMetadataServer(t *testing.T, issuerPath string, answers map[string]func(w http.ResponseWriter, issuer string)) *metadataServer {
	t.Helper()
	s := &metadataServer{issuerPath: issuerPath}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests = append(s.requests, r.URL.Path)
		s.mu.Unlock()
		if answer, ok := answers[r.URL.Path]; ok {
			answer(w, s.issuer())
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *metadataServer) issuer() string { return s.URL + s.issuerPath }

func (s *metadataServer) paths() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// document answers a metadata document naming issuer (or, when
// otherIssuer is set, that one).
func document(otherIssuer string) func(w http.ResponseWriter, issuer string) {
	return func(w http.ResponseWriter, issuer string) {
		if otherIssuer != "" {
			issuer = otherIssuer
		}
		json.NewEncoder(w).Encode(map[string]any{
			"issuer": issuer, "token_endpoint": issuer + "/token", "authorization_endpoint": issuer + "/authorize",
			"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt"},
			"dpop_signing_alg_values_supported":     []string{"ES256"},
		})
	}
}

// Fetch reads the document at OpenID Connect Discovery's location, or at
// RFC 8414's when that one is missing, for issuers with and without a
// path; it refuses a document of another issuer, follows no redirect, and
// says a server it cannot read a document from is unreachable.
func TestFetch(t *testing.T) {
	t.Parallel()
	status := func(code int) func(http.ResponseWriter, string) {
		return func(w http.ResponseWriter, _ string) { w.WriteHeader(code) }
	}
	tests := []struct {
		name        string
		issuerPath  string
		answers     map[string]func(http.ResponseWriter, string)
		wantAt      string // the location read; "" for a failure
		unreachable bool
		wantErr     string
	}{
		{name: "OpenID Connect Discovery", answers: map[string]func(http.ResponseWriter, string){
			"/.well-known/openid-configuration": document("")}, wantAt: "/.well-known/openid-configuration"},
		{name: "RFC 8414 when OpenID's is missing", answers: map[string]func(http.ResponseWriter, string){
			"/.well-known/oauth-authorization-server": document("")}, wantAt: "/.well-known/oauth-authorization-server"},
		{name: "an issuer with a path, OpenID", issuerPath: "/tenant1", answers: map[string]func(http.ResponseWriter, string){
			"/tenant1/.well-known/openid-configuration": document("")}, wantAt: "/tenant1/.well-known/openid-configuration"},
		{name: "an issuer with a path, RFC 8414", issuerPath: "/tenant1", answers: map[string]func(http.ResponseWriter, string){
			"/.well-known/oauth-authorization-server/tenant1": document("")}, wantAt: "/.well-known/oauth-authorization-server/tenant1"},
		{name: "another issuer's document", answers: map[string]func(http.ResponseWriter, string){
			"/.well-known/openid-configuration": document("https://evil.example.com")}, wantErr: "must be identical"},
		{name: "an issuer differing by a terminating slash", issuerPath: "/tenant1", answers: map[string]func(http.ResponseWriter, string){
			"/tenant1/.well-known/openid-configuration": func(w http.ResponseWriter, issuer string) { document(issuer+"/")(w, issuer) }},
			wantErr: "must be identical"},
		{name: "a redirect", answers: map[string]func(http.ResponseWriter, string){
			"/.well-known/openid-configuration": func(w http.ResponseWriter, _ string) {
				w.Header().Set("Location", "/moved")
				w.WriteHeader(http.StatusFound)
			},
			"/moved": document("")}, unreachable: true, wantErr: "not followed"},
		{name: "a server error", answers: map[string]func(http.ResponseWriter, string){
			"/.well-known/openid-configuration": status(http.StatusServiceUnavailable)}, unreachable: true, wantErr: "answered 503"},
		{name: "no document", unreachable: true, wantErr: "no metadata document"},
		{name: "not JSON", answers: map[string]func(http.ResponseWriter, string){
			"/.well-known/openid-configuration": func(w http.ResponseWriter, _ string) { w.Write([]byte("<html>")) }}, wantErr: "not a JSON object"},
		{name: "too large", answers: map[string]func(http.ResponseWriter, string){
			"/.well-known/openid-configuration": func(w http.ResponseWriter, _ string) { w.Write(make([]byte, MaxDocumentBytes+1)) }},
			wantErr: "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newMetadataServer(t, tt.issuerPath, tt.answers)
			md, err := Fetch(t.Context(), NewClient(), s.issuer())
			if tt.wantAt == "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || errors.Is(err, ErrUnreachable) != tt.unreachable {
					t.Fatalf("Fetch(%q) = %+v, %v; want an error with %q, unreachable %v", s.issuer(), md, err, tt.wantErr, tt.unreachable)
				}
				if slices.Contains(s.paths(), "/moved") {
					t.Errorf("Fetch(%q) followed the redirect: requests %q", s.issuer(), s.paths())
				}
				return
			}
			if err != nil {
				t.Fatalf("Fetch(%q) = %v; want the document at %s", s.issuer(), err, tt.wantAt)
			}
			want := Metadata{Issuer: s.issuer(), TokenEndpoint: s.issuer() + "/token", AuthorizationEndpoint: s.issuer() + "/authorize",
				TokenEndpointAuthMethods: []string{"client_secret_post", "private_key_jwt"}, DPoPSigningAlgs: []string{"ES256"},
				Location: s.URL + tt.wantAt}
			if md.Issuer != want.Issuer || md.TokenEndpoint != want.TokenEndpoint || md.AuthorizationEndpoint != want.AuthorizationEndpoint ||
				md.Location != want.Location || !slices.Equal(md.TokenEndpointAuthMethods, want.TokenEndpointAuthMethods) ||
				!slices.Equal(md.DPoPSigningAlgs, want.DPoPSigningAlgs) {
				t.Errorf("Fetch(%q) = %+v; want %+v", s.issuer(), *md, want)
			}
		})
	}
}

// Fetch refuses an http issuer off loopback before any request: the
// metadata says where secrets go.
func TestFetchRefusesHTTPIssuer(t *testing.T) {
	t.Parallel()
	client := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		t.Errorf("Fetch sent %s %s", r.Method, r.URL)
		return nil, errors.New("no request expected")
	})}
	_, err := Fetch(t.Context(), client, "http://as.example.com")
	if err == nil || !strings.Contains(err.Error(), "must be https") || errors.Is(err, ErrUnreachable) {
		t.Errorf("Fetch(http://as.example.com) = %v; want a refusal: must be https", err)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// The client authentication chosen from the metadata is the first
// candidate the token endpoint lists, none when it lists none of them, and
// the first when the document lists no methods.
func TestChooseClientAuth(t *testing.T) {
	t.Parallel()
	basicPost := []string{credential.ClientAuthSecretBasic, credential.ClientAuthSecretPost}
	tests := []struct {
		name       string
		listed     []string
		candidates []string
		want       string
		ok         bool
	}{
		{"the default listed", []string{"client_secret_post", "client_secret_basic"}, basicPost, credential.ClientAuthSecretBasic, true},
		{"only post listed", []string{"client_secret_post", "private_key_jwt"}, basicPost, credential.ClientAuthSecretPost, true},
		{"none of the candidates", []string{"private_key_jwt"}, basicPost, "", false},
		{"no list", nil, basicPost, credential.ClientAuthSecretBasic, true},
		{"a public client", []string{"none"}, []string{credential.ClientAuthNone}, credential.ClientAuthNone, true},
		{"mTLS", []string{"tls_client_auth", "private_key_jwt"}, []string{credential.ClientAuthTLS}, credential.ClientAuthTLS, true},
	}
	for _, tt := range tests {
		md := &Metadata{TokenEndpointAuthMethods: tt.listed}
		if got, ok := md.ChooseClientAuth(tt.candidates); got != tt.want || ok != tt.ok {
			t.Errorf("%s: ChooseClientAuth(%q) with %q listed = %q, %v; want %q, %v", tt.name, tt.candidates, tt.listed, got, ok, tt.want, tt.ok)
		}
	}
}

// A DPoP algorithm is accepted when the server lists it, or lists none.
func TestSupportsDPoPAlg(t *testing.T) {
	t.Parallel()
	tests := []struct {
		listed []string
		want   bool
	}{
		{nil, true},
		{[]string{"RS256", "ES256"}, true},
		{[]string{"PS256"}, false},
	}
	for _, tt := range tests {
		md := &Metadata{DPoPSigningAlgs: tt.listed}
		if got := md.SupportsDPoPAlg("ES256"); got != tt.want {
			t.Errorf("SupportsDPoPAlg(ES256) with %q listed = %v; want %v", tt.listed, got, tt.want)
		}
	}
}

// The package reads metadata for Caddy modules but imports nothing of
// Caddy's.
func TestDiscoveryImportsNoCaddy(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.Contains(pkg, "caddyserver") {
			t.Errorf("discovery depends on %s", pkg)
		}
	}
}
