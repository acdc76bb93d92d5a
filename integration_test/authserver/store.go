package authserver

import (
	"context"
	"sync"

	"github.com/ory/fosite"
	"github.com/ory/fosite/storage"
)

// tokenStore is fosite's MemoryStore with three additions: it counts
// refresh token reuse, it can keep a refresh token instead of rotating it,
// and it can rotate with a grace period (grace.go).
type tokenStore struct {
	*storage.MemoryStore
	grace graceLedger

	mu sync.Mutex // guards spent and reuses
	// spent holds the signatures of refresh tokens that rotation replaced.
	spent  map[string]struct{}
	reuses int
}

func newTokenStore() *tokenStore {
	return &tokenStore{MemoryStore: storage.NewMemoryStore(), spent: map[string]struct{}{}}
}

// keepRefreshTokenKey marks the context of a refresh_token grant whose
// profile disables rotation.
type keepRefreshTokenKey struct{}

func withKeepRefreshToken(ctx context.Context) context.Context {
	return context.WithValue(ctx, keepRefreshTokenKey{}, true)
}

func keepRefreshToken(ctx context.Context) bool {
	keep, _ := ctx.Value(keepRefreshTokenKey{}).(bool)
	return keep
}

// RotateRefreshToken is called by fosite's refresh handler with the
// signature of the refresh token being spent. MemoryStore marks it inactive
// and revokes the family's access token; presenting it again then takes
// fosite's reuse path (RFC 6819 section 5.2.2.3).
func (s *tokenStore) RotateRefreshToken(ctx context.Context, requestID, signature string) error {
	if keepRefreshToken(ctx) {
		// No rotation: the presented refresh token stays active; only the
		// previous access token is retired, as on a rotating grant.
		return s.MemoryStore.RevokeAccessToken(ctx, requestID)
	}
	if gracePeriod(ctx) > 0 {
		return s.rotateWithGrace(ctx, requestID, signature)
	}
	if err := s.MemoryStore.RotateRefreshToken(ctx, requestID, signature); err != nil {
		return err
	}
	s.mu.Lock()
	s.spent[signature] = struct{}{}
	s.mu.Unlock()
	return nil
}

// CreateRefreshTokenSession stores a newly issued refresh token, except on a
// grant without rotation: fosite always mints a new one, but the profile
// withholds it from the client, so it is never stored.
func (s *tokenStore) CreateRefreshTokenSession(ctx context.Context, signature, accessSignature string, req fosite.Requester) error {
	if keepRefreshToken(ctx) {
		return nil
	}
	return s.MemoryStore.CreateRefreshTokenSession(ctx, signature, accessSignature, req)
}

// DeleteRefreshTokenSession is called by fosite only from its reuse path
// (RefreshTokenGrantHandler.handleRefreshTokenReuse), after an inactive
// refresh token was presented; it then revokes the token family. A token
// that rotation spent counts as a reuse detection; one that was inactive
// because its family had already been revoked does not.
func (s *tokenStore) DeleteRefreshTokenSession(ctx context.Context, signature string) error {
	s.mu.Lock()
	if _, ok := s.spent[signature]; ok {
		delete(s.spent, signature)
		s.reuses++
	}
	s.mu.Unlock()
	return s.MemoryStore.DeleteRefreshTokenSession(ctx, signature)
}

func (s *tokenStore) reuseDetections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reuses
}
