// Package keystoretest is the conformance suite that every keystore.Store
// backend passes: one set of tests for the contract in keystore.Store, so a
// backend cannot quietly weaken it. It also starts the redis-server that the
// tests of the Redis backend, and of what configures it, run against.
package keystoretest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

const (
	// promptly bounds a wait for something that must happen soon (a
	// released lock changing hands); reaching it fails the test instead
	// of hanging it.
	promptly = 10 * time.Second

	// heldFor is how long a Lock call must stay blocked to show that the
	// lock is held. Longer only slows the suite; a broken lock returns at
	// once.
	heldFor = 100 * time.Millisecond

	// contenders is how many goroutines race for one lock or generation.
	// Some backends poll at one-second intervals (certmagic's file
	// storage), so more would only slow the suite down.
	contenders = 4
)

// Option adapts the suite to a backend.
type Option func(*suite)

// WithLockExpiry declares that the backend's refresh locks expire (a TTL),
// and gives the suite a way to make the named key set's lock expire now, as
// if its holder had stalled past the TTL. The suite then checks that such a
// holder cannot overwrite a newer key set, nor release its successor's lock.
func WithLockExpiry(expire func(t *testing.T, s keystore.Store, name string)) Option {
	return func(s *suite) { s.expireLock = expire }
}

type suite struct {
	newStore   func(t *testing.T) keystore.Store
	expireLock func(t *testing.T, s keystore.Store, name string)
}

// Run runs the suite against the stores that newStore makes. Subtests run in
// parallel, each with its own store from newStore, which must be empty and
// share no key sets with the others (its own directory or key prefix).
func Run(t *testing.T, newStore func(t *testing.T) keystore.Store, opts ...Option) {
	s := &suite{newStore: newStore}
	for _, opt := range opts {
		opt(s)
	}
	tests := []struct {
		name string
		run  func(t *testing.T, st keystore.Store)
	}{
		{"LoadMissing", testLoadMissing},
		{"RoundTrip", testRoundTrip},
		{"SaveFollowsGeneration", testSaveFollowsGeneration},
		{"Conflict", testConflict},
		{"InvalidName", testInvalidName},
		{"LockExcludes", testLockExcludes},
		{"LockHonoursContext", testLockHonoursContext},
		{"LockNamesIndependent", testLockNamesIndependent},
		{"LockSerializesRefreshes", testLockSerializesRefreshes},
		{"ConcurrentWriters", testConcurrentWriters},
		{"StaleHolderFenced", s.testStaleHolderFenced},
		{"Names", testNames},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.run(t, s.newStore(t))
		})
	}
}

// testLoadMissing: a name never saved is ErrNotFound, not an empty key set.
func testLoadMissing(t *testing.T, st keystore.Store) {
	ks, err := st.Load(t.Context(), "absent")
	if !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Load(%q) = %v, %v; want ErrNotFound", "absent", ks, err)
	}
}

// testRoundTrip: what Save stores, Load returns field by field, including
// response fields the proxy does not model (Salesforce's instance_url),
// numbers exactly as the provider wrote them, and a seed holding only a
// refresh token.
func testRoundTrip(t *testing.T, st keystore.Store) {
	tests := []struct {
		name string
		ks   *keystore.KeySet
	}{
		{"seed", &keystore.KeySet{
			Name:       "seed",
			Generation: 1,
			UpdatedAt:  time.Date(2026, 11, 27, 7, 0, 0, 0, time.UTC),
			Token:      token(`{"refresh_token":"rt-seed"}`),
		}},
		{"salesforce", &keystore.KeySet{
			Name:       "salesforce",
			Generation: 1,
			UpdatedAt:  time.Date(2026, 11, 27, 7, 0, 0, 123456789, time.UTC),
			Token: token(`{"access_token":"00D!AQ.x","refresh_token":"5Aep8","token_type":"Bearer",
				"instance_url":"https://eu12.my.salesforce.com","id":"https://login.salesforce.com/id/00D/005",
				"issued_at":"1700000000000","signature":"c2ln+/="}`),
		}},
		{"numbers as sent", &keystore.KeySet{
			Name:       "Numbers_1.v2",
			Generation: 1,
			UpdatedAt:  time.Date(2026, 11, 27, 7, 0, 0, 0, time.UTC),
			Expiry:     time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC),
			Token: token(`{"access_token":"at","expires_in":3600,"ext_expires_in":3.60e3,
				"big":12345678901234567890,"ratio":1.50,"negative":-0,"flag":true,"none":null}`),
		}},
		{"bound to a client", &keystore.KeySet{
			Name:       "bound",
			Generation: 1,
			UpdatedAt:  time.Date(2026, 11, 27, 7, 0, 0, 0, time.UTC),
			Token:      token(`{"access_token":"at","refresh_token":"rt"}`),
			Client:     &keystore.Binding{TokenURL: "https://login.example/oauth2/token?tenant=a&x=<1>", ClientID: "client \"a\""},
		}},
		{"refresh token lifetime", &keystore.KeySet{
			Name:               "github",
			Generation:         1,
			UpdatedAt:          time.Date(2026, 11, 27, 7, 0, 0, 0, time.UTC),
			Expiry:             time.Date(2026, 11, 27, 15, 0, 0, 0, time.UTC),
			RefreshExpiry:      time.Date(2027, 5, 28, 7, 0, 0, 0, time.UTC),
			RefreshExpiryFixed: true,
			Token:              token(`{"access_token":"ghu_x","refresh_token":"ghr_x","refresh_token_expires_in":15811200}`),
		}},
		{"structured fields", &keystore.KeySet{
			Name:       "graph",
			Generation: 1,
			UpdatedAt:  time.Date(2026, 11, 27, 7, 0, 0, 0, time.FixedZone("CET", 3600)),
			Expiry:     time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC),
			Token: token(`{"access_token":"at","scope":"User.Read Mail.Send",
				"authorization_details":[{"type":"account","locations":["https://api.example"]}],
				"unicode":"caf\u00e9 \u2603 \"quoted\" <tag>"}`),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := st.Save(t.Context(), tt.ks); err != nil {
				t.Fatalf("Save(%q) = %v; want nil", tt.ks.Name, err)
			}
			got, err := st.Load(t.Context(), tt.ks.Name)
			if err != nil {
				t.Fatalf("Load(%q) = %v; want nil", tt.ks.Name, err)
			}
			if diff := Diff(got, tt.ks); diff != "" {
				t.Errorf("Load(%q) after Save differs: %s", tt.ks.Name, diff)
			}
		})
	}
}

// testSaveFollowsGeneration: each generation replaces the previous one.
func testSaveFollowsGeneration(t *testing.T, st keystore.Store) {
	var ks *keystore.KeySet
	for gen := int64(1); gen <= 3; gen++ {
		ks = keySet("rotating", gen, fmt.Sprintf("rt-%d", gen))
		if err := st.Save(t.Context(), ks); err != nil {
			t.Fatalf("Save(%q generation %d) = %v; want nil", ks.Name, gen, err)
		}
	}
	got, err := st.Load(t.Context(), "rotating")
	if err != nil {
		t.Fatalf("Load(%q) = %v; want nil", "rotating", err)
	}
	if diff := Diff(got, ks); diff != "" {
		t.Errorf("Load(%q) after three saves differs: %s", "rotating", diff)
	}
}

// testConflict: a write that does not follow the stored generation fails
// with ErrConflict and leaves the stored document as it was
// (DESIGN.md invariant 6).
func testConflict(t *testing.T, st keystore.Store) {
	tests := []struct {
		name   string
		stored int64 // generation saved first; 0 saves nothing
		save   int64
	}{
		{"first save not generation 1", 0, 2},
		{"generation 0 over nothing", 0, 0},
		{"same generation", 1, 1},
		{"skips a generation", 1, 3},
		{"goes back", 2, 1},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("conflict-%d", i)
			var want *keystore.KeySet
			for gen := int64(1); gen <= tt.stored; gen++ {
				want = keySet(name, gen, fmt.Sprintf("stored-%d", gen))
				if err := st.Save(t.Context(), want); err != nil {
					t.Fatalf("Save(%q generation %d) = %v; want nil", name, gen, err)
				}
			}
			err := st.Save(t.Context(), keySet(name, tt.save, "intruder"))
			if !errors.Is(err, keystore.ErrConflict) {
				t.Fatalf("Save(%q generation %d over %d) = %v; want ErrConflict", name, tt.save, tt.stored, err)
			}
			got, err := st.Load(t.Context(), name)
			if want == nil {
				if !errors.Is(err, keystore.ErrNotFound) {
					t.Fatalf("Load(%q) after refused Save = %v, %v; want ErrNotFound", name, got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load(%q) after refused Save = %v; want nil", name, err)
			}
			if diff := Diff(got, want); diff != "" {
				t.Errorf("Load(%q) after refused Save differs from the stored document: %s", name, diff)
			}
		})
	}
}

// testInvalidName: names that could escape a directory or collide with the
// store's own keys are refused by every operation.
func testInvalidName(t *testing.T, st keystore.Store) {
	names := []string{"", ".", "..", "../etc/passwd", "a/b", `a\b`, ".hidden", "-dash", "a b", "a:b", "a\x00b", "é", string(bytes.Repeat([]byte("x"), 129))}
	for _, name := range names {
		t.Run(fmt.Sprintf("%q", name), func(t *testing.T) {
			if _, err := st.Load(t.Context(), name); !errors.Is(err, keystore.ErrInvalidName) {
				t.Errorf("Load(%q) = %v; want ErrInvalidName", name, err)
			}
			if err := st.Save(t.Context(), keySet(name, 1, "rt")); !errors.Is(err, keystore.ErrInvalidName) {
				t.Errorf("Save(%q) = %v; want ErrInvalidName", name, err)
			}
			unlock, err := st.Lock(t.Context(), name)
			if !errors.Is(err, keystore.ErrInvalidName) {
				t.Errorf("Lock(%q) = %v; want ErrInvalidName", name, err)
			}
			if err == nil {
				unlock()
			}
		})
	}
}

// testConcurrentWriters: writers racing to store the same next generation
// (each thinks it refreshed first): exactly one wins, the others get
// ErrConflict, and the stored document is the winner's, whole.
func testConcurrentWriters(t *testing.T, st keystore.Store) {
	const name = "race"
	if err := st.Save(t.Context(), keySet(name, 1, "rt-0")); err != nil {
		t.Fatalf("Save(%q generation 1) = %v; want nil", name, err)
	}
	writes := make([]*keystore.KeySet, contenders)
	errs := make([]error, contenders)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range contenders {
		writes[i] = keySet(name, 2, fmt.Sprintf("rt-writer-%d", i))
		wg.Go(func() {
			<-start
			errs[i] = st.Save(t.Context(), writes[i])
		})
	}
	close(start)
	wg.Wait()

	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("Save(%q generation 2) succeeded for writers %d and %d; want exactly one", name, winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, keystore.ErrConflict):
			t.Errorf("Save(%q generation 2) by writer %d = %v; want nil or ErrConflict", name, i, err)
		}
	}
	if winner < 0 {
		t.Fatalf("Save(%q generation 2) failed for all %d writers; want exactly one to win", name, contenders)
	}
	got, err := st.Load(t.Context(), name)
	if err != nil {
		t.Fatalf("Load(%q) = %v; want nil", name, err)
	}
	if diff := Diff(got, writes[winner]); diff != "" {
		t.Errorf("Load(%q) differs from the winning writer %d: %s", name, winner, diff)
	}
}

// testNames: every backend is a keystore.Lister. An empty store lists no
// names; once key sets are saved it lists exactly them, sorted and each
// once, and never the artifacts of locks: a lock held, a lock taken and
// released, a lock on a name never saved, the write locks of saves.
func testNames(t *testing.T, st keystore.Store) {
	lister, ok := st.(keystore.Lister)
	if !ok {
		t.Fatalf("%T does not implement keystore.Lister", st)
	}
	got, err := lister.Names(t.Context())
	if err != nil || len(got) != 0 {
		t.Fatalf("Names() of an empty store = %q, %v; want [], nil", got, err)
	}

	// Saved out of order, "a" twice, with locks taken around them.
	holdLock(t, st, "ghost") // never saved
	for _, ks := range []*keystore.KeySet{keySet("c-1", 1, "rt-c"), keySet("a", 1, "rt-a1"), keySet("b", 1, "rt-b"), keySet("a", 2, "rt-a2")} {
		if err := st.Save(t.Context(), ks); err != nil {
			t.Fatalf("Save(%q generation %d) = %v; want nil", ks.Name, ks.Generation, err)
		}
	}
	unlock := mustLock(t, st, "a")
	if err := unlock(); err != nil {
		t.Fatalf("unlock(%q) = %v; want nil", "a", err)
	}
	holdLock(t, st, "b")

	want := []string{"a", "b", "c-1"}
	got, err = lister.Names(t.Context())
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("Names() = %q, %v; want %q, nil", got, err, want)
	}
}

// holdLock takes the named lock and holds it until the test ends.
func holdLock(t *testing.T, st keystore.Store, name string) {
	t.Helper()
	unlock := mustLock(t, st, name)
	t.Cleanup(func() {
		if err := unlock(); err != nil {
			t.Errorf("unlock(%q) = %v; want nil", name, err)
		}
	})
}

// keySet returns a key set with an access and a refresh token.
func keySet(name string, generation int64, refreshToken string) *keystore.KeySet {
	tok := token(`{"access_token":"at","token_type":"Bearer","expires_in":3600}`)
	tok.SetString(keystore.FieldAccessToken, "at-"+refreshToken)
	tok.SetString(keystore.FieldRefreshToken, refreshToken)
	return &keystore.KeySet{
		Name:       name,
		Generation: generation,
		UpdatedAt:  time.Date(2026, 11, 27, 7, 0, 0, 0, time.UTC).Add(time.Duration(generation) * time.Hour),
		Expiry:     time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC).Add(time.Duration(generation) * time.Hour),
		Token:      tok,
	}
}

// Seed returns a valid first generation of the key set name, as a seed is
// stored: a refresh token ("rt-seed") and no access token, updated now.
func Seed(name string) *keystore.KeySet {
	tok := keystore.Token{}
	tok.SetString(keystore.FieldRefreshToken, "rt-seed")
	return &keystore.KeySet{Name: name, Generation: 1, UpdatedAt: time.Now().UTC(), Token: tok}
}

// token parses a token endpoint response written in a test.
func token(response string) keystore.Token {
	var tok keystore.Token
	if err := json.Unmarshal([]byte(response), &tok); err != nil {
		panic(fmt.Sprintf("keystoretest: bad token literal: %v", err))
	}
	return tok
}

// Diff describes how got differs from want, or returns "" when they hold the
// same key set: same name, generation and client binding, equal instants
// (the refresh token's expiry and whether it is fixed included),
// and the same token fields with the same JSON values. Numbers must keep the
// text the provider wrote (3.60e3 is not 3600); whitespace and the escaping
// of a string's characters may differ, as they do not change what the
// string holds.
func Diff(got, want *keystore.KeySet) string {
	var diffs []string
	if got.Name != want.Name {
		diffs = append(diffs, fmt.Sprintf("Name = %q; want %q", got.Name, want.Name))
	}
	if got.Generation != want.Generation {
		diffs = append(diffs, fmt.Sprintf("Generation = %d; want %d", got.Generation, want.Generation))
	}
	if !got.UpdatedAt.Equal(want.UpdatedAt) {
		diffs = append(diffs, fmt.Sprintf("UpdatedAt = %v; want %v", got.UpdatedAt, want.UpdatedAt))
	}
	if !got.Expiry.Equal(want.Expiry) {
		diffs = append(diffs, fmt.Sprintf("Expiry = %v; want %v", got.Expiry, want.Expiry))
	}
	if !got.RefreshExpiry.Equal(want.RefreshExpiry) || got.RefreshExpiryFixed != want.RefreshExpiryFixed {
		diffs = append(diffs, fmt.Sprintf("RefreshExpiry = %v (fixed %v); want %v (fixed %v)",
			got.RefreshExpiry, got.RefreshExpiryFixed, want.RefreshExpiry, want.RefreshExpiryFixed))
	}
	if !reflect.DeepEqual(got.Client, want.Client) {
		diffs = append(diffs, fmt.Sprintf("Client = %+v; want %+v", got.Client, want.Client))
	}
	fields := make([]string, 0, len(got.Token)+len(want.Token))
	for f := range got.Token {
		fields = append(fields, f)
	}
	for f := range want.Token {
		fields = append(fields, f)
	}
	slices.Sort(fields)
	for _, f := range slices.Compact(fields) {
		g, inGot := got.Token[f]
		w, inWant := want.Token[f]
		switch {
		case !inGot:
			diffs = append(diffs, fmt.Sprintf("token field %q missing", f))
		case !inWant:
			diffs = append(diffs, fmt.Sprintf("token field %q unexpected", f))
		case !sameJSON(g, w):
			diffs = append(diffs, fmt.Sprintf("token field %q = %s; want %s", f, g, w))
		}
	}
	if len(diffs) == 0 {
		return ""
	}
	return fmt.Sprint(diffs)
}

// sameJSON reports whether a and b hold the same JSON value, numbers
// compared by their text.
func sameJSON(a, b json.RawMessage) bool {
	va, errA := decodeNumbersAsText(a)
	vb, errB := decodeNumbersAsText(b)
	if errA != nil || errB != nil {
		return bytes.Equal(a, b)
	}
	return reflect.DeepEqual(va, vb)
}

func decodeNumbersAsText(raw json.RawMessage) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}
