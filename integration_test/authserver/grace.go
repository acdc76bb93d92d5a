package authserver

import (
	"context"
	"sync"
	"time"

	"github.com/ory/fosite"
)

// graceLedger is the token store's memory of rotation with a grace period
// (Quirks.RefreshGracePeriod). fosite's MemoryStore marks one refresh token
// of a family active at a time, the newest; with a grace period a replaced
// token stays active there, and the ledger says when it dies, and which
// families were revoked, so that revoking a family reaches every token it
// still has.
type graceLedger struct {
	mu      sync.Mutex           // guards the fields below
	now     func() time.Time     // nil: time.Now; tests replace it
	spentAt map[string]time.Time // refresh token signature: when a grace rotation first spent it
	revoked map[string]struct{}  // request IDs (token families) revoked
}

func (l *graceLedger) clock() time.Time {
	if l.now == nil {
		return time.Now()
	}
	return l.now()
}

// spend records that rotation spent the refresh token signature, unless it
// was spent before: a grant within the grace period does not extend it.
func (l *graceLedger) spend(signature string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.spentAt == nil {
		l.spentAt = map[string]time.Time{}
	}
	if _, ok := l.spentAt[signature]; !ok {
		l.spentAt[signature] = l.clock()
	}
}

// dead reports whether the refresh token signature of family requestID may
// no longer be used: its family was revoked, or a grace rotation spent it
// longer than period ago (with period 0, at all).
func (l *graceLedger) dead(requestID, signature string, period time.Duration) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.revoked[requestID]; ok {
		return true
	}
	at, spent := l.spentAt[signature]
	return spent && !l.clock().Before(at.Add(period))
}

func (l *graceLedger) revoke(requestID string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.revoked == nil {
		l.revoked = map[string]struct{}{}
	}
	l.revoked[requestID] = struct{}{}
}

// rotateWithGrace is RotateRefreshToken with a grace period: the presented
// refresh token stays active, counted as spent (so that presenting it after
// the period is a reuse detection), and only the family's access token is
// retired, as on any grant.
func (s *tokenStore) rotateWithGrace(ctx context.Context, requestID, signature string) error {
	s.grace.spend(signature)
	s.mu.Lock()
	s.spent[signature] = struct{}{}
	s.mu.Unlock()
	return s.MemoryStore.RevokeAccessToken(ctx, requestID)
}

// GetRefreshTokenSession is MemoryStore's, except that a token the ledger
// says is dead is inactive: fosite then takes its reuse path, which revokes
// the family.
func (s *tokenStore) GetRefreshTokenSession(ctx context.Context, signature string, session fosite.Session) (fosite.Requester, error) {
	requester, err := s.MemoryStore.GetRefreshTokenSession(ctx, signature, session)
	if err != nil {
		return requester, err
	}
	if s.grace.dead(requester.GetID(), signature, gracePeriod(ctx)) {
		return requester, fosite.ErrInactiveToken
	}
	return requester, nil
}

// RevokeRefreshToken revokes the family requestID: MemoryStore's marks its
// newest refresh token inactive, the ledger every other one that a grace
// period kept active.
func (s *tokenStore) RevokeRefreshToken(ctx context.Context, requestID string) error {
	s.grace.revoke(requestID)
	return s.MemoryStore.RevokeRefreshToken(ctx, requestID)
}
