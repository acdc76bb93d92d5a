package credential

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/oauth2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
)

// refresherFixture is a Engine on a file keystore in a temporary
// directory, a token endpoint from the harness and a fake clock.
type refresherFixture struct {
	r     *Engine
	te    *credentialtest.TokenEndpoint
	dir   string
	store *file.Store // the Engine's own store (unless a test wraps it)
	other *file.Store // another "process" sharing the directory
	clock *credentialtest.Clock
	sent  *attemptCounter
}

// attemptCounter counts token requests sent, refused ones included (the
// harness's grants counts only successful grants).
type attemptCounter struct {
	base http.RoundTripper
	n    atomic.Int64
}

func (a *attemptCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	a.n.Add(1)
	return a.base.RoundTrip(req)
}

// newEngineFixture builds a proactive Engine for the refresh_token
// grant; the test changes fields before its first call.
func newEngineFixture(t *testing.T, seed string) *refresherFixture {
	t.Helper()
	dir := t.TempDir()
	store, err := file.New(dir)
	if err != nil {
		t.Fatalf("file.New(%q) = %v", dir, err)
	}
	other, err := file.New(dir)
	if err != nil {
		t.Fatalf("file.New(%q) = %v", dir, err)
	}
	te := credentialtest.NewTokenEndpoint(t, seed)
	clock := credentialtest.NewClock()
	sent := &attemptCounter{base: http.DefaultTransport}
	r := New(store, Config{
		Endpoint: TokenEndpoint{
			URL: te.URL(), ClientID: "client-1", ClientSecret: "secret-1",
			ClientAuth: ClientAuthSecretBasic, Grant: GrantRefreshToken,
			Timeout: 10 * time.Second, Transport: sent,
		},
		Mode: ModeProactive,
		Skew: 30 * time.Second,
	})
	r.now, r.client.now, r.jitter = clock.Now, clock.Now, nil
	t.Cleanup(r.Close) // after any gate release registered later
	return &refresherFixture{r: r, te: te, dir: dir, store: store, other: other, clock: clock, sent: sent}
}

// holdGrants makes the token endpoint hold every grant until the returned
// release is called (also called at cleanup, before Close).
func (f *refresherFixture) holdGrants(t *testing.T) (release func()) {
	t.Helper()
	gate := make(chan struct{})
	f.te.Mu.Lock()
	f.te.Gate = gate
	f.te.Mu.Unlock()
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(release)
	return release
}

// respond sets the token endpoint's override hook.
func (f *refresherFixture) respond(hook func(w http.ResponseWriter, r *http.Request) bool) {
	f.te.Mu.Lock()
	f.te.Respond = hook
	f.te.Mu.Unlock()
}

// testKeySet is a key set document; access "" makes a seed.
func testKeySet(name string, gen int64, access, refresh string, expiry time.Time) *keystore.KeySet {
	tok := keystore.Token{}
	if access != "" {
		tok.SetString(keystore.FieldAccessToken, access)
		tok.SetString(keystore.FieldTokenType, "Bearer")
	}
	if refresh != "" {
		tok.SetString(keystore.FieldRefreshToken, refresh)
	}
	return &keystore.KeySet{Name: name, Generation: gen, UpdatedAt: time.Date(2026, 11, 27, 7, 0, 0, 0, time.UTC), Expiry: expiry, Token: tok}
}

// storeKeySet stores ks, writing earlier generations first, since a store
// accepts only the next generation.
func storeKeySet(t *testing.T, store keystore.Store, ks *keystore.KeySet) {
	t.Helper()
	for gen := int64(1); gen <= ks.Generation; gen++ {
		doc := *ks
		doc.Generation = gen
		if err := store.Save(context.Background(), &doc); err != nil {
			t.Fatalf("Save(%q generation %d) = %v", ks.Name, gen, err)
		}
	}
}

// loadKeySet reads key set name from store or fails the test.
func loadKeySet(t *testing.T, store keystore.Store, name string) *keystore.KeySet {
	t.Helper()
	ks, err := store.Load(context.Background(), name)
	if err != nil {
		t.Fatalf("Load(%q) = %v; want nil", name, err)
	}
	return ks
}

// readDocument returns the stored bytes of key set name.
func (f *refresherFixture) readDocument(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(f.dir, name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// waitingCtx counts the callers that reached the point of waiting for a
// refresh: wait's select is the first place Current and Rejected ask a
// context for Done once the key set's state exists, and it asks after
// joining (or starting) the flight.
type waitingCtx struct {
	context.Context
	waiting *atomic.Int64
	once    sync.Once
}

func (c *waitingCtx) Done() <-chan struct{} {
	c.once.Do(func() { c.waiting.Add(1) })
	return c.Context.Done()
}

// result is what one Current or Rejected call returned.
type result struct {
	cred *Credential
	err  error
}

// mustState loads key set name's state, so that later calls touch no
// keystore before they wait (see waitingCtx).
func (f *refresherFixture) mustState(t *testing.T, name string) *keySetState {
	t.Helper()
	st, err := f.r.state(context.Background(), name)
	if err != nil {
		t.Fatalf("state(%q) = %v; want nil", name, err)
	}
	return st
}

// inFlight reports whether a refresh of st is running.
func inFlight(st *keySetState) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.flight != nil
}

// instrumentedStore counts refresh locks and saves, and fails Save while
// failSave is set.
type instrumentedStore struct {
	keystore.Store
	failSave atomic.Bool
	saves    atomic.Int64 // attempted saves
	locks    atomic.Int64 // refresh locks taken
}

func (s *instrumentedStore) Save(ctx context.Context, ks *keystore.KeySet) error {
	s.saves.Add(1)
	if s.failSave.Load() {
		return errors.New("disk full")
	}
	return s.Store.Save(ctx, ks)
}

func (s *instrumentedStore) Lock(ctx context.Context, name string) (func() error, error) {
	s.locks.Add(1)
	return s.Store.Lock(ctx, name)
}

// instrument wraps the Engine's store.
func (f *refresherFixture) instrument() *instrumentedStore {
	is := &instrumentedStore{Store: f.store}
	f.r.store = is
	return is
}

// mustCurrent calls Current and fails the test on an error.
func (f *refresherFixture) mustCurrent(t *testing.T, name string) *Credential {
	t.Helper()
	cred, err := f.r.Current(context.Background(), name)
	if err != nil {
		t.Fatalf("Current(%q) = %v; want nil", name, err)
	}
	return cred
}

// TestEngineSingleFlight: 50 requests needing a token while the grant is
// held share one grant and one credential (DESIGN.md invariant 4).
func TestEngineSingleFlight(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		access string        // "": a seed
		expiry time.Duration // from now, when there is an access token
	}{
		{"seed only", "", 0},
		{"expired", "at-old", -time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			var expiry time.Time
			if tt.access != "" {
				expiry = f.clock.Now().Add(tt.expiry)
			}
			storeKeySet(t, f.store, f.keySet("sf", 1, tt.access, "rt-0", expiry))
			is := f.instrument()
			f.mustState(t, "sf")
			release := f.holdGrants(t)

			const callers = 50
			var waiting atomic.Int64
			results := make(chan result, callers)
			for range callers {
				go func() {
					cred, err := f.r.Current(&waitingCtx{Context: context.Background(), waiting: &waiting}, "sf")
					results <- result{cred, err}
				}()
			}
			credentialtest.Eventually(t, "all callers waiting", func() bool { return waiting.Load() == callers })
			release()
			for range callers {
				res := <-results
				if res.err != nil || res.cred.Header != "Bearer at-1" || res.cred.KeySet.Generation != 2 {
					t.Errorf("Current(%q) = %v, %v; want Bearer at-1 generation 2", "sf", credString(res.cred), res.err)
				}
			}
			if got := f.te.Grants.Load(); got != 1 {
				t.Errorf("grants = %d; want 1", got)
			}
			if got := f.sent.n.Load(); got != 1 {
				t.Errorf("token requests = %d; want 1", got)
			}
			// One refresh in this process, not one per caller serialized
			// by the keystore lock.
			if got := is.locks.Load(); got != 1 {
				t.Errorf("refresh locks taken = %d; want 1", got)
			}
		})
	}
}

// credString describes a credential for failure messages.
func credString(c *Credential) string {
	if c == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%s generation %d", c.Header, c.KeySet.Generation)
}

// TestEngineRejectedOlderGeneration: a 401 to a request that carried an
// older generation than the current one is answered with the current
// credential, without a grant.
func TestEngineRejectedOlderGeneration(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, f.keySet("sf", 3, "at-3", "rt-0", f.clock.Now().Add(time.Hour)))
	is := f.instrument()
	cred, err := f.r.Rejected(context.Background(), "sf", 2)
	if err != nil || cred.Header != "Bearer at-3" || cred.KeySet.Generation != 3 {
		t.Errorf("Rejected(%q, 2) = %v, %v; want Bearer at-3 generation 3", "sf", credString(cred), err)
	}
	if got := f.sent.n.Load(); got != 0 {
		t.Errorf("token requests = %d; want 0", got)
	}
	if got := is.locks.Load(); got != 0 {
		t.Errorf("refresh locks taken = %d; want 0 (no refresh at all)", got)
	}
}

// TestEngineRejectedCurrentGeneration: a 401 to the current generation,
// reported by 20 requests at once, makes exactly one grant; the next
// generation, with the rotated refresh token, is in the keystore before
// any of them gets it (DESIGN.md invariant 5).
func TestEngineRejectedCurrentGeneration(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, f.keySet("sf", 1, "at-old", "rt-0", f.clock.Now().Add(time.Hour)))
	is := f.instrument()
	f.mustState(t, "sf")
	release := f.holdGrants(t)

	const callers = 20
	var waiting atomic.Int64
	problems := make(chan string, callers)
	for range callers {
		go func() {
			cred, err := f.r.Rejected(&waitingCtx{Context: context.Background(), waiting: &waiting}, "sf", 1)
			if err != nil || cred.KeySet.Generation != 2 || cred.Header != "Bearer at-1" {
				problems <- fmt.Sprintf("Rejected(%q, 1) = %v, %v; want Bearer at-1 generation 2", "sf", credString(cred), err)
				return
			}
			stored, err := f.other.Load(context.Background(), "sf")
			switch {
			case err != nil:
				problems <- fmt.Sprintf("Load(%q) after Rejected = %v", "sf", err)
			case stored.Generation != 2 || stored.Token.AccessToken() != "at-1" || stored.Token.RefreshToken() != "rt-1":
				problems <- fmt.Sprintf("stored when Rejected returned: generation %d, %q, %q; want 2, at-1, rt-1",
					stored.Generation, stored.Token.AccessToken(), stored.Token.RefreshToken())
			default:
				problems <- ""
			}
		}()
	}
	credentialtest.Eventually(t, "all callers waiting", func() bool { return waiting.Load() == callers })
	release()
	for range callers {
		if p := <-problems; p != "" {
			t.Error(p)
		}
	}
	if got := f.te.Grants.Load(); got != 1 {
		t.Errorf("grants = %d; want 1", got)
	}
	if got := is.locks.Load(); got != 1 {
		t.Errorf("refresh locks taken = %d; want 1", got)
	}
}

// TestEngineKeepsRefreshToken: a provider that sends no new refresh
// token (Salesforce, Google) leaves the old one in the key set, and it keeps
// working for the next refresh.
func TestEngineKeepsRefreshToken(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	f.te.Rotate = false
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))

	for gen := int64(2); gen <= 3; gen++ {
		f.clock.Advance(DefaultMinRefreshInterval) // a rejection of a generation old enough to grant
		cred, err := f.r.Rejected(context.Background(), "sf", gen-1)
		if err != nil || cred.KeySet.Generation != gen {
			t.Fatalf("Rejected(%q, %d) = %v, %v; want generation %d", "sf", gen-1, credString(cred), err, gen)
		}
		stored := loadKeySet(t, f.other, "sf")
		if stored.Generation != gen || stored.Token.RefreshToken() != "rt-0" {
			t.Errorf("stored = generation %d refresh %q; want %d rt-0", stored.Generation, stored.Token.RefreshToken(), gen)
		}
	}
	if got := f.te.Grants.Load(); got != 2 {
		t.Errorf("grants = %d; want 2", got)
	}
}

// TestEngineSeed: the refresh_token option seeds a key set only while
// the keystore has none; a stored key set always wins over the seed.
func TestEngineSeed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		stored     *keystore.KeySet // nil: nothing stored
		endpointRT string           // the refresh token the endpoint accepts
		wantHeader string
		wantGrants int64
	}{
		{"missing key set is seeded", nil, "rt-seed", "Bearer at-1", 1},
		{"stored seed wins", testKeySet("sf", 1, "", "rt-stored", time.Time{}), "rt-stored", "Bearer at-1", 1},
		{"stored tokens win", testKeySet("sf", 4, "at-stored", "rt-stored", time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)), "rt-stored", "Bearer at-stored", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, tt.endpointRT)
			f.r.seedName, f.r.seedToken = "sf", "rt-seed"
			var before []byte
			if tt.stored != nil {
				storeKeySet(t, f.store, ownedBy(f.r, tt.stored))
				before = f.readDocument(t, "sf")
			}
			cred := f.mustCurrent(t, "sf")
			if cred.Header != tt.wantHeader {
				t.Errorf("Current(%q) = %s; want %s", "sf", credString(cred), tt.wantHeader)
			}
			if got := f.te.Grants.Load(); got != tt.wantGrants {
				t.Errorf("grants = %d; want %d", got, tt.wantGrants)
			}
			if tt.wantGrants == 0 && !bytes.Equal(f.readDocument(t, "sf"), before) {
				t.Errorf("stored key set changed; want it untouched by the seed")
			}
			if tt.stored == nil {
				// The seed was stored as generation 1, then refreshed.
				if stored := loadKeySet(t, f.other, "sf"); stored.Generation != 2 || stored.Token.RefreshToken() != "rt-1" {
					t.Errorf("stored = generation %d refresh %q; want 2 rt-1", stored.Generation, stored.Token.RefreshToken())
				}
			}
		})
	}
}

// TestEngineNoKeySet: a key set that is neither stored nor seeded is a
// permanent no_key_set for the refresh_token grant (no request, nothing
// stored); the client_credentials grant needs no seed and stores
// generation 1.
func TestEngineNoKeySet(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		grant    string
		seedName string
		wantCode string // "" for success
	}{
		{"refresh_token, no seed", GrantRefreshToken, "", CodeNoKeySet},
		{"refresh_token, seed names another key set", GrantRefreshToken, "other", CodeNoKeySet},
		{"client_credentials", GrantClientCredentials, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			f.r.client.Grant = tt.grant
			f.r.seedName, f.r.seedToken = tt.seedName, "rt-0"
			cred, err := f.r.Current(context.Background(), "sf")
			if tt.wantCode != "" {
				re := asError(t, err)
				if re.Code != tt.wantCode || re.Temporary {
					t.Errorf("Current(%q) = {Code %q, Temporary %v}; want {%q, false}", "sf", re.Code, re.Temporary, tt.wantCode)
				}
				if got := f.sent.n.Load(); got != 0 {
					t.Errorf("token requests = %d; want 0", got)
				}
				if _, err := f.other.Load(context.Background(), "sf"); !errors.Is(err, keystore.ErrNotFound) {
					t.Errorf("Load(%q) = %v; want ErrNotFound", "sf", err)
				}
				return
			}
			if err != nil || cred.Header != "Bearer at-1" || cred.KeySet.Generation != 1 {
				t.Fatalf("Current(%q) = %v, %v; want Bearer at-1 generation 1", "sf", credString(cred), err)
			}
			if stored := loadKeySet(t, f.other, "sf"); stored.Generation != 1 || stored.Token.AccessToken() != "at-1" {
				t.Errorf("stored = generation %d %q; want 1 at-1", stored.Generation, stored.Token.AccessToken())
			}
		})
	}
}

// TestEngineInvalidGrantIsCached: after invalid_grant, requests get the
// same permanent error without new grants, the stored key set is left
// byte for byte (DESIGN.md invariant 6), and a newer generation stored by
// another process is adopted without a grant.
func TestEngineInvalidGrantIsCached(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-other") // the stored rt-0 is no longer valid
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
	before := f.readDocument(t, "sf")

	_, first := f.r.Current(context.Background(), "sf")
	re := asError(t, first)
	if re.Code != "invalid_grant" || re.Temporary {
		t.Fatalf("Current(%q) = {Code %q, Temporary %v}; want {invalid_grant, false}", "sf", re.Code, re.Temporary)
	}
	var rerr *oauth2.RetrieveError
	if !errors.As(first, &rerr) || rerr.ErrorCode != "invalid_grant" {
		t.Errorf("errors.As(Current(%q), *oauth2.RetrieveError) = %v; want invalid_grant", "sf", rerr)
	}
	for i := range 10 {
		f.clock.Advance(time.Minute)
		_, err := f.r.Current(context.Background(), "sf")
		if err == nil || err.Error() != first.Error() {
			t.Errorf("Current(%q) #%d = %v; want %v", "sf", i+2, err, first)
		}
	}
	if got := f.sent.n.Load(); got != 1 {
		t.Errorf("token requests = %d; want 1", got)
	}
	if after := f.readDocument(t, "sf"); !bytes.Equal(after, before) {
		t.Errorf("stored key set changed after invalid_grant:\n%s\nwant\n%s", after, before)
	}

	// An operator or another replica stores a working generation.
	storeNext(t, f.other, f.keySet("sf", 2, "at-other", "rt-other", f.clock.Now().Add(time.Hour)))
	cred, err := f.r.Current(context.Background(), "sf")
	if err != nil || cred.Header != "Bearer at-other" || cred.KeySet.Generation != 2 {
		t.Errorf("Current(%q) = %v, %v; want Bearer at-other generation 2", "sf", credString(cred), err)
	}
	if got := f.sent.n.Load(); got != 1 {
		t.Errorf("token requests = %d; want still 1", got)
	}
}

// storeNext stores ks, whose generation must follow the stored one.
func storeNext(t *testing.T, store keystore.Store, ks *keystore.KeySet) {
	t.Helper()
	if err := store.Save(context.Background(), ks); err != nil {
		t.Fatalf("Save(%q generation %d) = %v", ks.Name, ks.Generation, err)
	}
}

// answerInvalidGrant writes RFC 6749's invalid_grant error.
func answerInvalidGrant(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(map[string]string{"error": "invalid_grant"})
}

// TestEngineInvalidGrantAdoptsSuccessor: when invalid_grant comes back
// because another process already spent the refresh token and stored its
// successor, the successor is adopted and the request gets no error.
func TestEngineInvalidGrantAdoptsSuccessor(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
	f.respond(func(w http.ResponseWriter, r *http.Request) bool {
		// The other writer rotates first and stores its result.
		if err := f.other.Save(r.Context(), f.keySet("sf", 2, "at-other", "rt-other", f.clock.Now().Add(time.Hour))); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return true
		}
		answerInvalidGrant(w)
		return true
	})
	cred, err := f.r.Current(context.Background(), "sf")
	if err != nil || cred.Header != "Bearer at-other" || cred.KeySet.Generation != 2 {
		t.Fatalf("Current(%q) = %v, %v; want Bearer at-other generation 2", "sf", credString(cred), err)
	}
	if stored := loadKeySet(t, f.other, "sf"); stored.Generation != 2 || stored.Token.AccessToken() != "at-other" {
		t.Errorf("stored = generation %d %q; want 2 at-other", stored.Generation, stored.Token.AccessToken())
	}
}

// answer503 makes the token endpoint answer 503 while down is set.
func answer503(down *atomic.Bool) func(http.ResponseWriter, *http.Request) bool {
	return func(w http.ResponseWriter, _ *http.Request) bool {
		if !down.Load() {
			return false
		}
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
		return true
	}
}

// TestEngineTemporaryFailureBackoff: a token endpoint that is down gives
// a temporary error with Retry-After, and no grant is attempted before the
// backoff ends. With requests waiting on a token that cannot serve them
// (here: none at all) the backoff stays at urgentFailureBackoff however
// many grants failed, so that the first request after the endpoint comes
// back is served within about a second; a success resets it.
func TestEngineTemporaryFailureBackoff(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
	var down atomic.Bool
	down.Store(true)
	f.respond(answer503(&down))

	for i := range 8 {
		_, err := f.r.Current(context.Background(), "sf")
		re := asError(t, err)
		if re.Code != CodeTokenEndpointUnavailable || !re.Temporary || re.RetryAfter != urgentFailureBackoff {
			t.Fatalf("Current(%q) failure %d = {Code %q, Temporary %v, RetryAfter %v}; want {%q, true, %v}",
				"sf", i+1, re.Code, re.Temporary, re.RetryAfter, CodeTokenEndpointUnavailable, urgentFailureBackoff)
		}
		if got := f.sent.n.Load(); got != int64(i+1) {
			t.Fatalf("token requests = %d after failure %d; want %d", got, i+1, i+1)
		}
		// Within the backoff: no request, and the time left is reported.
		f.clock.Advance(urgentFailureBackoff / 2)
		_, err = f.r.Current(context.Background(), "sf")
		if re := asError(t, err); !re.Temporary || re.RetryAfter != urgentFailureBackoff/2 {
			t.Errorf("Current(%q) within backoff = {Temporary %v, RetryAfter %v}; want {true, %v}", "sf", re.Temporary, re.RetryAfter, urgentFailureBackoff/2)
		}
		if got := f.sent.n.Load(); got != int64(i+1) {
			t.Fatalf("token requests = %d within backoff %d; want %d", got, i+1, i+1)
		}
		f.clock.Advance(urgentFailureBackoff / 2)
	}

	down.Store(false)
	if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-1" {
		t.Fatalf("Current(%q) after recovery = %s; want Bearer at-1", "sf", credString(cred))
	}
	down.Store(true)
	f.clock.Advance(DefaultMinRefreshInterval) // generation 2 is old enough for a rejection to grant
	_, err := f.r.Rejected(context.Background(), "sf", 2)
	if re := asError(t, err); re.RetryAfter != time.Second {
		t.Errorf("Rejected(%q, 2) after a success RetryAfter = %v; want 1s (backoff reset)", "sf", re.RetryAfter)
	}
}

// TestEngineBackgroundBackoffDoubles: refreshes no request waits for (a
// proactive refresh of a token still valid) back off from 1s doubling up to
// 30s, while requests keep getting the valid token; once that token can no
// longer serve, a request's grant waits only for the urgent backoff after
// the last failure, not for the background one.
func TestEngineBackgroundBackoffDoubles(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	f.r.skew = time.Hour // every token is due for a proactive refresh
	expiry := f.clock.Now().Add(40 * time.Second)
	storeKeySet(t, f.store, f.keySet("sf", 1, "at-0", "rt-0", expiry))
	var down atomic.Bool
	down.Store(true)
	f.respond(answer503(&down))

	for i, backoff := range []time.Duration{1, 2, 4, 8, 16} {
		backoff *= time.Second
		if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-0" {
			t.Fatalf("Current(%q) during failing proactive refreshes = %s; want Bearer at-0", "sf", credString(cred))
		}
		f.r.flightsRun.Wait()
		if got := f.sent.n.Load(); got != int64(i+1) {
			t.Fatalf("token requests = %d after failure %d; want %d", got, i+1, i+1)
		}
		sched, _ := f.r.Schedule("sf")
		if got := sched.BackgroundRetryAt.Sub(f.clock.Now()); got != backoff {
			t.Fatalf("background backoff after failure %d = %v; want %v", i+1, got, backoff)
		}
		f.clock.Advance(backoff / 2)
		f.mustCurrent(t, "sf") // within the backoff: no attempt
		f.r.flightsRun.Wait()
		if got := f.sent.n.Load(); got != int64(i+1) {
			t.Fatalf("token requests = %d within background backoff %d; want %d", got, i+1, i+1)
		}
		f.clock.Advance(backoff - backoff/2)
	}
	// 31s have passed; the last failure's background backoff (32s) outlasts
	// the token. At its expiry the request's grant is made at once: the
	// urgent backoff ended long ago.
	f.mustCurrent(t, "sf") // failure 6, background backoff 30s
	f.r.flightsRun.Wait()
	down.Store(false)
	f.clock.Advance(expiry.Sub(f.clock.Now()))
	if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-1" {
		t.Errorf("Current(%q) at the expiry, the endpoint back = %s; want Bearer at-1 (no wait for the background backoff)", "sf", credString(cred))
	}
}

// TestEngineRetryAfterExtendsBackoff: the token endpoint's Retry-After
// is honoured when it is longer than the backoff.
func TestEngineRetryAfterExtendsBackoff(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
	f.respond(func(w http.ResponseWriter, _ *http.Request) bool {
		w.Header().Set("Retry-After", "7")
		w.WriteHeader(http.StatusTooManyRequests)
		return true
	})
	_, err := f.r.Current(context.Background(), "sf")
	if re := asError(t, err); !re.Temporary || re.RetryAfter != 7*time.Second {
		t.Fatalf("Current(%q) = {Temporary %v, RetryAfter %v}; want {true, 7s}", "sf", re.Temporary, re.RetryAfter)
	}
	f.clock.Advance(2 * time.Second)
	_, err = f.r.Current(context.Background(), "sf")
	if re := asError(t, err); re.RetryAfter != 5*time.Second {
		t.Errorf("Current(%q) 2s later RetryAfter = %v; want 5s", "sf", re.RetryAfter)
	}
	if got := f.sent.n.Load(); got != 1 {
		t.Errorf("token requests = %d; want 1", got)
	}
}

// TestEngineExpirySkew: in proactive mode a token within expiry_skew of
// its expiry is still served at once while one background grant replaces
// it; in reactive mode no grant happens before the expiry.
func TestEngineExpirySkew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		mode       string
		wantGrants int64
		wantAfter  string
	}{
		{"proactive", ModeProactive, 1, "Bearer at-1"},
		{"reactive", ModeReactive, 0, "Bearer at-old"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			f.r.mode = tt.mode
			storeKeySet(t, f.store, f.keySet("sf", 1, "at-old", "rt-0", f.clock.Now().Add(20*time.Second)))
			st := f.mustState(t, "sf")
			release := f.holdGrants(t)

			for i := range 5 {
				got := make(chan result, 1)
				go func() {
					cred, err := f.r.Current(context.Background(), "sf")
					got <- result{cred, err}
				}()
				select {
				case res := <-got:
					if res.err != nil || res.cred.Header != "Bearer at-old" {
						t.Fatalf("Current(%q) #%d = %v, %v; want Bearer at-old", "sf", i+1, credString(res.cred), res.err)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("Current(%q) #%d waited for the grant; want the current token at once", "sf", i+1)
				}
				if got, want := inFlight(st), tt.wantGrants > 0; got != want {
					t.Fatalf("refresh in flight after Current #%d = %v; want %v", i+1, got, want)
				}
			}
			release()
			f.r.Close() // waits for the background grant
			if got := f.te.Grants.Load(); got != tt.wantGrants {
				t.Errorf("grants = %d; want %d", got, tt.wantGrants)
			}
			if got := f.sent.n.Load(); got != tt.wantGrants {
				t.Errorf("token requests = %d; want %d", got, tt.wantGrants)
			}
			if cred := f.mustCurrent(t, "sf"); cred.Header != tt.wantAfter {
				t.Errorf("Current(%q) after the grant = %s; want %s", "sf", credString(cred), tt.wantAfter)
			}
		})
	}
}

// TestEngineExpired: once the expiry has passed, reactive mode too
// refreshes before sending (a token known dead is not sent).
func TestEngineExpired(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	f.r.mode = ModeReactive
	storeKeySet(t, f.store, f.keySet("sf", 1, "at-old", "rt-0", f.clock.Now().Add(20*time.Second)))
	if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-old" {
		t.Fatalf("Current(%q) = %s; want Bearer at-old", "sf", credString(cred))
	}
	f.clock.Advance(20 * time.Second)
	if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-1" {
		t.Errorf("Current(%q) at expiry = %s; want Bearer at-1", "sf", credString(cred))
	}
}

// TestEngineAlwaysMode: every request makes a grant, except that
// requests arriving while one is in flight share it.
func TestEngineAlwaysMode(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	f.r.mode = ModeAlways
	storeKeySet(t, f.store, f.keySet("sf", 1, "at-old", "rt-0", f.clock.Now().Add(time.Hour)))

	for i := 1; i <= 3; i++ {
		want := fmt.Sprintf("Bearer at-%d", i)
		if cred := f.mustCurrent(t, "sf"); cred.Header != want || cred.KeySet.Generation != int64(i+1) {
			t.Fatalf("Current(%q) #%d = %s; want %s generation %d", "sf", i, credString(cred), want, i+1)
		}
	}

	release := f.holdGrants(t)
	const callers = 10
	var waiting atomic.Int64
	results := make(chan result, callers)
	call := func() {
		cred, err := f.r.Current(&waitingCtx{Context: context.Background(), waiting: &waiting}, "sf")
		results <- result{cred, err}
	}
	go call()
	credentialtest.Eventually(t, "the first caller waiting", func() bool { return waiting.Load() == 1 })
	for range callers - 1 {
		go call()
	}
	credentialtest.Eventually(t, "all callers waiting", func() bool { return waiting.Load() == callers })
	release()
	for range callers {
		res := <-results
		if res.err != nil || res.cred.Header != "Bearer at-4" {
			t.Errorf("Current(%q) during a grant = %v, %v; want the shared Bearer at-4", "sf", credString(res.cred), res.err)
		}
	}
	if got := f.te.Grants.Load(); got != 4 {
		t.Errorf("grants = %d; want 4", got)
	}
}

// TestEngineAlwaysModeFailures: in always mode too, a failed refresh is
// not repeated by every request: a temporary failure backs off and a
// permanent one is kept until the keystore changes. Requests whose token
// is still valid keep being served with it (DESIGN.md invariant 10); once
// it has expired they get the failure.
func TestEngineAlwaysModeFailures(t *testing.T) {
	t.Parallel()
	temporary := func(w http.ResponseWriter, _ *http.Request) bool {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return true
	}
	invalidGrant := func(w http.ResponseWriter, _ *http.Request) bool {
		answerInvalidGrant(w)
		return true
	}
	tests := []struct {
		name          string
		answer        func(w http.ResponseWriter, r *http.Request) bool
		expiry        time.Duration // of at-old, from now
		wantTemporary bool          // of the error, when the token has expired
	}{
		{"temporary, token valid", temporary, time.Hour, true},
		{"invalid_grant, token valid", invalidGrant, time.Hour, false},
		{"temporary, token expired", temporary, -time.Minute, true},
		{"invalid_grant, token expired", invalidGrant, -time.Minute, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			f.r.mode = ModeAlways
			storeKeySet(t, f.store, f.keySet("sf", 1, "at-old", "rt-0", f.clock.Now().Add(tt.expiry)))
			f.respond(tt.answer)
			for i := range 5 {
				cred, err := f.r.Current(context.Background(), "sf")
				if tt.expiry > 0 {
					if err != nil || cred.Header != "Bearer at-old" {
						t.Errorf("Current(%q) #%d = %v, %v; want the still-valid Bearer at-old", "sf", i+1, credString(cred), err)
					}
					continue
				}
				if re := asError(t, err); re.Temporary != tt.wantTemporary {
					t.Errorf("Current(%q) #%d Temporary = %v; want %v", "sf", i+1, re.Temporary, tt.wantTemporary)
				}
			}
			if got := f.sent.n.Load(); got != 1 {
				t.Errorf("token requests = %d for 5 requests; want 1", got)
			}
		})
	}
}

// TestEngineSaveConflictAdoptsStored: when another writer stores the
// next generation during our grant, our write is fenced off by the
// generation and theirs is adopted.
func TestEngineSaveConflictAdoptsStored(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
	var once sync.Once
	f.respond(func(w http.ResponseWriter, r *http.Request) bool {
		var err error
		once.Do(func() {
			err = f.other.Save(r.Context(), f.keySet("sf", 2, "at-other", "rt-other", f.clock.Now().Add(time.Hour)))
		})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return true
		}
		return false // grant as usual
	})
	cred, err := f.r.Current(context.Background(), "sf")
	if err != nil || cred.Header != "Bearer at-other" || cred.KeySet.Generation != 2 {
		t.Fatalf("Current(%q) = %v, %v; want Bearer at-other generation 2", "sf", credString(cred), err)
	}
	if got := f.te.Grants.Load(); got != 1 {
		t.Errorf("grants = %d; want 1", got)
	}
	if stored := loadKeySet(t, f.other, "sf"); stored.Token.AccessToken() != "at-other" {
		t.Errorf("stored access token = %q; want at-other", stored.Token.AccessToken())
	}
}

// TestEngineClientCancelKeepsGrant: a client that goes away while its
// request waits for a grant does not abort the grant: it completes and is
// stored, so the rotated refresh token is not lost.
func TestEngineClientCancelKeepsGrant(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
	release := f.holdGrants(t)

	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan error, 1)
	go func() {
		_, err := f.r.Current(ctx, "sf")
		got <- err
	}()
	credentialtest.Eventually(t, "the token request", func() bool { return f.sent.n.Load() == 1 })
	cancel()
	err := <-got
	if re := asError(t, err); !re.Temporary || !errors.Is(err, context.Canceled) {
		t.Errorf("Current(%q) after cancel = %v; want a temporary error wrapping context.Canceled", "sf", err)
	}
	release()
	f.r.Close()

	stored := loadKeySet(t, f.other, "sf")
	if stored.Generation != 2 || stored.Token.AccessToken() != "at-1" || stored.Token.RefreshToken() != "rt-1" {
		t.Errorf("stored = generation %d %q %q; want 2 at-1 rt-1", stored.Generation, stored.Token.AccessToken(), stored.Token.RefreshToken())
	}
	if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-1" {
		t.Errorf("Current(%q) = %s; want Bearer at-1", "sf", credString(cred))
	}
	if got := f.te.Grants.Load(); got != 1 {
		t.Errorf("grants = %d; want 1", got)
	}
}

// TestEngineCloseWaitsForFlights: Close returns only after the grant in
// flight is stored, whatever happens to the handler.
func TestEngineCloseWaitsForFlights(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
	release := f.holdGrants(t)

	go f.r.Current(context.Background(), "sf")
	credentialtest.Eventually(t, "the token request", func() bool { return f.sent.n.Load() == 1 })
	closed := make(chan struct{})
	go func() {
		f.r.Close()
		close(closed)
	}()
	select {
	case <-closed:
		t.Fatalf("Close() returned while a grant was in flight")
	case <-time.After(50 * time.Millisecond):
	}
	release()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatalf("Close() did not return after the grant finished")
	}
	if stored := loadKeySet(t, f.other, "sf"); stored.Generation != 2 {
		t.Errorf("stored generation when Close returned = %d; want 2", stored.Generation)
	}
}

// TestEngineLogsHoldNoTokens: refresh logs name the key set and the
// outcome but never a token value or the client secret
// (DESIGN.md invariant 7).
func TestEngineLogsHoldNoTokens(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	core, logs := observer.New(zap.DebugLevel)
	f.r.logger = zap.New(core)
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))

	f.mustCurrent(t, "sf") // a grant
	f.respond(func(w http.ResponseWriter, _ *http.Request) bool {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(map[string]string{"error": "invalid_grant", "error_description": "rt-1 of secret-1 is revoked"})
		return true
	})
	f.clock.Advance(DefaultMinRefreshInterval)
	if _, err := f.r.Rejected(context.Background(), "sf", 2); asError(t, err).Code != "invalid_grant" {
		t.Fatalf("Rejected(%q, 2) = %v; want invalid_grant", "sf", err)
	}
	if logs.Len() == 0 {
		t.Fatalf("no log entries; want refresh logs")
	}
	for _, entry := range logs.All() {
		text := entry.Message + fmt.Sprint(entry.ContextMap())
		for _, secret := range []string{"rt-0", "rt-1", "at-1", "secret-1"} {
			if bytes.Contains([]byte(text), []byte(secret)) {
				t.Errorf("log %q holds %q: %s", entry.Message, secret, text)
			}
		}
	}
}

// Backoffs are spread over [d/2, d) so that replicas that failed together
// do not retry together.
func TestEqualJitter(t *testing.T) {
	t.Parallel()
	seen := map[time.Duration]bool{}
	for range 200 {
		got := equalJitter(8 * time.Second)
		if got < 4*time.Second || got >= 8*time.Second {
			t.Fatalf("equalJitter(8s) = %s; want within [4s, 8s)", got)
		}
		seen[got] = true
	}
	if len(seen) < 100 {
		t.Errorf("equalJitter(8s) gave %d distinct values in 200 calls; want spread", len(seen))
	}
}
