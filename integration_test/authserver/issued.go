package authserver

import (
	"sync"
	"time"
)

// Issued is one set of token values the server handed out: a token
// endpoint response, or Seed's in-process code exchange.
type Issued struct {
	// At is when the server issued the tokens, just before it answered.
	At time.Time
	// GrantType is the grant that issued them ("authorization_code" for Seed).
	GrantType string
	// AccessToken is the access token issued.
	AccessToken string
	// RefreshToken is the refresh token minted, "" when none was; with a
	// profile that omits refresh_token it was minted but never sent.
	RefreshToken string
	// ExpiresIn is the expires_in the client was told (fosite rounds it
	// down to whole seconds: a 3s lifespan is announced as 2s or 3s), 0
	// when the profile omits it.
	ExpiresIn time.Duration
}

// issuedLog records every Issued, in order.
type issuedLog struct {
	mu     sync.Mutex // guards issued
	issued []Issued
}

func (l *issuedLog) record(i Issued) {
	i.At = time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.issued = append(l.issued, i)
}

func (l *issuedLog) all() []Issued {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Issued(nil), l.issued...)
}

// Issued returns every set of tokens the server issued, oldest first, so
// tests can time grants and check that no token value leaks into a log.
func (s *Server) Issued() []Issued { return s.issued.all() }

// TokenValues returns every access and refresh token value the server ever
// issued, Seed's included.
func (s *Server) TokenValues() []string {
	var values []string
	for _, i := range s.issued.all() {
		for _, v := range []string{i.AccessToken, i.RefreshToken} {
			if v != "" {
				values = append(values, v)
			}
		}
	}
	return values
}
