package keystore_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/redis/go-redis/v9"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/keystoretest"
)

// redisStartTimeout bounds waiting for a redis-server to say it is ready.
const redisStartTimeout = 10 * time.Second

// redisServer is a redis-server process the test started on a loopback
// port, without persistence, stopped when the test ends.
type redisServer struct {
	addr     string
	args     []string
	password string // from --requirepass in args
	cmd      *exec.Cmd
	exits    chan struct{} // closed when the process has exited
}

// startRedis starts a redis-server with the extra command-line args on a
// port the kernel chose. Without the binary the test is skipped, or fails
// under CI, which must install it.
func startRedis(t *testing.T, args ...string) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("redis-server not found (CI must install it): %v", err)
		}
		t.Skipf("redis-server not found, so the redis keystore is not tested: %v", err)
	}
	var err error
	// The port is free when chosen, but another process may take it
	// before redis-server binds it: then try another.
	for range 3 {
		s := &redisServer{addr: freeLoopbackAddr(t), args: args}
		if i := slices.Index(args, "--requirepass"); i >= 0 && i+1 < len(args) {
			s.password = args[i+1]
		}
		if err = s.start(t); err == nil {
			return s
		}
	}
	t.Fatal(err)
	return nil
}

func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// start runs redis-server on s.addr and waits until its log says it accepts
// connections and it answers PING.
func (s *redisServer) start(t *testing.T) error {
	t.Helper()
	_, port, _ := net.SplitHostPort(s.addr)
	args := append([]string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir(), "--logfile", "", "--daemonize", "no"}, s.args...)
	s.cmd = exec.Command("redis-server", args...)
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	s.cmd.Stderr = s.cmd.Stdout
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("starting redis-server: %w", err)
	}
	s.exits = make(chan struct{})
	ready := make(chan struct{})
	var log strings.Builder
	go func() {
		defer close(s.exits)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if log.Len() < 8<<10 {
				log.WriteString(sc.Text() + "\n")
			}
			if strings.Contains(sc.Text(), "Ready to accept connections") {
				close(ready)
				break
			}
		}
		io.Copy(io.Discard, stdout) // keep the server from blocking on its log
		s.cmd.Wait()
	}()
	t.Cleanup(func() { s.stop(t) })
	select {
	case <-ready:
	case <-s.exits:
		return fmt.Errorf("redis-server on %s exited before it was ready:\n%s", s.addr, log.String())
	case <-time.After(redisStartTimeout):
		s.stop(t)
		return fmt.Errorf("redis-server on %s not ready after %v", s.addr, redisStartTimeout)
	}
	return s.client(t).Ping(t.Context()).Err()
}

// stop kills the server and waits until it has exited.
func (s *redisServer) stop(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("killing redis-server: %v", err)
	}
	<-s.exits
}

// client is a connection for the test itself, to look behind the store.
func (s *redisServer) client(t *testing.T) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.addr, Password: s.password, MaxRetries: -1, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	return c
}

var redisPrefixes atomic.Int64

// newRedisStore returns a provisioned store on server with a key prefix of
// its own, so parallel tests share the server but no keys.
func newRedisStore(t *testing.T, server *redisServer, configure func(*keystore.Redis)) *keystore.Redis {
	t.Helper()
	r := &keystore.Redis{
		Addresses: []string{server.addr},
		KeyPrefix: fmt.Sprintf("test%d:", redisPrefixes.Add(1)),
	}
	if configure != nil {
		configure(r)
	}
	if err := r.Provision(caddy.Context{}); err != nil {
		t.Fatalf("Provision() = %v; want nil", err)
	}
	t.Cleanup(func() { r.Cleanup() })
	return r
}

func TestRedisConformance(t *testing.T) {
	server := startRedis(t)
	admin := server.client(t)
	keystoretest.Run(t,
		func(t *testing.T) keystore.Store { return newRedisStore(t, server, nil) },
		keystoretest.WithLockExpiry(func(t *testing.T, s keystore.Store, name string) {
			// What the TTL running out does: the lock key disappears.
			key := s.(*keystore.Redis).KeyPrefix + "lock:" + name
			if n, err := admin.Del(t.Context(), key).Result(); n != 1 || err != nil {
				t.Fatalf("DEL %s = %d, %v; want 1, nil", key, n, err)
			}
		}))
}

// TestRedisLockTTLExpiry: a holder that never unlocks (a replica that died
// mid-refresh) blocks the others for lock_ttl, not forever; its late unlock
// reports the loss and leaves the new holder's lock alone.
func TestRedisLockTTLExpiry(t *testing.T) {
	t.Parallel()
	const ttl = 300 * time.Millisecond
	server := startRedis(t)
	st := newRedisStore(t, server, func(r *keystore.Redis) { r.LockTTL = caddy.Duration(ttl) })

	took := time.Now()
	staleUnlock, err := st.Lock(t.Context(), "ttl")
	if err != nil {
		t.Fatalf("Lock(%q) = %v; want nil", "ttl", err)
	}
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
	if err := staleUnlock(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("unlock(%q) by the expired holder = %v; want an error saying the lock expired", "ttl", err)
	}
	assertRedisLockHeld(t, st, "ttl")
	if err := unlock(); err != nil {
		t.Errorf("unlock(%q) by the new holder = %v; want nil", "ttl", err)
	}
}

// TestRedisUnlockComparesValue: unlock deletes the lock only while it holds
// the holder's own random value, and a repeated unlock does not release a
// lock taken in between.
func TestRedisUnlockComparesValue(t *testing.T) {
	t.Parallel()
	server := startRedis(t)
	admin := server.client(t)
	st := newRedisStore(t, server, nil)
	key := st.KeyPrefix + "lock:cad"

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
	assertRedisLockHeld(t, st, "cad")

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

// assertRedisLockHeld checks that a Lock with a short deadline still waits.
func assertRedisLockHeld(t *testing.T, st keystore.Store, name string) {
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

// TestRedisLockWait: lock_wait bounds the wait even when the caller's
// context has no deadline, and the error says which bound it was.
func TestRedisLockWait(t *testing.T) {
	t.Parallel()
	server := startRedis(t)
	st := newRedisStore(t, server, func(r *keystore.Redis) { r.LockWait = caddy.Duration(50 * time.Millisecond) })
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

// TestRedisOutage: Redis going away mid-use makes every operation fail with
// an error (no panic, no ErrNotFound that would send the proxy back to its
// seed), and once Redis is back the store works again on the same client.
func TestRedisOutage(t *testing.T) {
	t.Parallel()
	server := startRedis(t)
	st := newRedisStore(t, server, nil)
	if err := st.Save(t.Context(), seedKeySet("outage")); err != nil {
		t.Fatalf("Save(%q) = %v; want nil", "outage", err)
	}

	server.stop(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := st.Load(ctx, "outage"); err == nil || errors.Is(err, keystore.ErrNotFound) || !strings.Contains(err.Error(), `"outage"`) {
		t.Errorf("Load(%q) with Redis down = %v; want an error naming the key set, not ErrNotFound", "outage", err)
	}
	next := seedKeySet("outage")
	next.Generation = 2
	if err := st.Save(ctx, next); err == nil || errors.Is(err, keystore.ErrConflict) {
		t.Errorf("Save(%q) with Redis down = %v; want an error other than ErrConflict", "outage", err)
	}
	if unlock, err := st.Lock(ctx, "outage"); err == nil {
		unlock()
		t.Errorf("Lock(%q) with Redis down = nil error; want an error", "outage")
	}

	// Back, empty: this test's Redis keeps no data across restarts.
	if err := server.start(t); err != nil {
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
	if err := st.Save(ctx, seedKeySet("outage")); err != nil {
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

// TestRedisStoredLayout: what operators see in Redis is what the docs say:
// a hash with the generation in clear beside the encoded document.
func TestRedisStoredLayout(t *testing.T) {
	t.Parallel()
	server := startRedis(t)
	admin := server.client(t)
	st := newRedisStore(t, server, nil)
	ks := seedKeySet("layout")
	if err := st.Save(t.Context(), ks); err != nil {
		t.Fatalf("Save(%q) = %v; want nil", ks.Name, err)
	}
	next := ks.Next(keystore.Token{"access_token": []byte(`"at"`)}, time.Time{}, time.Now())
	if err := st.Save(t.Context(), next); err != nil {
		t.Fatalf("Save(%q generation 2) = %v; want nil", ks.Name, err)
	}
	key := st.KeyPrefix + "keyset:layout"
	fields, err := admin.HGetAll(t.Context(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := keystore.JSONCodec{}.Encode(next)
	if fields["generation"] != "2" || fields["document"] != string(want) || len(fields) != 2 {
		t.Errorf("HGETALL %s = %q; want generation 2 and the encoded document", key, fields)
	}
}

// TestRedisCorruptDocument: a document that does not decode, or whose
// clear generation disagrees with its own, is ErrCorrupt naming the key set.
func TestRedisCorruptDocument(t *testing.T) {
	t.Parallel()
	server := startRedis(t)
	admin := server.client(t)
	valid, err := keystore.JSONCodec{}.Encode(seedKeySet("bad"))
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
			st := newRedisStore(t, server, nil)
			values := []any{"document", tt.document}
			if tt.generation != "" {
				values = append(values, "generation", tt.generation)
			}
			if err := admin.HSet(t.Context(), st.KeyPrefix+"keyset:bad", values...).Err(); err != nil {
				t.Fatal(err)
			}
			_, err := st.Load(t.Context(), "bad")
			if !errors.Is(err, keystore.ErrCorrupt) || !strings.Contains(err.Error(), `"bad"`) {
				t.Errorf("Load(%q) = %v; want ErrCorrupt naming %q", "bad", err, "bad")
			}
		})
	}
}

// TestRedisSaveIdempotent: a Save repeated with the very same bytes (the
// client retrying a script whose reply was lost) finds its own document and
// succeeds; any other document for that generation is a conflict.
func TestRedisSaveIdempotent(t *testing.T) {
	t.Parallel()
	server := startRedis(t)
	st := newRedisStore(t, server, nil)
	ks := seedKeySet("retry")
	for i := range 2 {
		if err := st.Save(t.Context(), ks); err != nil {
			t.Fatalf("Save(%q) call %d = %v; want nil", ks.Name, i+1, err)
		}
	}
	other := seedKeySet("retry")
	other.Token.SetString(keystore.FieldRefreshToken, "rt-other")
	if err := st.Save(t.Context(), other); !errors.Is(err, keystore.ErrConflict) {
		t.Errorf("Save(%q) of another generation 1 = %v; want ErrConflict", ks.Name, err)
	}
}

// TestRedisPlaceholders: addresses and credentials come from placeholders
// ({env.*}) at Provision, and the configuration keeps the placeholders, so
// Caddy's admin API never serves the password.
func TestRedisPlaceholders(t *testing.T) {
	server := startRedis(t, "--requirepass", "s3cret-pw")
	t.Setenv("KEYSTORE_TEST_REDIS_ADDRESS", server.addr)
	t.Setenv("KEYSTORE_TEST_REDIS_PASSWORD", "s3cret-pw")
	r := &keystore.Redis{
		Addresses: []string{"{env.KEYSTORE_TEST_REDIS_ADDRESS}"},
		Password:  "{env.KEYSTORE_TEST_REDIS_PASSWORD}",
	}
	if err := r.Provision(caddy.Context{}); err != nil {
		t.Fatalf("Provision() = %v; want nil", err)
	}
	defer r.Cleanup()
	if err := r.Save(t.Context(), seedKeySet("placeholders")); err != nil {
		t.Fatalf("Save(%q) with credentials from placeholders = %v; want nil", "placeholders", err)
	}
	if r.Password != "{env.KEYSTORE_TEST_REDIS_PASSWORD}" || r.Addresses[0] != "{env.KEYSTORE_TEST_REDIS_ADDRESS}" {
		t.Errorf("after Provision, config holds Password %q, Addresses %q; want the placeholders kept", r.Password, r.Addresses)
	}
}

// TestRedisProvision covers defaults and refused configurations.
func TestRedisProvision(t *testing.T) {
	tests := []struct {
		name    string
		config  keystore.Redis
		want    keystore.Redis // checked fields: KeyPrefix and the durations
		wantErr string
	}{
		{
			name:   "defaults",
			config: keystore.Redis{},
			want: keystore.Redis{KeyPrefix: "oauth2_upstream:", LockTTL: caddy.Duration(30 * time.Second),
				LockWait: caddy.Duration(10 * time.Second), DialTimeout: caddy.Duration(5 * time.Second), ReadTimeout: caddy.Duration(3 * time.Second)},
		},
		{
			name:   "set values kept",
			config: keystore.Redis{KeyPrefix: "p:", LockTTL: caddy.Duration(time.Minute), LockWait: caddy.Duration(time.Second), DialTimeout: 1, ReadTimeout: 2},
			want:   keystore.Redis{KeyPrefix: "p:", LockTTL: caddy.Duration(time.Minute), LockWait: caddy.Duration(time.Second), DialTimeout: 1, ReadTimeout: 2},
		},
		{name: "negative ttl", config: keystore.Redis{LockTTL: -1}, wantErr: "negative"},
		{name: "negative db", config: keystore.Redis{DB: -1}, wantErr: "db"},
		{name: "db on a cluster", config: keystore.Redis{Addresses: []string{"a:1", "b:2"}, DB: 2}, wantErr: "Cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.config
			err := r.Provision(caddy.Context{})
			defer r.Cleanup()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Provision() = %v; want an error mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Provision() = %v; want nil", err)
			}
			got := [5]any{r.KeyPrefix, r.LockTTL, r.LockWait, r.DialTimeout, r.ReadTimeout}
			want := [5]any{tt.want.KeyPrefix, tt.want.LockTTL, tt.want.LockWait, tt.want.DialTimeout, tt.want.ReadTimeout}
			if got != want {
				t.Errorf("after Provision() key_prefix, lock_ttl, lock_wait, dial_timeout, read_timeout = %v; want %v", got, want)
			}
		})
	}
}

func TestRedisUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    keystore.Redis
		wantErr string
	}{
		{
			name:  "shorthand address",
			input: `redis 127.0.0.1:6379`,
			want:  keystore.Redis{Addresses: []string{"127.0.0.1:6379"}},
		},
		{
			name:  "bare",
			input: `redis`,
			want:  keystore.Redis{},
		},
		{
			name: "full block",
			input: `redis {
				address   10.0.0.1:6379 10.0.0.2:6379
				address   10.0.0.3:6379
				username  proxy
				password  {env.REDIS_PASSWORD}
				db        3
				key_prefix tenant1:
				master_name mymaster
				tls       redis.internal
				lock_ttl  45s
				lock_wait 5s
				dial_timeout 2s
				read_timeout 1s
			}`,
			want: keystore.Redis{
				Addresses: []string{"10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"},
				Username:  "proxy", Password: "{env.REDIS_PASSWORD}", DB: 3, KeyPrefix: "tenant1:",
				MasterName: "mymaster", TLS: true, TLSServerName: "redis.internal",
				LockTTL: caddy.Duration(45 * time.Second), LockWait: caddy.Duration(5 * time.Second),
				DialTimeout: caddy.Duration(2 * time.Second), ReadTimeout: caddy.Duration(time.Second),
			},
		},
		{
			name:  "tls without server name",
			input: "redis redis:6380 {\n tls\n}",
			want:  keystore.Redis{Addresses: []string{"redis:6380"}, TLS: true},
		},
		{name: "unknown option", input: "redis {\n passwd x\n}", wantErr: `unrecognized keystore redis option "passwd"`},
		{name: "password without value", input: "redis {\n password\n}", wantErr: "wrong argument count"},
		{name: "two passwords", input: "redis {\n password a b\n}", wantErr: "wrong argument count"},
		{name: "address without value", input: "redis {\n address\n}", wantErr: "wrong argument count"},
		{name: "bad db", input: "redis {\n db one\n}", wantErr: "db must be a database number"},
		{name: "bad duration", input: "redis {\n lock_ttl soon\n}", wantErr: "lock_ttl must be a positive duration"},
		{name: "zero duration", input: "redis {\n lock_wait 0s\n}", wantErr: "lock_wait must be a positive duration"},
		{name: "tls two args", input: "redis {\n tls a b\n}", wantErr: "wrong argument count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got keystore.Redis
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("UnmarshalCaddyfile(%q) = %v; want an error containing %q", tt.input, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("UnmarshalCaddyfile(%q) = %v; want nil", tt.input, err)
			}
			gotJSON, _ := json.Marshal(&got)
			wantJSON, _ := json.Marshal(&tt.want)
			if string(gotJSON) != string(wantJSON) {
				t.Errorf("UnmarshalCaddyfile(%q) = %s; want %s", tt.input, gotJSON, wantJSON)
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
