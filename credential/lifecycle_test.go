package credential

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
)

// Tests of what the engine does on its own, between requests: keepalive,
// the account state machine and its events, and key sets that outlive the
// engine that granted them.

const week = 7 * 24 * time.Hour

// newWatchedEngine is an engine over store whose background checks run
// every millisecond on clock, granting at te.
func newWatchedEngine(t *testing.T, store keystore.Store, te *credentialtest.TokenEndpoint, clock *credentialtest.Clock, cfg Config) *Engine {
	t.Helper()
	cfg.Endpoint = TokenEndpoint{URL: te.URL(), ClientID: "client-1", ClientSecret: "secret-1"}
	cfg.Now = clock.Now
	cfg.CheckInterval = cmp.Or(cfg.CheckInterval, time.Millisecond)
	e := New(store, cfg)
	t.Cleanup(e.Close)
	return e
}

func newFileStore(t *testing.T, dir string) *file.Store {
	t.Helper()
	store, err := file.New(dir)
	if err != nil {
		t.Fatalf("file.New(%q) = %v", dir, err)
	}
	return store
}

// saveKeySet stores generation 1 of key set name, refreshed at updated,
// with refresh token rt and an access token that expires an hour later,
// bound to the client of newWatchedEngine's engines granting at te.
func saveKeySet(t *testing.T, store keystore.Store, te *credentialtest.TokenEndpoint, name string, updated time.Time, rt string) {
	t.Helper()
	ks := &keystore.KeySet{Name: name, Generation: 1, UpdatedAt: updated, Expiry: updated.Add(time.Hour),
		Client: &keystore.Binding{TokenURL: te.URL(), ClientID: "client-1"},
		Token:  credentialtest.TokenOf(t, `{"access_token":"at-0","refresh_token":"`+rt+`"}`)}
	if err := store.Save(context.Background(), ks); err != nil {
		t.Fatalf("Save(%q) = %v", name, err)
	}
}

func mustLoad(t *testing.T, store keystore.Store, name string) *keystore.KeySet {
	t.Helper()
	ks, err := store.Load(context.Background(), name)
	if err != nil {
		t.Fatalf("Load(%q) = %v", name, err)
	}
	return ks
}

// changeRecorder is an Observer that keeps the state changes it is told.
type changeRecorder struct {
	Observers
	mu      sync.Mutex // guards changes
	changes []StateChange
}

func (r *changeRecorder) KeySetStateChanged(c StateChange) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, c)
}

func (r *changeRecorder) states(name string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range r.changes {
		if c.KeySet == name {
			out = append(out, c.To)
		}
	}
	return out
}

// A stored key set that no request used for the keepalive period is
// refreshed in the background, once, whether or not the engine had loaded
// it; a key set the engine does not serve is left alone.
func TestKeepaliveRefreshesIdleKeySets(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	clock := credentialtest.NewClock()
	store := newFileStore(t, t.TempDir())
	saveKeySet(t, store, te, "idle", clock.Now(), "rt-0")
	saveKeySet(t, store, te, "not-served", clock.Now(), "rt-x")
	rec := &changeRecorder{}
	newWatchedEngine(t, store, te, clock, Config{Keepalive: week, Observer: rec,
		Serves: func(name string) bool { return name != "not-served" }})

	credentialtest.Eventually(t, "the checks to find the idle key set", func() bool {
		return slices.Equal(rec.states("idle"), []string{StateOK})
	})
	clock.Advance(week - time.Minute)
	credentialtest.Eventually(t, "the checks to see its access token expire", func() bool {
		return slices.Equal(rec.states("idle"), []string{StateOK, StateExpiring}) // its access token expired
	})
	if g := te.Grants.Load(); g != 0 {
		t.Fatalf("grants = %d before the keepalive period ended; want 0", g)
	}

	clock.Advance(2 * time.Minute)
	credentialtest.Eventually(t, "a keepalive grant", func() bool { return mustLoad(t, store, "idle").Generation == 2 })
	credentialtest.Eventually(t, "the state after the keepalive grant", func() bool {
		return slices.Equal(rec.states("idle"), []string{StateOK, StateExpiring, StateOK})
	})
	clock.Advance(week - time.Hour) // the new token expires, keepalive is not due
	credentialtest.Eventually(t, "the checks to see the new token expire", func() bool {
		return slices.Equal(rec.states("idle"), []string{StateOK, StateExpiring, StateOK, StateExpiring})
	})
	if g := te.Grants.Load(); g != 1 {
		t.Errorf("grants = %d; want 1: one keepalive grant per period", g)
	}
	if ks := mustLoad(t, store, "not-served"); ks.Generation != 1 {
		t.Errorf("not-served generation = %d; want 1: a key set the handler does not serve is not kept alive", ks.Generation)
	}
	if rec.states("not-served") != nil {
		t.Errorf("not-served was loaded: states %v", rec.states("not-served"))
	}
}

// Two replicas over one keystore keep an idle key set alive with one grant
// between them: the second finds the first one's key set, even once its
// access token has expired, and judges that one not due.
func TestKeepaliveOneGrantAcrossReplicas(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	clock := credentialtest.NewClock()
	dir := t.TempDir()
	saveKeySet(t, newFileStore(t, dir), te, "idle", clock.Now(), "rt-0")
	all := func(string) bool { return true }
	a := newWatchedEngine(t, newFileStore(t, dir), te, clock, Config{Keepalive: week, Serves: all})
	// b checks when the test says so.
	b := newWatchedEngine(t, newFileStore(t, dir), te, clock, Config{Keepalive: week, Serves: all, CheckInterval: time.Hour})
	if _, err := b.Status(context.Background(), "idle"); err != nil {
		t.Fatal(err)
	}

	clock.Advance(week + time.Minute)
	credentialtest.Eventually(t, "a's keepalive grant", func() bool {
		s := a.Statuses()
		return len(s) == 1 && s[0].Generation == 2
	})
	clock.Advance(2 * time.Hour) // generation 2's access token has expired too
	b.check(context.Background())
	if s := b.Statuses()[0]; s.Generation != 2 {
		t.Errorf("b uses generation %d; want 2, a's", s.Generation)
	}
	if g := te.Grants.Load(); g != 1 {
		t.Errorf("grants = %d; want 1 for the cluster", g)
	}
}

// Keepalive off makes no grant, however long a key set stays idle.
func TestKeepaliveOff(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	clock := credentialtest.NewClock()
	store := newFileStore(t, t.TempDir())
	saveKeySet(t, store, te, "idle", clock.Now(), "rt-0")
	rec := &changeRecorder{}
	e := newWatchedEngine(t, store, te, clock, Config{Keepalive: -1, Observer: rec, Serves: func(string) bool { return true }})
	if _, err := e.Status(context.Background(), "idle"); err != nil {
		t.Fatalf("Status() = %v", err)
	}
	clock.Advance(52 * week)
	credentialtest.Eventually(t, "the checks to see the token expire", func() bool { return len(rec.states("idle")) == 2 })
	if g := te.Grants.Load(); g != 0 {
		t.Errorf("grants = %d with keepalive off; want 0", g)
	}
}

// A refresh token that dies is announced once (key_set.failed, one log
// line), and an operator's new one brings the key set back
// (key_set.updated by the writer, then key_set.recovered).
func TestStateEventsFailThenRecover(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	clock := credentialtest.NewClock()
	store := newFileStore(t, t.TempDir())
	saveKeySet(t, store, te, "acct", clock.Now().Add(-2*time.Hour), "rt-revoked") // expired an hour ago
	rcv := credentialtest.NewReceiver(t)
	notifier, err := NewNotifier(NotifyConfig{URL: rcv.Server.URL, Secret: testSecret}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	e := newWatchedEngine(t, store, te, clock, Config{Observer: notifier, Logger: zap.New(core), CheckInterval: time.Hour})

	var re *Error
	if _, err := e.Current(context.Background(), "acct"); !errors.As(err, &re) || re.Code != "invalid_grant" {
		t.Fatalf("Current() = %v; want invalid_grant", err)
	}
	for range 3 {
		e.Current(context.Background(), "acct")
		e.Statuses()
	}
	if _, err := e.Put(context.Background(), "acct", credentialtest.TokenOf(t, `{"refresh_token":"rt-0"}`)); err != nil {
		t.Fatalf("Put() = %v", err)
	}
	if _, err := e.Current(context.Background(), "acct"); err != nil {
		t.Fatalf("Current() after Put = %v", err)
	}
	e.Close()
	notifier.Close()

	var got []string
	for _, n := range rcv.Notifications() {
		got = append(got, n.Type+" "+n.State+" "+n.ErrorCode)
	}
	want := []string{
		"key_set.failed needs_reauthorization invalid_grant",
		"key_set.updated  ", // the operator's key set, stored here
		"key_set.recovered expiring ",
		"key_set.updated  ", // the grant it allowed
	}
	if !slices.Equal(got, want) {
		t.Errorf("notifications:\n%q\nwant\n%q", got, want)
	}
	var lines []string
	for _, entry := range logs.FilterMessage("key set state changed").All() {
		fields := entry.ContextMap()
		lines = append(lines, fields["from"].(string)+"->"+fields["to"].(string))
	}
	wantLines := []string{"->needs_reauthorization", "needs_reauthorization->expiring", "expiring->ok"}
	if !slices.Equal(lines, wantLines) {
		t.Errorf("state change log lines %q; want %q (one per change)", lines, wantLines)
	}
}

// A key set granted by an engine that stops while the keystore refuses it
// is not lost: a successor engine over the same keystore (a config reload)
// stores it without a grant of its own, whose refresh token the provider
// has already rotated away.
func TestUnstoredKeySetOutlivesItsEngine(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	clock := credentialtest.NewClock()
	dir := t.TempDir()
	saveKeySet(t, newFileStore(t, dir), te, "acct", clock.Now().Add(-2*time.Hour), "rt-0") // expired
	unstored := NewUnstored()
	disk := &instrumentedStore{Store: newFileStore(t, dir)}
	disk.failSave.Store(true)
	old := newWatchedEngine(t, disk, te, clock, Config{Unstored: unstored, CheckInterval: time.Hour})
	old.closeSaveTime = 50 * time.Millisecond
	// The granted key set serves from memory while the keystore refuses it.
	if cred, err := old.Current(context.Background(), "acct"); err != nil || cred.Header != "Bearer at-1" {
		t.Fatalf("Current() with the keystore failing = %v, %v; want Bearer at-1 from memory", credString(cred), err)
	}
	old.Close() // the disk still fails
	if names := unstored.names(); !slices.Equal(names, []string{"acct"}) {
		t.Fatalf("waiting key sets after Close = %v; want [acct]", names)
	}

	rec := &changeRecorder{}
	successor := newWatchedEngine(t, newFileStore(t, dir), te, clock, Config{Unstored: unstored, Observer: rec})
	// Stored, and then forgotten by Unstored (the save comes first).
	credentialtest.Eventually(t, "the successor to store the waiting key set", func() bool {
		return mustLoad(t, disk.Store, "acct").Generation == 2 && len(unstored.names()) == 0
	})
	if ks := mustLoad(t, disk.Store, "acct"); ks.Token.RefreshToken() != "rt-1" {
		t.Errorf("stored refresh token = %q; want rt-1, the one granted before the reload", ks.Token.RefreshToken())
	}
	cred, err := successor.Current(context.Background(), "acct")
	if err != nil || cred.Header != "Bearer at-1" {
		t.Errorf("Current() = %v, %v; want Bearer at-1", cred, err)
	}
	if g := te.Grants.Load(); g != 1 {
		t.Errorf("grants = %d; want 1: the successor stored the key set instead of granting", g)
	}
	if len(unstored.names()) != 0 {
		t.Errorf("still waiting: %v", unstored.names())
	}
}

// Close keeps trying to store a granted key set for a while: a keystore
// that comes back meanwhile gets it before Close returns.
func TestCloseStoresUnstoredKeySet(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	clock := credentialtest.NewClock()
	dir := t.TempDir()
	saveKeySet(t, newFileStore(t, dir), te, "acct", clock.Now().Add(-2*time.Hour), "rt-0")
	disk := &instrumentedStore{Store: newFileStore(t, dir)}
	disk.failSave.Store(true)
	e := newWatchedEngine(t, disk, te, clock, Config{CheckInterval: time.Hour})
	if cred, err := e.Current(context.Background(), "acct"); err != nil || cred.Header != "Bearer at-1" {
		t.Fatalf("Current() with the keystore failing = %v, %v; want Bearer at-1 from memory", credString(cred), err)
	}
	saves := disk.saves.Load()
	closed := make(chan struct{})
	go func() {
		e.Close()
		close(closed)
	}()
	credentialtest.Eventually(t, "Close to retry the save", func() bool { return disk.saves.Load() > saves })
	disk.failSave.Store(false)
	<-closed
	if ks := mustLoad(t, disk.Store, "acct"); ks.Generation != 2 || ks.Token.RefreshToken() != "rt-1" {
		t.Errorf("stored generation %d, refresh token %q; want 2, rt-1", ks.Generation, ks.Token.RefreshToken())
	}
}

// key_set.updated is sent by the process that stored the generation only:
// replicas that take it up from the keystore stay silent, so a receiver
// hears of each generation once.
func TestUpdatedSentOncePerGenerationAcrossReplicas(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	clock := credentialtest.NewClock()
	dir := t.TempDir()
	saveKeySet(t, newFileStore(t, dir), te, "acct", clock.Now(), "rt-0")
	rcv := credentialtest.NewReceiver(t)
	var engines []*Engine
	var notifiers []*Notifier
	for range 3 {
		n, err := NewNotifier(NotifyConfig{URL: rcv.Server.URL, Secret: testSecret}, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		notifiers = append(notifiers, n)
		engines = append(engines, newWatchedEngine(t, newFileStore(t, dir), te, clock, Config{Observer: n, CheckInterval: time.Hour}))
	}
	for gen := int64(2); gen <= 4; gen++ {
		clock.Advance(time.Hour) // every replica's token expires
		for _, e := range engines {
			if _, err := e.Current(context.Background(), "acct"); err != nil {
				t.Fatalf("Current() = %v", err)
			}
		}
	}
	for i := range engines {
		engines[i].Close()
		notifiers[i].Close()
	}
	var updated []int64
	for _, n := range rcv.Notifications() {
		if n.Type == eventUpdated {
			updated = append(updated, n.Generation)
		}
	}
	if !slices.Equal(updated, []int64{2, 3, 4}) {
		t.Errorf("key_set.updated generations %v; want [2 3 4], each once", updated)
	}
	if g := te.Grants.Load(); g != 3 {
		t.Errorf("grants = %d; want 3", g)
	}
}
