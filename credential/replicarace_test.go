package credential

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/keystoretest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/redis"
)

// hookedStore calls its hooks before a Lock and before a Save, so a test
// can hold another replica between its grant and its write.
type hookedStore struct {
	keystore.Store
	beforeLock func(name string)
	beforeSave func(ks *keystore.KeySet)
}

func (s *hookedStore) Lock(ctx context.Context, name string) (func() error, error) {
	if s.beforeLock != nil {
		s.beforeLock(name)
	}
	return s.Store.Lock(ctx, name)
}

func (s *hookedStore) Save(ctx context.Context, ks *keystore.KeySet) error {
	if s.beforeSave != nil {
		s.beforeSave(ks)
	}
	return s.Store.Save(ctx, ks)
}

// TestRejectionWaitsForAnotherReplicasGrant reproduces, with hooks, the
// interleaving that failed requests against a provider that revokes the
// previous access token on every refresh: replica A cannot grant for
// itself (its own grant just failed and it backs off, or its token is
// younger than the minimum refresh interval); replica B takes the refresh
// lock and is granted, which revokes A's token; A's request meets 401
// before B has stored. A's rejection must wait for B's lock, re-read, and
// serve B's key set, not answer A's failure or the rejection.
func TestRejectionWaitsForAnotherReplicasGrant(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		age  time.Duration // of generation 1 when A's request is rejected
		// aFails makes A's own proactive grant fail first (a 503): A is in
		// its backoff.
		aFails bool
	}{
		{name: "backing off", age: time.Minute, aFails: true},
		{name: "too recent", age: time.Second},
	}
	redisServer := keystoretest.StartRedis(t)
	var prefixes atomic.Int64
	keystores := []struct {
		name string
		// pair returns the keystores of replicas A and B, sharing one
		// store; nil: the fixture's file stores.
		pair func(t *testing.T) (keystore.Store, keystore.Store)
	}{
		{name: "file"},
		{name: "redis", pair: func(t *testing.T) (keystore.Store, keystore.Store) {
			opts := redis.Options{Addresses: []string{redisServer.Addr()}, KeyPrefix: fmt.Sprintf("race%d:", prefixes.Add(1))}
			return newRedisStore(t, opts), newRedisStore(t, opts)
		}},
	}
	for _, ks := range keystores {
		for _, tt := range tests {
			t.Run(ks.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				a := newEngineFixture(t, "rt-0")
				aStore, bStore := keystore.Store(a.store), keystore.Store(a.other)
				if ks.pair != nil {
					aStore, bStore = ks.pair(t)
				}
				testRejectionWaitsForGrant(t, a, aStore, bStore, tt.age, tt.aFails)
			})
		}
	}
}

// testRejectionWaitsForGrant runs the scenario of
// TestRejectionWaitsForAnotherReplicasGrant with replica A on aStore and B
// on bStore, one keystore.
func testRejectionWaitsForGrant(t *testing.T, a *refresherFixture, aStore, bStore keystore.Store, age time.Duration, aFails bool) {
	t.Helper()
	a.r.store = aStore
	expiry := a.clock.Now().Add(20 * time.Second)
	gen1 := a.keySet("sf", 1, "at-0", "rt-0", expiry)
	gen1.UpdatedAt = a.clock.Now().Add(-age)
	storeKeySet(t, aStore, gen1)
	if aFails {
		a.r.skew = time.Hour // at-0 is due for a proactive refresh
		once := true
		a.respond(func(w http.ResponseWriter, _ *http.Request) bool {
			if !once {
				return false
			}
			once = false
			http.Error(w, "try later", http.StatusServiceUnavailable)
			return true
		})
		a.mustCurrent(t, "sf")
		a.r.flightsRun.Wait()
		if s := a.mustStatus(t, "sf"); s.ErrorCode != CodeTokenEndpointUnavailable {
			t.Fatalf("A's status after its failed grant: error %q; want %q", s.ErrorCode, CodeTokenEndpointUnavailable)
		}
	} else {
		a.mustCurrent(t, "sf")
	}

	// B is granted and held before its write; A asks for the lock.
	granted, release := make(chan struct{}), make(chan struct{})
	b := a.replica(t, &hookedStore{Store: bStore, beforeSave: func(*keystore.KeySet) {
		close(granted)
		<-release
	}})
	aWaits := make(chan struct{}, 1)
	a.r.store = &hookedStore{Store: aStore, beforeLock: func(string) { aWaits <- struct{}{} }}
	bDone := make(chan error, 1)
	go func() {
		_, err := b.ForceRefresh(context.Background(), "sf")
		bDone <- err
	}()
	<-granted // at-0 is revoked now

	type result struct {
		cred *Credential
		err  error
	}
	aDone := make(chan result, 1)
	go func() {
		cred, err := a.r.Rejected(context.Background(), "sf", 1)
		aDone <- result{cred, err}
	}()
	select {
	case <-aWaits: // A waits for B's lock
	case got := <-aDone:
		close(release)
		t.Fatalf("A's Rejected(%q, 1) answered before B stored, without waiting for its lock: %s, %v", "sf", credString(got.cred), got.err)
	}
	close(release)
	if err := <-bDone; err != nil {
		t.Fatalf("B's grant = %v", err)
	}
	got := <-aDone
	if got.err != nil || got.cred.Header != "Bearer at-1" || got.cred.KeySet.Generation != 2 {
		t.Fatalf("A's Rejected(%q, 1) after B's grant = %s, %v; want Bearer at-1 generation 2, B's", "sf", credString(got.cred), got.err)
	}
	if n := a.te.Grants.Load(); n != 1 {
		t.Errorf("grants = %d; want 1 (B's)", n)
	}
}

func newRedisStore(t *testing.T, opts redis.Options) *redis.Store {
	t.Helper()
	r, err := redis.New(opts)
	if err != nil {
		t.Fatalf("redis.New() = %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// replica returns another engine for the fixture's client and clock over
// store: a second replica sharing the keystore.
func (f *refresherFixture) replica(t *testing.T, store keystore.Store) *Engine {
	t.Helper()
	e := New(store, Config{Endpoint: f.r.client.TokenEndpoint, Mode: f.r.mode, Skew: f.r.skew})
	e.now, e.client.now, e.jitter = f.clock.Now, f.clock.Now, nil
	t.Cleanup(e.Close)
	return e
}
