package credential

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Tests of the refresh token's own lifetime, when the provider announces
// it: recorded, carried, aimed at by the keepalive, and announced before
// the account needs a person.

// TestRefreshExpiryOf: the lifetime GitHub Apps, Intuit or Keycloak
// announce for the refresh token, as a number or a string, counted from
// the request; none, zero, a negative or an absurd lifetime say nothing;
// the first field of the list that holds one wins.
func TestRefreshExpiryOf(t *testing.T) {
	t.Parallel()
	requested := tokenClientTestNow
	tests := []struct {
		name     string
		response string
		want     time.Duration // from requested; 0: no expiry
	}{
		{"GitHub", `{"refresh_token_expires_in":15811200}`, 15811200 * time.Second},
		{"Intuit", `{"x_refresh_token_expires_in":8726400}`, 8726400 * time.Second},
		{"Intuit as a string", `{"x_refresh_token_expires_in":"8726400"}`, 8726400 * time.Second},
		{"Keycloak", `{"refresh_expires_in":1800}`, 30 * time.Minute},
		{"Keycloak offline, zero", `{"refresh_expires_in":0}`, 0},
		{"negative", `{"refresh_token_expires_in":-5}`, 0},
		{"absurd", `{"refresh_token_expires_in":1e300}`, 0},
		{"not a number", `{"refresh_token_expires_in":"soon"}`, 0},
		{"none", `{"expires_in":3600}`, 0},
		{"first in the list wins", `{"refresh_expires_in":60,"refresh_token_expires_in":120}`, 2 * time.Minute},
		{"an empty one is skipped", `{"refresh_token_expires_in":0,"refresh_expires_in":60}`, time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := refreshExpiryOf(credentialtest.TokenOf(t, tt.response), requested)
			want := time.Time{}
			if tt.want > 0 {
				want = requested.Add(tt.want)
			}
			if !got.Equal(want) {
				t.Errorf("refreshExpiryOf(%s) = %v; want %v", tt.response, got, want)
			}
		})
	}
}

// saveRefreshing stores generation 1 of key set name, made at updated with
// refresh token rt-0, whose refresh token expires at refreshExpiry (fixed:
// refreshing does not extend it), bound to the client that
// newWatchedEngine's engines use at te.
func saveRefreshing(t *testing.T, store keystore.Store, te *credentialtest.TokenEndpoint, name string, updated, refreshExpiry time.Time, fixed bool) {
	t.Helper()
	ks := &keystore.KeySet{Name: name, Generation: 1, UpdatedAt: updated, Expiry: updated.Add(time.Hour),
		RefreshExpiry: refreshExpiry, RefreshExpiryFixed: fixed,
		Client: &keystore.Binding{TokenURL: te.URL(), ClientID: "client-1"},
		Token:  credentialtest.TokenOf(t, `{"access_token":"at-0","refresh_token":"rt-0"}`)}
	if err := store.Save(context.Background(), ks); err != nil {
		t.Fatalf("Save(%q) = %v", name, err)
	}
}

// TestGrantRecordsRefreshExpiry: a grant whose response announces the
// refresh token's lifetime records when it dies; a later refresh that
// moves it later (a lifetime that slides) leaves it extendable, one that
// does not (a capped lifetime) marks it fixed, as does a refresh that
// keeps the refresh token and announces nothing; a new refresh token with
// no announcement has an unknown expiry; an operator's token that
// announces one is recorded as it is.
func TestGrantRecordsRefreshExpiry(t *testing.T) {
	t.Parallel()
	const hour = time.Hour
	tests := []struct {
		name        string
		rotate      bool
		first       any // refresh_expires_in of the first grant, in seconds
		second      any // of the second grant, 20 minutes later; nil: none
		wantExpiry  time.Duration
		wantFixed   bool
		wantUnknown bool
	}{
		{name: "sliding", rotate: true, first: 3600, second: 3600, wantExpiry: hour + 20*time.Minute},
		{name: "capped", rotate: true, first: 3600, second: 2400, wantExpiry: hour, wantFixed: true},
		{name: "refresh token kept, nothing announced", rotate: false, first: 3600, second: nil, wantExpiry: hour, wantFixed: true},
		{name: "new refresh token, nothing announced", rotate: true, first: 3600, second: nil, wantUnknown: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := credentialtest.NewTokenEndpoint(t, "rt-0")
			te.Mu.Lock()
			te.Rotate, te.Extra = tt.rotate, map[string]any{"refresh_expires_in": tt.first}
			te.Mu.Unlock()
			clock := credentialtest.NewClock()
			start := clock.Now()
			store := newFileStore(t, t.TempDir())
			saveKeySet(t, store, te, "kc", start, "rt-0")
			e := newWatchedEngine(t, store, te, clock, Config{CheckInterval: time.Hour})
			first, err := e.ForceRefresh(context.Background(), "kc")
			if err != nil {
				t.Fatalf("ForceRefresh(%q) = %v", "kc", err)
			}
			if !first.RefreshExpiry.Equal(start.Add(hour)) || first.RefreshExpiryFixed {
				t.Errorf("after the first grant: RefreshExpiry %v (fixed %v); want %v (not fixed)", first.RefreshExpiry, first.RefreshExpiryFixed, start.Add(hour))
			}
			clock.Advance(20 * time.Minute)
			te.Mu.Lock()
			te.Extra = nil
			if tt.second != nil {
				te.Extra = map[string]any{"refresh_expires_in": tt.second}
			}
			te.Mu.Unlock()
			if _, err := e.ForceRefresh(context.Background(), "kc"); err != nil {
				t.Fatalf("second ForceRefresh(%q) = %v", "kc", err)
			}
			got := mustLoad(t, store, "kc")
			want := start.Add(tt.wantExpiry)
			if tt.wantUnknown {
				want = time.Time{}
			}
			if !got.RefreshExpiry.Equal(want) || got.RefreshExpiryFixed != tt.wantFixed {
				t.Errorf("stored after the second grant: RefreshExpiry %v (fixed %v); want %v (fixed %v)",
					got.RefreshExpiry, got.RefreshExpiryFixed, want, tt.wantFixed)
			}
		})
	}
}

// TestPutRecordsRefreshExpiry: an operator's token response that
// announces the refresh token's lifetime is recorded from when it is
// stored, and is not taken as fixed: no refresh was tried.
func TestPutRecordsRefreshExpiry(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	clock := credentialtest.NewClock()
	store := newFileStore(t, t.TempDir())
	saveRefreshing(t, store, te, "gh", clock.Now().Add(-time.Hour), clock.Now().Add(time.Hour), true)
	e := newWatchedEngine(t, store, te, clock, Config{CheckInterval: time.Hour})
	ks, err := e.Put(context.Background(), "gh", credentialtest.TokenOf(t, `{"refresh_token":"ghr_1","refresh_token_expires_in":15811200}`))
	if err != nil {
		t.Fatalf("Put(%q) = %v", "gh", err)
	}
	if want := clock.Now().Add(15811200 * time.Second); !ks.RefreshExpiry.Equal(want) || ks.RefreshExpiryFixed {
		t.Errorf("Put(%q).RefreshExpiry = %v (fixed %v); want %v (not fixed)", "gh", ks.RefreshExpiry, ks.RefreshExpiryFixed, want)
	}
}

// TestKeepaliveAimsHalfwayThroughRefreshLifetime: a refresh token whose
// lifetime the provider announced is refreshed halfway through it, long
// before the keepalive period, so a lifetime that slides with each refresh
// (Keycloak's session idle timeout) never runs out; the schedule says
// when. A fixed one is not: refreshing would not extend it.
func TestKeepaliveAimsHalfwayThroughRefreshLifetime(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		fixed      bool
		wantGrants int64
	}{
		{"extendable", false, 1},
		{"fixed", true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := credentialtest.NewTokenEndpoint(t, "rt-0")
			clock := credentialtest.NewClock()
			store := newFileStore(t, t.TempDir())
			start := clock.Now()
			saveRefreshing(t, store, te, "kc", start, start.Add(2*time.Hour), tt.fixed)
			e := newWatchedEngine(t, store, te, clock, Config{Keepalive: week, CheckInterval: time.Hour,
				Serves: func(string) bool { return true }})
			if _, err := e.Status(context.Background(), "kc"); err != nil {
				t.Fatal(err)
			}
			s, _ := e.Schedule("kc")
			wantKeepalive := start.Add(time.Hour)
			if tt.fixed {
				wantKeepalive = start.Add(week)
			}
			if !s.Keepalive.Equal(wantKeepalive) {
				t.Errorf("Schedule(%q).Keepalive = %v; want %v", "kc", s.Keepalive, wantKeepalive)
			}
			clock.Advance(59 * time.Minute)
			e.check(context.Background())
			if g := te.Grants.Load(); g != 0 {
				t.Fatalf("grants = %d before halfway; want 0", g)
			}
			clock.Advance(2 * time.Minute)
			e.check(context.Background())
			if g := te.Grants.Load(); g != tt.wantGrants {
				t.Errorf("grants = %d past halfway through the refresh lifetime; want %d", g, tt.wantGrants)
			}
		})
	}
}

// TestRefreshExpiring: a key set is flagged once its refresh token expires
// within the warning and no refresh will save it: a fixed expiry within
// the warning; an extendable one only when the renewal at half its life is
// overdue, past three quarters of it. Unknown expiries and a warning
// turned off flag nothing.
func TestRefreshExpiring(t *testing.T) {
	t.Parallel()
	now := tokenClientTestNow
	const day = 24 * time.Hour
	tests := []struct {
		name    string
		warning time.Duration // 0: the default, a week
		life    time.Duration // RefreshExpiry - UpdatedAt
		left    time.Duration // RefreshExpiry - now
		fixed   bool
		unknown bool
		want    bool
	}{
		{name: "fixed, within the warning", life: 30 * day, left: 3 * day, fixed: true, want: true},
		{name: "fixed, before the warning", life: 30 * day, left: 8 * day, fixed: true},
		{name: "fixed, already expired", life: 30 * day, left: -time.Minute, fixed: true, want: true},
		{name: "extendable, renewal overdue", life: 90 * day, left: 3 * day, want: true},
		{name: "extendable short life, at its renewal", life: 2 * time.Hour, left: time.Hour},
		{name: "extendable short life, renewal overdue", life: 2 * time.Hour, left: 20 * time.Minute, want: true},
		{name: "a longer warning", warning: 30 * day, life: 365 * day, left: 20 * day, fixed: true, want: true},
		{name: "warning off", warning: -1, life: 30 * day, left: time.Hour, fixed: true},
		{name: "unknown expiry", unknown: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := New(nil, Config{ReauthorizeWarning: tt.warning, CheckInterval: time.Hour, Now: func() time.Time { return now }})
			t.Cleanup(e.Close)
			ks := &keystore.KeySet{Name: "kc", Generation: 1, Token: keystore.Token{}, RefreshExpiryFixed: tt.fixed}
			if !tt.unknown {
				ks.RefreshExpiry = now.Add(tt.left)
				ks.UpdatedAt = ks.RefreshExpiry.Add(-tt.life)
			}
			if got := e.refreshExpiring(ks, now); got != tt.want {
				t.Errorf("refreshExpiring(%s) = %v; want %v", tt.name, got, tt.want)
			}
		})
	}
}

// warningRecorder is an Observer that keeps the refresh warnings it is
// told.
type warningRecorder struct {
	Observers
	mu       sync.Mutex // guards warnings
	warnings []RefreshWarning
}

func (r *warningRecorder) KeySetRefreshExpiring(w RefreshWarning) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.warnings = append(r.warnings, w)
}

func (r *warningRecorder) generations() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []int64
	for _, w := range r.warnings {
		out = append(out, w.Generation)
	}
	return out
}

// TestRefreshExpiringWarnsOncePerGeneration: a key set whose fixed refresh
// expiry is within the warning is flagged in its status (refresh_expiry,
// refresh_expiring) at every look, and announced, with one log line, once
// for its generation however often it is looked at; the next generation,
// which keeps that refresh token, is announced once more.
func TestRefreshExpiringWarnsOncePerGeneration(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	clock := credentialtest.NewClock()
	store := newFileStore(t, t.TempDir())
	refreshExpiry := clock.Now().Add(3 * 24 * time.Hour)
	saveRefreshing(t, store, te, "kc", clock.Now(), refreshExpiry, true)
	rec := &warningRecorder{}
	core, logs := observer.New(zap.WarnLevel)
	e := newWatchedEngine(t, store, te, clock, Config{Observer: rec, Logger: zap.New(core), CheckInterval: time.Hour})

	for range 3 {
		s, err := e.Status(context.Background(), "kc")
		if err != nil {
			t.Fatal(err)
		}
		if !s.RefreshExpiring || s.RefreshExpiry == nil || !s.RefreshExpiry.Equal(refreshExpiry) || s.State != StateOK {
			t.Fatalf("Status(%q) = %+v; want state ok, refresh_expiring, refresh_expiry %v", "kc", s, refreshExpiry)
		}
		e.Statuses()
	}
	if got := rec.generations(); !slices.Equal(got, []int64{1}) {
		t.Fatalf("warned generations %v; want [1]", got)
	}
	if n := logs.FilterMessage("refresh token expires soon: reauthorize the account before then").Len(); n != 1 {
		t.Errorf("warning log lines = %d; want 1", n)
	}

	// An operator's new access token keeps the refresh token, and its end.
	if _, err := e.Put(context.Background(), "kc", credentialtest.TokenOf(t, `{"access_token":"at-x","expires_in":3600}`)); err != nil {
		t.Fatalf("Put(%q) = %v", "kc", err)
	}
	e.Statuses()
	e.Statuses()
	if got := rec.generations(); !slices.Equal(got, []int64{1, 2}) {
		t.Errorf("warned generations %v; want [1 2]", got)
	}
	s, _ := e.Status(context.Background(), "kc")
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"refresh_expiry":"2026-11-30T08:00:00Z"`, `"refresh_expiring":true`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("status JSON %s; want it to hold %s", data, want)
		}
	}
}

// TestRefreshExpiringNotification: the warning reaches the notify receiver
// as key_set.expiring, naming the key set, its generation and when its
// refresh token expires, with no token value; key_set.updated carries the
// refresh token's expiry too.
func TestRefreshExpiringNotification(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	te.Mu.Lock()
	te.Rotate = false
	te.Mu.Unlock()
	clock := credentialtest.NewClock()
	store := newFileStore(t, t.TempDir())
	saveRefreshing(t, store, te, "kc", clock.Now().Add(-time.Hour), clock.Now().Add(time.Hour), false)
	rcv := credentialtest.NewReceiver(t)
	notifier, err := NewNotifier(NotifyConfig{URL: rcv.Server.URL, Secret: testSecret}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(notifier.Close)
	e := newWatchedEngine(t, store, te, clock, Config{Observer: notifier, CheckInterval: time.Hour})

	// The refresh announces the same end: the provider caps it.
	clock.Advance(20 * time.Minute)
	te.Mu.Lock()
	te.Extra = map[string]any{"refresh_expires_in": 2400}
	te.Mu.Unlock()
	if _, err := e.ForceRefresh(context.Background(), "kc"); err != nil {
		t.Fatalf("ForceRefresh(%q) = %v", "kc", err)
	}
	e.Statuses()
	rcv.WaitFor(t, 2)
	got := rcv.Notifications()
	wantExpiry := clock.Now().Add(40 * time.Minute)
	if got[0].Type != "key_set.updated" || !got[0].RefreshExpiry.Equal(wantExpiry) {
		t.Errorf("first notification %+v; want key_set.updated with refresh_expiry %v", got[0], wantExpiry)
	}
	if n := got[1]; n.Type != "key_set.expiring" || n.Name != "kc" || n.Generation != 2 || !n.RefreshExpiry.Equal(wantExpiry) || n.Token != nil {
		t.Errorf("second notification %+v; want key_set.expiring of kc generation 2, refresh_expiry %v, no token", n, wantExpiry)
	}
	if body := rcv.Bodies()[1]; strings.Contains(body, "rt-0") || strings.Contains(body, "at-") {
		t.Errorf("key_set.expiring body %s holds a token value", body)
	}
}
