package redis_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/keystoretest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/redis"
)

var keyPrefixes atomic.Int64

// testStore is a store under test with the key prefix it was made with, so
// that the test can find its keys in Redis.
type testStore struct {
	*redis.Store
	prefix string
}

// newTestStore returns a store on server with a key prefix of its own, so
// parallel tests share the server but no keys.
func newTestStore(t *testing.T, server *keystoretest.RedisServer, configure func(*redis.Options)) *testStore {
	t.Helper()
	opts := redis.Options{
		Addresses: []string{server.Addr()},
		KeyPrefix: fmt.Sprintf("test%d:", keyPrefixes.Add(1)),
	}
	if configure != nil {
		configure(&opts)
	}
	r, err := redis.New(opts)
	if err != nil {
		t.Fatalf("New() = %v; want nil", err)
	}
	t.Cleanup(func() { r.Close() })
	return &testStore{Store: r, prefix: opts.KeyPrefix}
}

func TestConformance(t *testing.T) {
	server := keystoretest.StartRedis(t)
	admin := server.Client(t)
	keystoretest.Run(t,
		func(t *testing.T) keystore.Store { return newTestStore(t, server, nil) },
		keystoretest.WithLockExpiry(func(t *testing.T, s keystore.Store, name string) {
			// What the TTL running out does: the lock key disappears.
			key := s.(*testStore).prefix + "lock:" + name
			if n, err := admin.Del(t.Context(), key).Result(); n != 1 || err != nil {
				t.Fatalf("DEL %s = %d, %v; want 1, nil", key, n, err)
			}
		}))
}

// TestLockTTLExpiry: a holder that stops renewing its lock without
// unlocking (its work abandoned when its context ended, as a replica that
// died mid-refresh stops) blocks the others for lock_ttl, not forever; its
// late unlock reports the loss and leaves the new holder's lock alone.
func TestLockTTLExpiry(t *testing.T) {
	t.Parallel()
	const ttl = 300 * time.Millisecond
	server := keystoretest.StartRedis(t)
	st := newTestStore(t, server, func(o *redis.Options) { o.LockTTL = ttl })

	holderCtx, abandon := context.WithCancel(t.Context())
	took := time.Now()
	staleUnlock, err := st.Lock(holderCtx, "ttl")
	if err != nil {
		t.Fatalf("Lock(%q) = %v; want nil", "ttl", err)
	}
	abandon()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	unlock, err := st.Lock(ctx, "ttl")
	if err != nil {
		t.Fatalf("Lock(%q) after the holder's TTL = %v; want nil", "ttl", err)
	}
	// Redis expires keys to the millisecond; allow for clock granularity.
	if waited := time.Since(took); waited < ttl-10*time.Millisecond {
		t.Errorf("Lock(%q) got in after %v; want no sooner than the TTL %v", "ttl", waited, ttl)
	}
	if err := staleUnlock(); !errors.Is(err, redis.ErrLockLost) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("unlock(%q) by the expired holder = %v; want ErrLockLost saying the lock expired", "ttl", err)
	}
	assertLockHeld(t, st, "ttl")
	if err := unlock(); err != nil {
		t.Errorf("unlock(%q) by the new holder = %v; want nil", "ttl", err)
	}
}

// TestUnlockComparesValue: unlock deletes the lock only while it holds
// the holder's own random value, and a repeated unlock does not release a
// lock taken in between.
func TestUnlockComparesValue(t *testing.T) {
	t.Parallel()
	server := keystoretest.StartRedis(t)
	admin := server.Client(t)
	st := newTestStore(t, server, nil)
	key := st.prefix + "lock:cad"

	first, err := st.Lock(t.Context(), "cad")
	if err != nil {
		t.Fatalf("Lock(%q) = %v; want nil", "cad", err)
	}
	if err := first(); err != nil {
		t.Fatalf("unlock(%q) = %v; want nil", "cad", err)
	}
	second, err := st.Lock(t.Context(), "cad")
	if err != nil {
		t.Fatalf("Lock(%q) after unlock = %v; want nil", "cad", err)
	}
	if err := first(); err != nil {
		t.Errorf("second call of the first unlock(%q) = %v; want the first call's nil", "cad", err)
	}
	assertLockHeld(t, st, "cad")

	// Someone else's value under the key: a foreign holder.
	if err := admin.Set(t.Context(), key, "someone-else", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if err := second(); err == nil {
		t.Errorf("unlock(%q) of a lock now holding another value = nil; want an error", "cad")
	}
	if got, err := admin.Get(t.Context(), key).Result(); got != "someone-else" || err != nil {
		t.Errorf("GET %s after the compare-and-delete = %q, %v; want %q kept", key, got, err, "someone-else")
	}
}

// assertLockHeld checks that a Lock with a short deadline still waits.
func assertLockHeld(t *testing.T, st keystore.Store, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if unlock, err := st.Lock(ctx, name); !errors.Is(err, context.DeadlineExceeded) {
		if err == nil {
			unlock()
		}
		t.Errorf("Lock(%q) while held = %v; want context.DeadlineExceeded", name, err)
	}
}

// TestLockWait: lock_wait bounds the wait even when the caller's
// context has no deadline, and the error says which bound it was.
func TestLockWait(t *testing.T) {
	t.Parallel()
	server := keystoretest.StartRedis(t)
	st := newTestStore(t, server, func(o *redis.Options) { o.LockWait = 50 * time.Millisecond })
	unlock, err := st.Lock(t.Context(), "wait")
	if err != nil {
		t.Fatalf("Lock(%q) = %v; want nil", "wait", err)
	}
	defer unlock()
	_, err = st.Lock(context.Background(), "wait")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "lock_wait") {
		t.Errorf("Lock(%q) while held = %v; want context.DeadlineExceeded naming lock_wait", "wait", err)
	}
}

// TestOutage: Redis going away mid-use makes every operation fail with
// an error (no panic, no ErrNotFound that would send the proxy back to its
// seed), and once Redis is back the store works again on the same client.
func TestOutage(t *testing.T) {
	t.Parallel()
	server := keystoretest.StartRedis(t)
	st := newTestStore(t, server, nil)
	if err := st.Save(t.Context(), keystoretest.Seed("outage")); err != nil {
		t.Fatalf("Save(%q) = %v; want nil", "outage", err)
	}

	server.Stop(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := st.Load(ctx, "outage"); err == nil || errors.Is(err, keystore.ErrNotFound) || !strings.Contains(err.Error(), `"outage"`) {
		t.Errorf("Load(%q) with Redis down = %v; want an error naming the key set, not ErrNotFound", "outage", err)
	}
	next := keystoretest.Seed("outage")
	next.Generation = 2
	if err := st.Save(ctx, next); err == nil || errors.Is(err, keystore.ErrConflict) {
		t.Errorf("Save(%q) with Redis down = %v; want an error other than ErrConflict", "outage", err)
	}
	if unlock, err := st.Lock(ctx, "outage"); err == nil {
		unlock()
		t.Errorf("Lock(%q) with Redis down = nil error; want an error", "outage")
	}

	// Back, empty: this test's Redis keeps no data across restarts.
	if err := server.Start(t); err != nil {
		t.Fatal(err)
	}
	// After a run of failed dials go-redis stops dialing and probes the
	// server once a second, so the first calls may still fail: wait for
	// the client to notice, but no longer than a few probes.
	err := retryFor(3*time.Second, func() error {
		_, err := st.Load(ctx, "outage")
		return err
	})
	if !errors.Is(err, keystore.ErrNotFound) {
		t.Errorf("Load(%q) after Redis came back empty = %v; want ErrNotFound", "outage", err)
	}
	if err := st.Save(ctx, keystoretest.Seed("outage")); err != nil {
		t.Errorf("Save(%q) after Redis came back = %v; want nil", "outage", err)
	}
	unlock, err := st.Lock(ctx, "outage")
	if err != nil {
		t.Fatalf("Lock(%q) after Redis came back = %v; want nil", "outage", err)
	}
	if err := unlock(); err != nil {
		t.Errorf("unlock(%q) after Redis came back = %v; want nil", "outage", err)
	}
}

// TestStoredLayout: what operators see in Redis is what the docs say:
// a hash with the generation in clear beside the encoded document.
func TestStoredLayout(t *testing.T) {
	t.Parallel()
	server := keystoretest.StartRedis(t)
	admin := server.Client(t)
	st := newTestStore(t, server, nil)
	ks := keystoretest.Seed("layout")
	if err := st.Save(t.Context(), ks); err != nil {
		t.Fatalf("Save(%q) = %v; want nil", ks.Name, err)
	}
	next := ks.Next(keystore.Token{"access_token": []byte(`"at"`)}, time.Time{}, time.Now())
	if err := st.Save(t.Context(), next); err != nil {
		t.Fatalf("Save(%q generation 2) = %v; want nil", ks.Name, err)
	}
	key := st.prefix + "keyset:layout"
	fields, err := admin.HGetAll(t.Context(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := keystore.JSONCodec{}.Encode(next)
	if fields["generation"] != "2" || fields["document"] != string(want) || len(fields) != 2 {
		t.Errorf("HGETALL %s = %q; want generation 2 and the encoded document", key, fields)
	}
}

// TestCorruptDocument: a document that does not decode, or whose
// clear generation disagrees with its own, is ErrCorrupt naming the key set.
func TestCorruptDocument(t *testing.T) {
	t.Parallel()
	server := keystoretest.StartRedis(t)
	admin := server.Client(t)
	valid, err := keystore.JSONCodec{}.Encode(keystoretest.Seed("bad"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		generation string
		document   string
	}{
		{"torn", "1", string(valid[:len(valid)/2])},
		{"garbage", "1", "\x00\x01not json"},
		{"generation disagrees", "2", string(valid)},
		{"generation missing", "", string(valid)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := newTestStore(t, server, nil)
			values := []any{"document", tt.document}
			if tt.generation != "" {
				values = append(values, "generation", tt.generation)
			}
			if err := admin.HSet(t.Context(), st.prefix+"keyset:bad", values...).Err(); err != nil {
				t.Fatal(err)
			}
			_, err := st.Load(t.Context(), "bad")
			if !errors.Is(err, keystore.ErrCorrupt) || !strings.Contains(err.Error(), `"bad"`) {
				t.Errorf("Load(%q) = %v; want ErrCorrupt naming %q", "bad", err, "bad")
			}
		})
	}
}

// TestSaveIdempotent: a Save repeated with the very same bytes (the
// client retrying a script whose reply was lost) finds its own document and
// succeeds; any other document for that generation is a conflict.
func TestSaveIdempotent(t *testing.T) {
	t.Parallel()
	server := keystoretest.StartRedis(t)
	st := newTestStore(t, server, nil)
	ks := keystoretest.Seed("retry")
	for i := range 2 {
		if err := st.Save(t.Context(), ks); err != nil {
			t.Fatalf("Save(%q) call %d = %v; want nil", ks.Name, i+1, err)
		}
	}
	other := keystoretest.Seed("retry")
	other.Token.SetString(keystore.FieldRefreshToken, "rt-other")
	if err := st.Save(t.Context(), other); !errors.Is(err, keystore.ErrConflict) {
		t.Errorf("Save(%q) of another generation 1 = %v; want ErrConflict", ks.Name, err)
	}
}

// TestPassword: a server that requires a password serves a store
// given it, and refuses one without it.
func TestPassword(t *testing.T) {
	t.Parallel()
	server := keystoretest.StartRedis(t, "--requirepass", "s3cret-pw")
	st := newTestStore(t, server, func(o *redis.Options) { o.Password = "s3cret-pw" })
	if err := st.Save(t.Context(), keystoretest.Seed("password")); err != nil {
		t.Errorf("Save(%q) with the password = %v; want nil", "password", err)
	}
	anonymous := newTestStore(t, server, nil)
	if _, err := anonymous.Load(t.Context(), "password"); err == nil || errors.Is(err, keystore.ErrNotFound) {
		t.Errorf("Load(%q) without the password = %v; want an authentication error", "password", err)
	}
}

// TestOptionsWithDefaults: unset options get their documented
// defaults, and set ones are kept.
func TestOptionsWithDefaults(t *testing.T) {
	tests := []struct {
		name string
		opts redis.Options
		want redis.Options
	}{
		{
			name: "defaults",
			opts: redis.Options{},
			want: redis.Options{Addresses: []string{"127.0.0.1:6379"}, KeyPrefix: "oauth2_upstream:",
				LockTTL: 30 * time.Second, LockWait: 10 * time.Second, DialTimeout: 5 * time.Second, ReadTimeout: 3 * time.Second},
		},
		{
			name: "set values kept",
			opts: redis.Options{Addresses: []string{"a:1"}, KeyPrefix: "p:", LockTTL: time.Minute, LockWait: time.Second, DialTimeout: 1, ReadTimeout: 2},
			want: redis.Options{Addresses: []string{"a:1"}, KeyPrefix: "p:", LockTTL: time.Minute, LockWait: time.Second, DialTimeout: 1, ReadTimeout: 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.opts.WithDefaults(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("WithDefaults() = %+v; want %+v", got, tt.want)
			}
		})
	}
}

// TestNewRefuses: options no Redis deployment can satisfy fail New, with a
// message naming the option.
func TestNewRefuses(t *testing.T) {
	tests := []struct {
		name    string
		opts    redis.Options
		wantErr string
	}{
		{name: "negative ttl", opts: redis.Options{LockTTL: -1}, wantErr: "negative"},
		{name: "negative read timeout", opts: redis.Options{ReadTimeout: -1}, wantErr: "negative"},
		{name: "ttl under the millisecond Redis counts in", opts: redis.Options{LockTTL: time.Microsecond}, wantErr: "1ms"},
		{name: "negative db", opts: redis.Options{DB: -1}, wantErr: "db"},
		{name: "db on a cluster", opts: redis.Options{Addresses: []string{"a:1", "b:2"}, DB: 2}, wantErr: "Cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := redis.New(tt.opts)
			if err == nil {
				r.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("New(%+v) = %v; want an error mentioning %q", tt.opts, err, tt.wantErr)
			}
		})
	}
}

// retryFor calls try until it returns something other than a network error
// (the server is reachable again) or limit has passed, and returns the last
// answer. There is no event to wait for: the client's reconnection is
// internal to go-redis, so this polls.
func retryFor(limit time.Duration, try func() error) error {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := try()
		var netErr net.Error
		if !errors.As(err, &netErr) {
			return err
		}
		select {
		case <-deadline.C:
			return err
		case <-tick.C:
		}
	}
}

// TestNamesSkipsForeignKeys: Names lists the store's documents only:
// not its lock keys, not keys under its prefix that name no valid key set,
// not the keys of a store whose prefix merely starts like its own, and its
// prefix matches itself even when it holds SCAN pattern characters.
func TestNamesSkipsForeignKeys(t *testing.T) {
	t.Parallel()
	server := keystoretest.StartRedis(t)
	admin := server.Client(t)
	st := newTestStore(t, server, func(o *redis.Options) { o.KeyPrefix = `t*[x]?\:` })
	// Its documents' keys start with st's document keys' prefix.
	other := newTestStore(t, server, func(o *redis.Options) { o.KeyPrefix = `t*[x]?\:keyset:` })
	// Matched by st's prefix if it were used as a pattern unescaped.
	lookalike := newTestStore(t, server, func(o *redis.Options) { o.KeyPrefix = `tYxZ:` })
	for _, s := range []*testStore{other, lookalike} {
		if err := s.Save(t.Context(), keystoretest.Seed("foreign")); err != nil {
			t.Fatalf("Save(%q) = %v; want nil", "foreign", err)
		}
	}
	for _, name := range []string{"b", "a"} {
		if err := st.Save(t.Context(), keystoretest.Seed(name)); err != nil {
			t.Fatalf("Save(%q) = %v; want nil", name, err)
		}
	}
	unlock, err := st.Lock(t.Context(), "c")
	if err != nil {
		t.Fatalf("Lock(%q) = %v; want nil", "c", err)
	}
	defer unlock()
	for _, key := range []string{st.prefix + "keyset:bad name", st.prefix + "keyset:", st.prefix + "unrelated"} {
		if err := admin.Set(t.Context(), key, "x", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"a", "b"}
	if got, err := st.Names(t.Context()); err != nil || !slices.Equal(got, want) {
		t.Errorf("Names() = %q, %v; want %q, nil", got, err, want)
	}
}
