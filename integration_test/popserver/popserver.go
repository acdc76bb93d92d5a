// Package popserver runs a token endpoint and a resource server that take
// only proof-of-possession tokens: tokens bound to the client's TLS
// certificate (RFC 8705 section 3, cnf x5t#S256) or to its DPoP key (RFC
// 9449, cnf jkt), for the end-to-end tests of certificate-bound tokens and
// DPoP. fosite does neither. Tokens are opaque; the two servers share what
// each token is bound to, as a resource server reads cnf from a JWT access
// token or from introspection.
package popserver

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// Modes (Config.Mode).
const (
	// MTLS: the token endpoint authenticates the client by its certificate
	// (tls_client_auth, RFC 8705 section 2.1) and binds tokens to it; the
	// resource server takes a token only over a TLS connection that
	// presents the same certificate.
	MTLS = "mtls"
	// DPoP: both servers want a DPoP proof with every request; tokens are
	// bound to the proof's key (dpop.go).
	DPoP = "dpop"
)

// Config configures a Server.
type Config struct {
	// Mode is MTLS or DPoP.
	Mode string
	// ClientID is the one client the token endpoint knows.
	ClientID string
	// PKI issues both servers' certificates and, with MTLS, verifies
	// client certificates. Required with MTLS; with DPoP, nil serves
	// plain HTTP on loopback.
	PKI *PKI
	// ClientSubject is the common name the client's certificate must carry
	// (MTLS).
	ClientSubject string
	// AccessTokenLifespan is how long an access token is valid, announced
	// as expires_in. Default: an hour.
	AccessTokenLifespan time.Duration
	// RefreshTokens issues a rotating refresh token with every grant,
	// bound like the access token (RFC 9449 section 5: a public client's).
	RefreshTokens bool
	// RequireNonce (DPoP) makes both servers demand their DPoP-Nonce in
	// proofs (RFC 9449 section 8 and 9), replaced every NonceUses proofs.
	RequireNonce bool
	// NonceUses is how many proofs a nonce serves. Default: 3.
	NonceUses int
}

// token is an issued access or refresh token and what it is bound to.
type token struct {
	refresh bool
	expiry  time.Time
	x5t     string // MTLS: the certificate's thumbprint
	jkt     string // DPoP: the key's thumbprint
	revoked bool
}

// Server is a running token endpoint and resource server. Its methods are
// safe for concurrent use.
type Server struct {
	cfg      Config
	tokenURL string // set once in New
	apiURL   string // set once in New
	servers  []*http.Server
	done     []chan struct{}
	dpop     *dpopChecker // DPoP mode only

	mu           sync.Mutex // guards the fields below
	tokens       map[string]*token
	issued       []string
	grants       map[string]int
	unauthorized int
	refusals     map[string]int // why requests were refused, by reason
}

// New starts both servers on kernel-chosen loopback ports.
func New(cfg Config) (*Server, error) {
	if cfg.Mode != MTLS && cfg.Mode != DPoP {
		return nil, fmt.Errorf("popserver: mode %q", cfg.Mode)
	}
	if cfg.Mode == MTLS && (cfg.PKI == nil || cfg.ClientSubject == "") {
		return nil, errors.New("popserver: MTLS needs a PKI and a ClientSubject")
	}
	if cfg.AccessTokenLifespan <= 0 {
		cfg.AccessTokenLifespan = time.Hour
	}
	s := &Server{cfg: cfg, tokens: map[string]*token{}, grants: map[string]int{}, refusals: map[string]int{}}
	if cfg.Mode == DPoP {
		s.dpop = newDPoPChecker(cfg.RequireNonce, cfg.NonceUses)
	}
	tokenURL, err := s.serve(http.HandlerFunc(s.serveToken), "/token")
	if err != nil {
		return nil, err
	}
	apiURL, err := s.serve(http.HandlerFunc(s.serveResource), "")
	if err != nil {
		s.Close()
		return nil, err
	}
	s.tokenURL, s.apiURL = tokenURL, apiURL
	return s, nil
}

// serve starts one server and returns its URL with path.
func (s *Server) serve(handler http.Handler, path string) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("popserver: listen: %w", err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	scheme := "http"
	if s.cfg.PKI != nil {
		cert, err := s.cfg.PKI.ServerCert()
		if err != nil {
			ln.Close()
			return "", err
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert.Cert}, MinVersion: tls.VersionTLS12}
		if s.cfg.Mode == MTLS {
			srv.TLSConfig.ClientAuth, srv.TLSConfig.ClientCAs = tls.RequireAndVerifyClientCert, s.cfg.PKI.Pool
		}
		ln = tls.NewListener(ln, srv.TLSConfig)
		scheme = "https"
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln) // returns http.ErrServerClosed on Close
	}()
	s.servers, s.done = append(s.servers, srv), append(s.done, done)
	return scheme + "://" + ln.Addr().String() + path, nil
}

// TokenURL is the token endpoint's URL.
func (s *Server) TokenURL() string { return s.tokenURL }

// URL is the resource server's base URL.
func (s *Server) URL() string { return s.apiURL }

// Close stops both servers.
func (s *Server) Close() error {
	var errs []error
	for i, srv := range s.servers {
		errs = append(errs, srv.Close())
		<-s.done[i]
	}
	return errors.Join(errs...)
}

// Grants counts the successful grants of grantType.
func (s *Server) Grants(grantType string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.grants[grantType]
}

// Unauthorized counts the resource server's 401 answers.
func (s *Server) Unauthorized() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unauthorized
}

// Refusals counts the requests either server refused, by reason ("jti
// replayed", "wrong certificate", "use_dpop_nonce", ...).
func (s *Server) Refusals() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.refusals))
	for k, v := range s.refusals {
		out[k] = v
	}
	return out
}

// TokenValues returns every token issued, for the log leak checks.
func (s *Server) TokenValues() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.issued...)
}

// RevokeAccessTokens makes every access token issued so far inactive, as a
// provider's revocation would: the next request with one gets a 401.
func (s *Server) RevokeAccessTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.tokens {
		if !t.refresh {
			t.revoked = true
		}
	}
}

// refuse counts a refusal for reason.
func (s *Server) refuse(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refusals[reason]++
}

// issue mints a token bound like binding and records it.
func (s *Server) issue(binding token) (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	value := base64.RawURLEncoding.EncodeToString(b)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[value] = &binding
	s.issued = append(s.issued, value)
	return value, nil
}

// lookup returns the active token value, if any.
func (s *Server) lookup(value string, refresh bool) (token, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tokens[value]
	if !ok || t.revoked || t.refresh != refresh || time.Now().After(t.expiry) {
		return token{}, false
	}
	return *t, true
}
