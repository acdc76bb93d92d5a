package authserver

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/ory/fosite"
)

// Grant types (RFC 6749 section 4 and 6).
const (
	GrantRefreshToken      = "refresh_token"
	GrantClientCredentials = "client_credentials"
)

// serveToken is the token endpoint (RFC 6749 section 3.2): fosite handles the
// grant; this wrapper counts it and applies the provider profile.
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	ctx := r.Context()
	// Read the form before taking grantMu, so that a slow client cannot hold
	// up other grants; fosite then finds it already parsed.
	if err := r.ParseForm(); err != nil {
		s.provider.WriteAccessError(ctx, w, nil, fosite.ErrInvalidRequest.WithWrap(err).WithHint("Unable to parse the form body."))
		return
	}
	grantType := r.PostForm.Get("grant_type")
	profile := s.currentProfile()
	if profile.OmitRefreshToken && grantType == GrantRefreshToken {
		ctx = withKeepRefreshToken(ctx)
	}
	ctx = withGracePeriod(ctx, profile.RefreshGracePeriod)

	s.grants.attempt(grantType)
	if err := profile.refuseRequest(grantType, r.PostForm); err != nil {
		s.provider.WriteAccessError(ctx, w, nil, err)
		return
	}
	requester, response, err := s.grant(ctx, r)
	if err != nil {
		s.writeAccessError(ctx, w, requester, err, profile)
		return
	}
	s.grants.succeed(grantType)
	sent := profiledResponse{AccessResponder: response, profile: profile}
	refreshToken, _ := response.GetExtra("refresh_token").(string)
	expiresIn, _ := sent.ToMap()["expires_in"].(int64)
	s.issued.record(Issued{GrantType: grantType, AccessToken: response.GetAccessToken(),
		RefreshToken: refreshToken, ExpiresIn: time.Duration(expiresIn) * time.Second})
	s.provider.WriteAccessResponse(ctx, w, requester, sent)
}

// grant runs one token request through fosite under grantMu.
func (s *Server) grant(ctx context.Context, r *http.Request) (fosite.AccessRequester, fosite.AccessResponder, error) {
	s.grantMu.Lock()
	defer s.grantMu.Unlock()
	requester, err := s.provider.NewAccessRequest(ctx, r, newSession(""))
	if err != nil {
		return requester, nil, err
	}
	response, err := s.provider.NewAccessResponse(ctx, requester)
	if err != nil {
		return requester, nil, err
	}
	return requester, response, nil
}

// serveIntrospect is the introspection endpoint (RFC 7662). Callers
// authenticate as a registered client with HTTP Basic. Only access tokens
// can be active (Config.DisableRefreshTokenValidation).
func (s *Server) serveIntrospect(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	response, err := s.provider.NewIntrospectionRequest(ctx, r, newSession(""))
	if err != nil {
		s.provider.WriteIntrospectionError(ctx, w, err)
		return
	}
	s.provider.WriteIntrospectionResponse(ctx, w, response)
}

// newSession makes a token's session. Extra is set up front: MemoryStore
// hands every introspection of a token the same stored session, and
// DefaultSession.GetExtraClaims would otherwise create the map lazily, a
// data race between concurrent introspections of one token.
func newSession(subject string) *fosite.DefaultSession {
	return &fosite.DefaultSession{Subject: subject, Extra: map[string]any{}}
}

// grantCounter counts token requests by grant type.
type grantCounter struct {
	mu        sync.Mutex // guards attempted and succeeded
	attempted map[string]int
	succeeded map[string]int
}

func (c *grantCounter) attempt(grantType string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.attempted == nil {
		c.attempted = map[string]int{}
	}
	c.attempted[grantType]++
}

func (c *grantCounter) succeed(grantType string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.succeeded == nil {
		c.succeeded = map[string]int{}
	}
	c.succeeded[grantType]++
}

func (c *grantCounter) counts(grantType string) (succeeded, attempted int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.succeeded[grantType], c.attempted[grantType]
}
