// Package authserver runs a real OAuth2 authorization server, built from
// github.com/ory/fosite, for the end-to-end tests and the demo.
//
// It listens on two loopback ports chosen by the kernel: one serves only the
// token endpoint and can be stopped and started again on the same port (to
// simulate an unreachable identity provider); the other serves introspection
// (RFC 7662) for the resource server and stays up, as a real API keeps
// validating tokens while the identity provider is down.
//
// Grants are refresh_token (rotating on every grant, with fosite's reuse
// detection revoking the whole token family), client_credentials, RFC 7523
// jwt-bearer, password (for Config.Users), and authorization_code, the
// last used only in-process by Seed. Clients authenticate with a secret
// (Basic or form), a private_key_jwt client assertion (jwtclient.go) or a
// client_secret_jwt one (legacyauth.go). A Profile shapes the token
// endpoint like a given provider's: no rotation, no expires_in, extra
// fields, and the Quirks of quirks.go (rotation with a grace period, the
// scope required on refresh, a tenant in the token URL's path).
package authserver

import (
	"context"
	"crypto"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ory/fosite"
	"github.com/ory/fosite/compose"
	"github.com/ory/fosite/handler/oauth2"
	"golang.org/x/crypto/bcrypt"
)

// Client authentication methods at the token endpoint (RFC 7591 names).
const (
	AuthMethodBasic = "client_secret_basic"
	AuthMethodPost  = "client_secret_post"
)

// Credentials of the client registered by default, as the sidecar uses them.
const (
	DefaultClientID     = "sidecar"
	DefaultClientSecret = "sidecar-secret"
)

// Credentials of the client that the resource server uses for introspection.
// It is always registered, whatever Config.Clients says.
const (
	ResourceServerClientID     = "resource-server"
	ResourceServerClientSecret = "resource-server-secret"
)

// DefaultAccessTokenLifespan is short so that tests see tokens expire.
const DefaultAccessTokenLifespan = 2 * time.Second

// DefaultScopes are the scopes a client may request when Client.Scopes is empty.
var DefaultScopes = []string{"api", "refresh_token", "offline_access", "read", "write"}

// seedRedirectURI is registered for every client so that Seed can run the
// authorization-code flow in-process; nothing ever listens there.
const seedRedirectURI = "http://127.0.0.1/seed-callback"

// Config configures a Server. The zero value is usable.
type Config struct {
	// AccessTokenLifespan is how long an access token stays active.
	// Default: DefaultAccessTokenLifespan (2s).
	AccessTokenLifespan time.Duration

	// RefreshTokenLifespan is how long a refresh token stays usable.
	// Default: fosite's, 30 days; -1 means refresh tokens never expire.
	RefreshTokenLifespan time.Duration

	// Clients are the OAuth2 clients allowed at the token endpoint.
	// Default: one client, DefaultClientID / DefaultClientSecret, with
	// AuthMethodBasic.
	Clients []Client

	// Profile shapes token responses like a given provider. Default: the
	// zero Profile, a rotating provider (Microsoft, Okta, Hydra).
	Profile Profile

	// JWTIssuers are trusted to sign jwt-bearer grant assertions
	// (GrantJWTBearer, jwtclient.go). Default: none.
	JWTIssuers []JWTIssuer

	// Users are the resource owners of the password grant (GrantPassword),
	// username to password. Default: none.
	Users map[string]string
}

// Client is one registered OAuth2 client.
type Client struct {
	// ID is the client_id.
	ID string
	// Secret is the client_secret in clear; the server stores a bcrypt hash.
	Secret string
	// AuthMethod is the only client authentication method the token
	// endpoint accepts from this client: AuthMethodBasic, AuthMethodPost,
	// AuthMethodSecretJWT or AuthMethodPrivateKeyJWT. fosite enforces it, as a strict provider
	// would. Default: AuthMethodBasic.
	AuthMethod string
	// Key is a private_key_jwt client's key, instead of a Secret: the
	// server registers its public half, and Seed signs its code exchange
	// with it, standing in for the client.
	Key crypto.Signer
	// RedirectURIs are where the authorization endpoint (authorize.go) may
	// send a browser back with a code, besides Seed's.
	RedirectURIs []string
	// Scopes the client may request. Default: DefaultScopes.
	Scopes []string
}

// Server is a running authorization server. Its methods are safe for
// concurrent use.
type Server struct {
	provider fosite.OAuth2Provider
	strategy oauth2.CoreStrategy
	store    *tokenStore
	clients  map[string]Client
	grants   grantCounter
	issued   issuedLog
	faults   faultInjector
	inFlight atomic.Int64 // token requests being served

	// grantMu serialises everything that touches refresh tokens (token
	// endpoint, Seed, Revoke). fosite's refresh handler checks and then
	// rotates a token in two steps and relies on a transactional store to
	// make that atomic; the MemoryStore has no transactions. Without this
	// lock, 8 of 300 runs of TestConcurrentSpendOfOneRefreshToken let two
	// or three clients spend one refresh token, and -race flags
	// MemoryStore.RevokeRefreshToken writing its map unguarded.
	grantMu sync.Mutex

	tokenAddr     string // set once in New; Start reuses it
	introspectURL string // set once in New

	mu          sync.Mutex // guards profile, tokenServer, tokenDone, apiServer, apiDone
	profile     Profile
	tokenServer *http.Server  // nil while stopped
	tokenDone   chan struct{} // closed when tokenServer's Serve returns
	apiServer   *http.Server
	apiDone     chan struct{}
}

// New starts a server on two kernel-chosen loopback ports.
func New(cfg Config) (*Server, error) {
	fositeConfig, err := newFositeConfig(cfg)
	if err != nil {
		return nil, err
	}
	store := newTokenStore()
	clients, err := registerClients(store, fositeConfig, cfg.Clients)
	if err != nil {
		return nil, err
	}
	strategy := compose.NewOAuth2HMACStrategy(fositeConfig)
	s := &Server{
		provider: compose.Compose(fositeConfig, store, strategy,
			compose.OAuth2AuthorizeExplicitFactory,
			compose.OAuth2ClientCredentialsGrantFactory,
			compose.OAuth2RefreshTokenGrantFactory,
			compose.OAuth2PKCEFactory,
			compose.OAuth2TokenIntrospectionFactory,
			compose.RFC7523AssertionGrantFactory,
			compose.OAuth2ResourceOwnerPasswordCredentialsFactory,
		),
		strategy: strategy,
		store:    store,
		clients:  clients,
		profile:  cfg.Profile.clone(),
	}
	fositeConfig.ClientAuthenticationStrategy = s.authenticateClient // read per request, once serving
	registerUsers(store, cfg.Users)

	if err := s.startAPI(); err != nil {
		return nil, err
	}
	ln, err := reserveTokenListener()
	if err != nil {
		s.Close()
		return nil, err
	}
	addr := ln.Addr().String()
	fositeConfig.TokenURL = "http://" + addr + "/token" // the aud of assertions
	err = registerIssuers(store, cfg.JWTIssuers)
	if err == nil {
		addr, err = s.startToken(addr, ln)
	}
	if err != nil {
		ln.Close()
		s.Close()
		return nil, err
	}
	s.tokenAddr = addr // written once, before any concurrent use
	return s, nil
}

func newFositeConfig(cfg Config) (*fosite.Config, error) {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("authserver: generate HMAC secret: %w", err)
	}
	lifespan := cfg.AccessTokenLifespan
	if lifespan <= 0 {
		lifespan = DefaultAccessTokenLifespan
	}
	c := &fosite.Config{
		AccessTokenLifespan:  lifespan,
		RefreshTokenLifespan: cfg.RefreshTokenLifespan,
		GlobalSecret:         secret,
		// Issue a refresh token on every authorization-code exchange, not
		// only when "offline" was granted, and allow refresh without it.
		RefreshTokenScopes: []string{},
		// The resource server must accept access tokens only: a refresh
		// token sent as a bearer credential has to be reported inactive.
		DisableRefreshTokenValidation: true,
		// bcrypt's minimum cost keeps client authentication fast under -race.
		HashCost:                   bcrypt.MinCost,
		SendDebugMessagesToClients: true,
		// fosite fills these lazily on first use, which races between
		// concurrent requests; set them up front.
		ScopeStrategy:            fosite.WildcardScopeStrategy,
		AudienceMatchingStrategy: fosite.DefaultAudienceMatchingStrategy,
	}
	c.ClientSecretsHasher = newCachingHasher(&fosite.BCrypt{Config: c})
	return c, nil
}

func registerClients(store *tokenStore, cfg *fosite.Config, configured []Client) (map[string]Client, error) {
	if len(configured) == 0 {
		configured = []Client{{ID: DefaultClientID, Secret: DefaultClientSecret}}
	}
	all := append([]Client{{ID: ResourceServerClientID, Secret: ResourceServerClientSecret}}, configured...)
	clients := make(map[string]Client, len(all))
	for _, c := range all {
		if c.ID == "" || (c.Secret == "") != (c.AuthMethod == AuthMethodPrivateKeyJWT) {
			return nil, fmt.Errorf("authserver: client %q needs an ID and a secret (or, with %s, no secret)", c.ID, AuthMethodPrivateKeyJWT)
		}
		if _, dup := clients[c.ID]; dup {
			return nil, fmt.Errorf("authserver: client %q registered twice", c.ID)
		}
		switch c.AuthMethod {
		case "":
			c.AuthMethod = AuthMethodBasic
		case AuthMethodBasic, AuthMethodPost, AuthMethodPrivateKeyJWT, AuthMethodSecretJWT:
		default:
			return nil, fmt.Errorf("authserver: client %q: unsupported auth method %q", c.ID, c.AuthMethod)
		}
		if len(c.Scopes) == 0 {
			c.Scopes = DefaultScopes
		}
		var hash []byte // none for private_key_jwt: no secret may authenticate it
		if c.Secret != "" {
			var err error
			if hash, err = cfg.ClientSecretsHasher.Hash(context.Background(), []byte(c.Secret)); err != nil {
				return nil, fmt.Errorf("authserver: hash secret of client %q: %w", c.ID, err)
			}
		}
		client := &fosite.DefaultOpenIDConnectClient{
			DefaultClient: &fosite.DefaultClient{
				ID:            c.ID,
				Secret:        hash,
				RedirectURIs:  append([]string{seedRedirectURI}, c.RedirectURIs...),
				GrantTypes:    []string{"authorization_code", "refresh_token", "client_credentials", GrantJWTBearer, GrantPassword},
				ResponseTypes: []string{"code"},
				Scopes:        c.Scopes,
			},
			TokenEndpointAuthMethod: c.AuthMethod,
		}
		if c.AuthMethod == AuthMethodPrivateKeyJWT {
			if err := configureJWTClient(client, c); err != nil {
				return nil, err
			}
		}
		store.Clients[c.ID] = client
		clients[c.ID] = c
	}
	return clients, nil
}

// TokenURL is the token endpoint's URL: /token, or the profile's
// TokenPath. It does not change across Stop and Start (SetProfile with
// another TokenPath moves it).
func (s *Server) TokenURL() string { return "http://" + s.tokenAddr + s.currentProfile().tokenPath() }

// IntrospectURL is the RFC 7662 introspection endpoint's URL. Introspection
// stays reachable while the token endpoint is stopped.
func (s *Server) IntrospectURL() string { return s.introspectURL }

// SetProfile replaces the provider profile for subsequent token responses,
// for instance to point instance_url at a resource server started later.
func (s *Server) SetProfile(p Profile) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.profile = p.clone()
}

func (s *Server) currentProfile() Profile {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.profile
}

// ReuseDetections counts refresh tokens that were presented again after
// rotation had spent them, each of which made fosite revoke the token family.
func (s *Server) ReuseDetections() int { return s.store.reuseDetections() }

// Grants counts refresh_token grants that succeeded.
func (s *Server) Grants() int {
	succeeded, _ := s.grants.counts(GrantRefreshToken)
	return succeeded
}

// GrantAttempts counts refresh_token grant requests that reached the token
// endpoint, whatever their outcome, except those answered by an injected
// fault (InjectFaults), which never reach fosite.
func (s *Server) GrantAttempts() int {
	_, attempted := s.grants.counts(GrantRefreshToken)
	return attempted
}

// GrantCounts reports how many token requests of grantType succeeded and how
// many were attempted. Seed's in-process authorization-code exchange is not
// counted.
func (s *Server) GrantCounts(grantType string) (succeeded, attempted int) {
	return s.grants.counts(grantType)
}

// TokenRequestsInFlight counts token requests being served. A request
// keeps being served after its client died (the grant may still rotate the
// refresh token), so a test that kills a client waits for zero before it
// reads what the server did.
func (s *Server) TokenRequestsInFlight() int { return int(s.inFlight.Load()) }

// Stop closes the token endpoint's listener and its open connections, so
// new connections are refused until Start. A client that reuses a pooled
// keep-alive connection before noticing it was closed gets EOF or a reset
// instead. Stopping twice is harmless.
func (s *Server) Stop() error {
	s.mu.Lock()
	srv, done := s.tokenServer, s.tokenDone
	s.tokenServer, s.tokenDone = nil, nil
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.Close()
	<-done
	if err != nil {
		return fmt.Errorf("authserver: stop token endpoint: %w", err)
	}
	return nil
}

// Start serves the token endpoint again on the port it had before Stop.
// Starting a running endpoint is harmless.
func (s *Server) Start() error {
	_, err := s.startToken(s.tokenAddr, nil)
	return err
}

// Close stops both listeners.
func (s *Server) Close() error {
	errStop := s.Stop()
	s.mu.Lock()
	srv, done := s.apiServer, s.apiDone
	s.apiServer = nil
	s.mu.Unlock()
	if srv == nil {
		return errStop
	}
	err := srv.Close()
	<-done
	if err != nil {
		err = fmt.Errorf("authserver: close introspection endpoint: %w", err)
	}
	return errors.Join(errStop, err)
}

// startToken serves the token endpoint on ln, or when ln is nil on a new
// listener at addr, and returns the address it listens on.
func (s *Server) startToken(addr string, ln net.Listener) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tokenServer != nil {
		return addr, nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /", s.atTokenPath(s.faults.wrap(s.serveToken))) // quirks.go
	s.routeAuthorize(mux)
	srv, done, ln, err := serve(addr, ln, mux)
	if err != nil {
		return "", fmt.Errorf("authserver: start token endpoint on %s: %w", addr, err)
	}
	s.tokenServer, s.tokenDone = srv, done
	return ln.Addr().String(), nil
}

func (s *Server) startAPI() error {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /introspect", s.serveIntrospect)
	srv, done, ln, err := serve("127.0.0.1:0", nil, mux)
	if err != nil {
		return fmt.Errorf("authserver: start introspection endpoint: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apiServer, s.apiDone = srv, done
	s.introspectURL = "http://" + ln.Addr().String() + "/introspect"
	return nil
}

// serve serves handler on ln, or when ln is nil on a new listener at addr,
// until the returned server is closed.
func serve(addr string, ln net.Listener, handler http.Handler) (*http.Server, chan struct{}, net.Listener, error) {
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
			return nil, nil, nil, err
		}
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln) // returns http.ErrServerClosed on Close
	}()
	return srv, done, ln, nil
}
