package credential

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// alwaysRejected plays a request to an upstream that answers 401 to every
// token: the token from Current, and after a Rejected that returns a
// credential, one replay, whose 401 goes to the client
// (DESIGN.md invariant 2). It returns Rejected's error.
func (f *refresherFixture) alwaysRejected(t *testing.T, name string) error {
	t.Helper()
	cred := f.mustCurrent(t, name)
	_, err := f.r.Rejected(context.Background(), name, cred.KeySet.Generation)
	return err
}

// TestEngineRecentGenerationRejected: an upstream path that answers 401 to
// every token must not make a grant per request. A rejection of the
// generation in use younger than the minimum refresh interval makes no
// grant (a *TooRecentError); 100 requests within 10 s make at most 2
// grants. With the minimum off, every request grants.
func TestEngineRecentGenerationRejected(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		minInterval time.Duration
		requests    int
		wantGrants  int64
	}{
		// Generation 1 is an hour old: its rejection grants once.
		{"default minimum", 0, 100, 1},
		{"minimum off", -1, 5, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			if tt.minInterval != 0 {
				f.r.minRefreshInterval = tt.minInterval
			}
			storeKeySet(t, f.store, f.keySet("sf", 1, "at-old", "rt-0", f.clock.Now().Add(time.Hour)))
			var tooRecent int
			for i := range tt.requests {
				err := f.alwaysRejected(t, "sf")
				var tre *TooRecentError
				switch {
				case errors.As(err, &tre):
					tooRecent++
					if tre.KeySet != "sf" || tre.Generation != 2 || tre.Age != 0 || tre.MinInterval != DefaultMinRefreshInterval {
						t.Errorf("request %d: Rejected = %+v; want {sf, generation 2, age 0, min %v}", i+1, tre, DefaultMinRefreshInterval)
					}
				case err != nil:
					t.Fatalf("request %d: Rejected = %v; want a credential or *TooRecentError", i+1, err)
				}
			}
			if got := f.te.Grants.Load(); got != tt.wantGrants {
				t.Errorf("grants for %d always-rejected requests = %d; want %d", tt.requests, got, tt.wantGrants)
			}
			if want := tt.requests - int(tt.wantGrants); tt.minInterval == 0 && tooRecent != want {
				t.Errorf("*TooRecentError answers = %d; want %d", tooRecent, want)
			}
		})
	}
}

// TestEngineRecentRejectionAdoptsStored: a rejection of a recent
// generation while the keystore holds a newer one (another replica rotated,
// and the provider revoked the access token this one carries) is answered
// with the stored key set and no grant; a stored seed, which this engine
// never sent, is granted with.
func TestEngineRecentRejectionAdoptsStored(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		access     string // of the stored generation 2; "": a seed
		wantHeader string
		wantGrants int64
	}{
		{"usable key set", "at-other", "Bearer at-other", 0},
		{"seed", "", "Bearer at-1", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			ks := f.keySet("sf", 1, "at-old", "rt-spent", f.clock.Now().Add(time.Hour))
			ks.UpdatedAt = f.clock.Now()
			storeKeySet(t, f.store, ks)
			f.mustState(t, "sf")
			var expiry time.Time
			if tt.access != "" {
				expiry = f.clock.Now().Add(time.Hour)
			}
			storeNext(t, f.other, f.keySet("sf", 2, tt.access, "rt-0", expiry))

			cred, err := f.r.Rejected(context.Background(), "sf", 1)
			if err != nil || cred.Header != tt.wantHeader {
				t.Fatalf("Rejected(%q, 1) = %v, %v; want %s", "sf", credString(cred), err, tt.wantHeader)
			}
			if got := f.te.Grants.Load(); got != tt.wantGrants {
				t.Errorf("grants = %d; want %d", got, tt.wantGrants)
			}
			if got := f.mustCurrent(t, "sf"); got.Header != tt.wantHeader {
				t.Errorf("Current(%q) = %s; want %s", "sf", credString(got), tt.wantHeader)
			}
		})
	}
}

// TestEngineRecentRejectionWithPermanentFailure: once the key set's
// refresh token is known dead, a rejection of even a recent generation
// answers with that failure (a person must reseed), not as too recent: no
// grant could be made anyway.
func TestEngineRecentRejectionWithPermanentFailure(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-other") // the stored rt-0 is no longer valid
	ks := f.keySet("sf", 1, "at-old", "rt-0", f.clock.Now().Add(time.Hour))
	ks.UpdatedAt = f.clock.Now()
	storeKeySet(t, f.store, ks)
	if _, err := f.r.ForceRefresh(context.Background(), "sf"); asError(t, err).Code != "invalid_grant" {
		t.Fatalf("ForceRefresh(%q) = %v; want invalid_grant", "sf", err)
	}
	_, err := f.r.Rejected(context.Background(), "sf", 1)
	if re := asError(t, err); re.Code != "invalid_grant" || re.Temporary {
		t.Errorf("Rejected(%q, 1) = {Code %q, Temporary %v}; want {invalid_grant, false}", "sf", re.Code, re.Temporary)
	}
	if got := f.sent.n.Load(); got != 1 {
		t.Errorf("token requests = %d; want 1 (the operator's)", got)
	}
}

// TestEngineRejectedOldEnoughGrants: once the generation in use is as old
// as the minimum refresh interval, its rejection grants again.
func TestEngineRejectedOldEnoughGrants(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
	cred := f.mustCurrent(t, "sf") // generation 2, granted now
	f.clock.Advance(DefaultMinRefreshInterval - time.Second)
	var tre *TooRecentError
	if _, err := f.r.Rejected(context.Background(), "sf", cred.KeySet.Generation); !errors.As(err, &tre) || tre.Age != DefaultMinRefreshInterval-time.Second {
		t.Fatalf("Rejected(%q, 2) 9s after the grant = %v; want *TooRecentError with age 9s", "sf", err)
	}
	f.clock.Advance(time.Second)
	fresh, err := f.r.Rejected(context.Background(), "sf", cred.KeySet.Generation)
	if err != nil || fresh.KeySet.Generation != 3 {
		t.Fatalf("Rejected(%q, 2) 10s after the grant = %v, %v; want generation 3", "sf", credString(fresh), err)
	}
	if got := f.te.Grants.Load(); got != 2 {
		t.Errorf("grants = %d; want 2", got)
	}
}

// TestEngineRejectedFutureGeneration: a generation dated ahead of the
// engine's clock (another replica's clock runs ahead) has no known age, and
// its rejection grants rather than waiting for the clocks to agree.
func TestEngineRejectedFutureGeneration(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	ks := f.keySet("sf", 1, "at-old", "rt-0", f.clock.Now().Add(time.Hour))
	ks.UpdatedAt = f.clock.Now().Add(time.Hour)
	storeKeySet(t, f.store, ks)
	if cred, err := f.r.Rejected(context.Background(), "sf", 1); err != nil || cred.KeySet.Generation != 2 {
		t.Fatalf("Rejected(%q, 1) = %v, %v; want generation 2", "sf", credString(cred), err)
	}
}

// TestEngineRejectedRecentJoinsFlight: a rejection of a recent generation
// while a refresh is already under way joins it: that costs no grant.
func TestEngineRejectedRecentJoinsFlight(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	ks := f.keySet("sf", 1, "at-old", "rt-0", f.clock.Now().Add(time.Hour))
	ks.UpdatedAt = f.clock.Now()
	storeKeySet(t, f.store, ks)
	st := f.mustState(t, "sf")
	release := f.holdGrants(t)
	forced := make(chan error, 1)
	go func() {
		_, err := f.r.ForceRefresh(context.Background(), "sf")
		forced <- err
	}()
	credentialtest.Eventually(t, "the operator's refresh in flight", func() bool { return inFlight(st) })
	var waiting atomic.Int64
	got := make(chan result, 1)
	go func() {
		cred, err := f.r.Rejected(&waitingCtx{Context: context.Background(), waiting: &waiting}, "sf", 1)
		got <- result{cred, err}
	}()
	credentialtest.Eventually(t, "Rejected waiting for the refresh", func() bool { return waiting.Load() == 1 })
	release()
	if err := <-forced; err != nil {
		t.Fatalf("ForceRefresh(%q) = %v", "sf", err)
	}
	res := <-got
	if res.err != nil || res.cred.KeySet.Generation != 2 {
		t.Errorf("Rejected(%q, 1) during a refresh = %v, %v; want its generation 2", "sf", credString(res.cred), res.err)
	}
	if n := f.te.Grants.Load(); n != 1 {
		t.Errorf("grants = %d; want 1", n)
	}
}

// TestEngineShortLivedTokenSkew: a token that lives 20 s, shorter than the
// 30 s expiry skew, is refreshed proactively in the second half of its
// life, not by every request.
func TestEngineShortLivedTokenSkew(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	f.te.ExpiresIn = 20
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
	if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-1" {
		t.Fatalf("Current(%q) = %s; want Bearer at-1", "sf", credString(cred))
	}
	// 50 requests over the first 5 s of its life.
	for i := range 50 {
		f.clock.Advance(100 * time.Millisecond)
		if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-1" {
			t.Fatalf("Current(%q) #%d = %s; want Bearer at-1", "sf", i+1, credString(cred))
		}
		f.r.Close() // waits for any background grant
	}
	if got := f.te.Grants.Load(); got != 1 {
		t.Fatalf("grants after 50 requests in the token's first 5 s = %d; want 1", got)
	}
	// 16 s old: within the spread skew, 5 to 10 s (half its life, spread),
	// of the expiry.
	f.clock.Advance(11 * time.Second)
	if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-1" {
		t.Fatalf("Current(%q) 16 s in = %s; want the still-valid Bearer at-1", "sf", credString(cred))
	}
	f.r.Close()
	if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-2" {
		t.Errorf("Current(%q) after the proactive refresh = %s; want Bearer at-2", "sf", credString(cred))
	}
	if got := f.te.Grants.Load(); got != 2 {
		t.Errorf("grants = %d; want 2", got)
	}
}

// The proactive skew is the configured one, at most half the lifetime,
// spread between all and half of that per key set generation.
func TestProactiveSkew(t *testing.T) {
	t.Parallel()
	updated := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		updated  time.Time
		lifetime time.Duration // 0: no known expiry
		want     time.Duration
	}{
		{"hour-long token", updated, time.Hour, 30 * time.Second},
		{"20 s token", updated, 20 * time.Second, 10 * time.Second},
		{"60 s token", updated, time.Minute, 30 * time.Second},
		{"unknown expiry", updated, 0, 30 * time.Second},
		{"unknown grant time", time.Time{}, 20 * time.Second, 30 * time.Second},
		{"expiry before grant time", updated, -time.Minute, 30 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ks := &keystore.KeySet{Name: "sf", UpdatedAt: tt.updated}
			if tt.lifetime != 0 {
				ks.Expiry = updated.Add(tt.lifetime)
			}
			spread := spreadOf(ks)
			got := (&Credential{KeySet: ks, spread: spread}).proactiveSkew(30 * time.Second)
			if got != time.Duration(float64(tt.want)*spread) || got < tt.want/2 || got >= tt.want {
				t.Errorf("proactiveSkew(30s) with lifetime %v = %v; want %v spread by %v, within [%v, %v)",
					tt.lifetime, got, tt.want, spread, tt.want/2, tt.want)
			}
		})
	}
}

// Key sets whose tokens expire together start their proactive refreshes
// spread over the second half of the skew, not in one instant; each
// generation's place is the same in every replica.
func TestProactiveSpread(t *testing.T) {
	t.Parallel()
	var lo, hi int
	seen := make(map[float64]bool)
	for i := range 10000 {
		ks := &keystore.KeySet{Name: fmt.Sprintf("account-%d", i), Generation: 7}
		s := spreadOf(ks)
		if s < 0.5 || s >= 1 {
			t.Fatalf("spreadOf(%s) = %v; want within [0.5, 1)", ks.Name, s)
		}
		if s != spreadOf(&keystore.KeySet{Name: ks.Name, Generation: 7}) {
			t.Fatalf("spreadOf(%s) differs between calls", ks.Name)
		}
		if s < 0.75 {
			lo++
		} else {
			hi++
		}
		seen[s] = true
	}
	// Uniform: each half of the range gets about half of the key sets.
	if lo < 4500 || hi < 4500 || len(seen) < 9990 {
		t.Errorf("spread of 10000 key sets: %d in [0.5, 0.75), %d in [0.75, 1), %d distinct; want about 5000 each, all distinct", lo, hi, len(seen))
	}
	if spreadOf(&keystore.KeySet{Name: "a", Generation: 1}) == spreadOf(&keystore.KeySet{Name: "a", Generation: 2}) {
		t.Errorf("a key set's generations share their spread")
	}
}

// TestEngineRetryAfterCapped: a token endpoint's Retry-After of a year
// holds grants back only for the maximum (5 minutes by default).
func TestEngineRetryAfterCapped(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		max  time.Duration // 0: the default
		want time.Duration
	}{
		{"default", 0, DefaultMaxRetryAfter},
		{"configured", time.Minute, time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			if tt.max != 0 {
				f.r.maxRetryAfter = tt.max
			}
			storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
			var limited atomic.Bool
			limited.Store(true)
			f.respond(func(w http.ResponseWriter, _ *http.Request) bool {
				if !limited.Load() {
					return false
				}
				w.Header().Set("Retry-After", "31536000")
				w.WriteHeader(http.StatusTooManyRequests)
				return true
			})
			_, err := f.r.Current(context.Background(), "sf")
			if re := asError(t, err); !re.Temporary || re.RetryAfter != tt.want {
				t.Fatalf("Current(%q) after a 429 with Retry-After of a year = {Temporary %v, RetryAfter %v}; want {true, %v}",
					"sf", re.Temporary, re.RetryAfter, tt.want)
			}
			limited.Store(false)
			f.clock.Advance(tt.want - time.Second)
			if _, err := f.r.Current(context.Background(), "sf"); err == nil {
				t.Fatalf("Current(%q) within the capped Retry-After = nil; want the backoff", "sf")
			}
			f.clock.Advance(time.Second)
			if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-1" {
				t.Errorf("Current(%q) after the capped Retry-After = %s; want Bearer at-1", "sf", credString(cred))
			}
			if got := f.sent.n.Load(); got != 2 {
				t.Errorf("token requests = %d; want 2", got)
			}
		})
	}
}
