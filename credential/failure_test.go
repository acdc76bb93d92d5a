package credential

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// answerOAuthError writes an RFC 6749 section 5.2 error answer.
func answerOAuthError(w http.ResponseWriter, status int, code, description string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": description})
}

// TestEngineProactiveRetryableFailure: Hydra answers a refresh with 400
// invalid_request "Please retry the request" after a storage conflict,
// without spending the refresh token. During a proactive refresh with a
// still-valid token, requests keep that token, no grant is attempted
// within the backoff, and the attempt after it succeeds.
func TestEngineProactiveRetryableFailure(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, f.keySet("sf", 1, "at-old", "rt-0", f.clock.Now().Add(20*time.Second)))
	var conflicts atomic.Int64
	conflicts.Store(1)
	f.respond(func(w http.ResponseWriter, _ *http.Request) bool {
		if conflicts.Add(-1) < 0 {
			return false
		}
		answerOAuthError(w, http.StatusBadRequest, "invalid_request", "Please retry the request")
		return true
	})

	for i := range 3 {
		if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-old" {
			t.Fatalf("Current(%q) #%d = %s; want the still-valid Bearer at-old", "sf", i+1, credString(cred))
		}
		f.r.Close()
	}
	if got := f.sent.n.Load(); got != 1 {
		t.Fatalf("token requests within the backoff = %d; want 1", got)
	}
	if s, _ := f.r.Status(context.Background(), "sf"); s.State != StateExpiring || s.ErrorCode != "invalid_request" {
		t.Errorf("Status(%q) = {State %q, ErrorCode %q}; want {%q, invalid_request}", "sf", s.State, s.ErrorCode, StateExpiring)
	}

	f.clock.Advance(minFailureBackoff)
	if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-old" {
		t.Fatalf("Current(%q) after the backoff = %s; want Bearer at-old while the retry runs", "sf", credString(cred))
	}
	f.r.Close()
	if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-1" || cred.KeySet.Generation != 2 {
		t.Errorf("Current(%q) after the retry = %s; want Bearer at-1 generation 2", "sf", credString(cred))
	}
	if got := f.sent.n.Load(); got != 2 {
		t.Errorf("token requests = %d; want 2 (the conflict, the retry)", got)
	}
}

// TestEngineProactiveFailureServesUntilExpiry: whatever a proactive refresh
// fails with, requests keep the still-valid token until it expires; only
// then do they get the failure. A retryable one is retried meanwhile; a
// condemned refresh token (invalid_grant) is not.
func TestEngineProactiveFailureServesUntilExpiry(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		status        int
		code          string
		wantTemporary bool
		wantAttempts  func(n int64) bool
	}{
		{"invalid_request", http.StatusBadRequest, "invalid_request", true, func(n int64) bool { return n > 1 }},
		{"invalid_scope", http.StatusBadRequest, "invalid_scope", true, func(n int64) bool { return n > 1 }},
		{"invalid_grant", http.StatusBadRequest, "invalid_grant", false, func(n int64) bool { return n == 1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			storeKeySet(t, f.store, f.keySet("sf", 1, "at-old", "rt-0", f.clock.Now().Add(20*time.Second)))
			f.respond(func(w http.ResponseWriter, _ *http.Request) bool {
				answerOAuthError(w, tt.status, tt.code, "")
				return true
			})
			// Served until minTokenLife before the expiry, when the token
			// counts as expired.
			for elapsed := range 20 - int(minTokenLife/time.Second) {
				if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-old" {
					t.Fatalf("Current(%q) %d s before the expiry = %s; want Bearer at-old", "sf", 20-elapsed, credString(cred))
				}
				f.r.Close()
				f.clock.Advance(time.Second)
			}
			_, err := f.r.Current(context.Background(), "sf")
			if re := asError(t, err); re.Code != tt.code || re.Temporary != tt.wantTemporary {
				t.Errorf("Current(%q) at the expiry = {Code %q, Temporary %v}; want {%q, %v}", "sf", re.Code, re.Temporary, tt.code, tt.wantTemporary)
			}
			if n := f.sent.n.Load(); !tt.wantAttempts(n) {
				t.Errorf("token requests before the expiry = %d", n)
			}
		})
	}
}

// TestEnginePermanentFailureAdoptsStored: a permanent answer (invalid_grant,
// invalid_client, unauthorized_client) to a proactive refresh is not kept
// when the keystore already holds a newer generation, which another
// process stored meanwhile: that one is adopted.
func TestEnginePermanentFailureAdoptsStored(t *testing.T) {
	t.Parallel()
	for _, code := range []string{"invalid_grant", "invalid_client", "unauthorized_client"} {
		t.Run(code, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			storeKeySet(t, f.store, f.keySet("sf", 1, "at-old", "rt-0", f.clock.Now().Add(20*time.Second)))
			f.respond(func(w http.ResponseWriter, r *http.Request) bool {
				if err := f.other.Save(r.Context(), f.keySet("sf", 2, "at-other", "rt-other", f.clock.Now().Add(time.Hour))); err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return true
				}
				answerOAuthError(w, http.StatusBadRequest, code, "")
				return true
			})
			f.mustCurrent(t, "sf") // starts the proactive refresh
			f.r.Close()
			// Statuses reads no keystore: it shows what the refresh left.
			if s := f.r.Statuses(); len(s) != 1 || s[0].Generation != 2 || s[0].ErrorCode != "" || s[0].State != StateOK {
				t.Errorf("Statuses() after the refresh = %+v; want generation 2, no error, ok", s)
			}
			if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-other" {
				t.Errorf("Current(%q) = %s; want the stored Bearer at-other", "sf", credString(cred))
			}
		})
	}
}

// slowLoadStore is a keystore whose every Load takes delay, as a remote
// keystore under load may.
type slowLoadStore struct {
	keystore.Store
	delay   time.Duration
	loading atomic.Int64 // loads begun
}

func (s *slowLoadStore) Load(ctx context.Context, name string) (*keystore.KeySet, error) {
	s.loading.Add(1)
	time.Sleep(s.delay) // the keystore's latency, not a wait for a condition
	return s.Store.Load(ctx, name)
}

// TestEngineKeystoreReadOutsideKeySetLock: checking a cached permanent
// failure against the keystore reads it without holding the key set's
// lock, so requests that check at once do not queue behind each other's
// reads, and Statuses does not wait for them.
func TestEngineKeystoreReadOutsideKeySetLock(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-other") // the stored rt-0 is no longer valid
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
	if _, err := f.r.Current(context.Background(), "sf"); asError(t, err).Code != "invalid_grant" {
		t.Fatalf("Current(%q) = %v; want invalid_grant", "sf", err)
	}
	const delay = 300 * time.Millisecond
	slow := &slowLoadStore{Store: f.store, delay: delay}
	f.r.store = slow

	const callers = 6
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := f.r.Current(context.Background(), "sf")
			errs <- err
		}()
	}
	began := time.Now()
	close(start)
	credentialtest.Eventually(t, "a keystore read", func() bool { return slow.loading.Load() > 0 })
	statusesBegan := time.Now()
	f.r.Statuses()
	statusesTook := time.Since(statusesBegan)
	wg.Wait()
	took := time.Since(began)
	close(errs)
	for err := range errs {
		if re := asError(t, err); re.Code != "invalid_grant" {
			t.Errorf("Current(%q) = %v; want the cached invalid_grant", "sf", err)
		}
	}
	// Serialised, six reads take 1.8 s; side by side, about 0.3 s.
	if took >= time.Second {
		t.Errorf("%d concurrent Current calls, each re-reading a %v keystore, took %v; want well under %v", callers, delay, took, callers*delay)
	}
	if statusesTook >= delay {
		t.Errorf("Statuses() during the keystore reads took %v; want it not to wait for a %v read", statusesTook, delay)
	}
}

// TestEngineRejectedDuringBackoffAdoptsStored: a replica whose proactive
// refresh failed backs off, still sending its valid token; another replica
// then refreshes, and the provider revokes the old token. The 401 that
// follows takes up the stored key set, not the backoff's error: no request
// fails while some replica's grant succeeded.
func TestEngineRejectedDuringBackoffAdoptsStored(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, f.keySet("sf", 1, "at-old", "rt-0", f.clock.Now().Add(20*time.Second)))
	f.respond(func(w http.ResponseWriter, _ *http.Request) bool {
		answerOAuthError(w, http.StatusBadRequest, "invalid_request", "Please retry the request")
		return true
	})
	if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-old" {
		t.Fatalf("Current(%q) = %s; want the still-valid Bearer at-old", "sf", credString(cred))
	}
	f.r.Close() // the proactive refresh failed: a backoff
	if s, _ := f.r.Status(context.Background(), "sf"); s.ErrorCode != "invalid_request" {
		t.Fatalf("Status(%q) error code = %q; want invalid_request", "sf", s.ErrorCode)
	}

	// Another replica's grant.
	other := f.keySet("sf", 2, "at-other", "rt-other", f.clock.Now().Add(time.Hour))
	if err := f.other.Save(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	cred, err := f.r.Rejected(context.Background(), "sf", 1)
	if err != nil || cred.Header != "Bearer at-other" {
		t.Fatalf("Rejected(%q, 1) during the backoff = %s, %v; want the stored Bearer at-other", "sf", credString(cred), err)
	}
	if s, _ := f.r.Status(context.Background(), "sf"); s.State != StateOK || s.ErrorCode != "" {
		t.Errorf("Status(%q) = {State %q, ErrorCode %q}; want ok with the failure forgotten", "sf", s.State, s.ErrorCode)
	}
	if got := f.sent.n.Load(); got != 1 {
		t.Errorf("token requests = %d; want 1 (the failed proactive one)", got)
	}
}
