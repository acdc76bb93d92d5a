package credential

import (
	"context"
	"testing"
	"time"
)

// TestEngineServesUnsavedKeySet: a key set granted while the keystore
// refuses writes (a full disk) serves every request from memory; its
// refresh token is not spent while it is unsaved, whatever the requests
// ask; every request retries the save, so the first one after the keystore
// recovers stores it; and the stored refresh token then works (DESIGN.md
// invariants 5 and 10).
func TestEngineServesUnsavedKeySet(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
	fs := f.instrument()
	fs.failSave.Store(true)

	// The grant succeeds and its save fails: the request still gets the
	// new token.
	if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-1" || cred.KeySet.Generation != 2 {
		t.Fatalf("Current(%q) with the keystore failing = %s; want Bearer at-1 generation 2", "sf", credString(cred))
	}
	f.r.flightsRun.Wait()
	if s := f.mustStatus(t, "sf"); s.State != StateKeystoreFailing || s.ErrorCode != CodeKeystoreUnavailable {
		t.Errorf("Status(%q) = {State %q, ErrorCode %q}; want {%q, %q}", "sf", s.State, s.ErrorCode, StateKeystoreFailing, CodeKeystoreUnavailable)
	}

	// Each request is served, and retries the save in the background.
	for i := range 3 {
		saves := fs.saves.Load()
		if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-1" {
			t.Fatalf("Current(%q) %d while unsaved = %s; want Bearer at-1", "sf", i, credString(cred))
		}
		f.r.flightsRun.Wait()
		if got := fs.saves.Load(); got != saves+1 {
			t.Errorf("saves after request %d = %d; want %d (one retry per request)", i, got, saves+1)
		}
	}

	// A rejection of the unsaved generation, old enough for a grant, makes
	// none: its refresh token (rt-1) is spent only once stored.
	f.clock.Advance(DefaultMinRefreshInterval)
	if _, err := f.r.Rejected(context.Background(), "sf", 2); err == nil {
		t.Errorf("Rejected(%q, 2) while unsaved = nil; want the keystore's failure", "sf")
	}
	if got := f.sent.n.Load(); got != 1 {
		t.Errorf("token requests while unsaved = %d; want 1", got)
	}
	if stored := loadKeySet(t, f.other, "sf"); stored.Generation != 1 {
		t.Errorf("stored generation while failing = %d; want 1", stored.Generation)
	}

	// The keystore recovers: the next request stores it, with no grant.
	fs.failSave.Store(false)
	f.mustCurrent(t, "sf")
	f.r.flightsRun.Wait()
	if stored := loadKeySet(t, f.other, "sf"); stored.Generation != 2 || stored.Token.RefreshToken() != "rt-1" {
		t.Fatalf("stored after one request = generation %d refresh %q; want 2 rt-1", stored.Generation, stored.Token.RefreshToken())
	}
	if s := f.mustStatus(t, "sf"); s.State == StateKeystoreFailing {
		t.Errorf("Status(%q) once stored = %q; want it healthy", "sf", s.State)
	}
	// The stored refresh token works: the endpoint accepts only rt-1 now.
	f.clock.Advance(DefaultMinRefreshInterval)
	if cred, err := f.r.Rejected(context.Background(), "sf", 2); err != nil || cred.KeySet.Generation != 3 {
		t.Errorf("Rejected(%q, 2) once stored = %v, %v; want generation 3", "sf", credString(cred), err)
	}
	if got := f.te.Grants.Load(); got != 2 {
		t.Errorf("grants = %d; want 2", got)
	}
}

// TestEngineUnsavedSaveRetriesIgnoreBackoff: the background backoff after a
// failed save does not hold back the retry a request starts; a retry that
// fails again leaves the request served.
func TestEngineUnsavedSaveRetriesIgnoreBackoff(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
	fs := f.instrument()
	fs.failSave.Store(true)
	f.mustCurrent(t, "sf")
	f.r.flightsRun.Wait()
	for range 6 { // the background backoff grows past the clock, which stands still
		f.mustCurrent(t, "sf")
		f.r.flightsRun.Wait()
	}
	sched, _ := f.r.Schedule("sf")
	if !sched.BackgroundRetryAt.After(f.clock.Now().Add(time.Second)) {
		t.Fatalf("background retry at %v; want past %v", sched.BackgroundRetryAt, f.clock.Now().Add(time.Second))
	}
	fs.failSave.Store(false)
	f.mustCurrent(t, "sf")
	f.r.flightsRun.Wait()
	if stored := loadKeySet(t, f.other, "sf"); stored.Generation != 2 {
		t.Errorf("stored generation = %d; want 2, stored by the request despite the backoff", stored.Generation)
	}
}

func (f *refresherFixture) mustStatus(t *testing.T, name string) Status {
	t.Helper()
	s, err := f.r.Status(context.Background(), name)
	if err != nil {
		t.Fatalf("Status(%q) = %v", name, err)
	}
	return s
}
