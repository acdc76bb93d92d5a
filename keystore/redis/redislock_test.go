package redis_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/leakcheck"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/keystoretest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/redis"
)

// TestLockLostReply: the reply to the command that took the lock is
// lost (it ran in Redis, then the network dropped the answer), so go-redis
// times out and sends the command again. The retry must recognise the
// caller's own lock: Lock succeeds at once instead of waiting on itself for
// lock_ttl, and unlock releases it.
func TestLockLostReply(t *testing.T) {
	t.Parallel()
	const (
		ttl         = 20 * time.Second
		readTimeout = 200 * time.Millisecond
	)
	server := keystoretest.StartRedis(t)
	admin := server.Client(t)
	proxy := startReplyDropper(t, server.Addr())
	st := newTestStore(t, server, func(o *redis.Options) {
		o.Addresses = []string{proxy.addr()}
		o.LockTTL = ttl
		// Short, so that go-redis gives up on the lost reply and
		// retries quickly (it retries a timed-out read 3 times).
		o.ReadTimeout = readTimeout
	})
	// Load the lock scripts into Redis first, so that the dropped reply
	// is the one of a script that ran, not a NOSCRIPT refusal.
	unlock, err := st.Lock(t.Context(), "warmup")
	if err != nil {
		t.Fatalf("Lock(%q) = %v; want nil", "warmup", err)
	}
	if err := unlock(); err != nil {
		t.Fatalf("unlock(%q) = %v; want nil", "warmup", err)
	}

	key := st.prefix + "lock:lost"
	proxy.dropNextReplyTo([]byte(key))
	ctx, cancel := context.WithTimeout(t.Context(), ttl/2)
	defer cancel()
	start := time.Now()
	unlock, err = st.Lock(ctx, "lost")
	if err != nil {
		t.Fatalf("Lock(%q) after its reply was lost = %v; want nil", "lost", err)
	}
	// A few read timeouts and retries, far from the TTL a false "held by
	// another" would wait out.
	if took := time.Since(start); took > 10*readTimeout {
		t.Errorf("Lock(%q) after its reply was lost took %v; want well under lock_ttl %v", "lost", took, ttl)
	}
	dropped := proxy.droppedReply()
	if len(dropped) == 0 || dropped[0] == '-' {
		t.Fatalf("reply dropped by the proxy = %q; want the reply of a command that ran (the test did not lose a reply)", dropped)
	}
	assertLockHeld(t, st, "lost")
	if err := unlock(); err != nil {
		t.Errorf("unlock(%q) = %v; want nil", "lost", err)
	}
	if n, err := admin.Exists(t.Context(), key).Result(); n != 0 || err != nil {
		t.Errorf("EXISTS %s after unlock = %d, %v; want 0, nil", key, n, err)
	}
}

// TestLockRenewedWhileHeld: a holder whose grant takes three times
// lock_ttl keeps its lock throughout, so a second replica waits instead of
// refreshing too (and spending a rotating refresh token twice); it gets the
// lock once the holder unlocks.
func TestLockRenewedWhileHeld(t *testing.T) {
	t.Parallel()
	const ttl = time.Second
	server := keystoretest.StartRedis(t)
	st := newTestStore(t, server, func(o *redis.Options) { o.LockTTL = ttl })
	unlock, err := st.Lock(t.Context(), "slow")
	if err != nil {
		t.Fatalf("Lock(%q) = %v; want nil", "slow", err)
	}

	var released atomic.Bool
	contender := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*ttl)
		defer cancel()
		unlock2, err := st.Lock(ctx, "slow")
		if err == nil {
			if !released.Load() {
				err = errors.New("second Lock got the lock while the slow holder still held it")
			}
			unlock2()
		}
		contender <- err
	}()
	time.Sleep(3 * ttl) // the slow grant
	released.Store(true)
	if err := unlock(); err != nil {
		t.Errorf("unlock(%q) after holding it for 3 × lock_ttl = %v; want nil", "slow", err)
	}
	select {
	case err := <-contender:
		if err != nil {
			t.Errorf("Lock(%q) by the second replica = %v; want nil once the holder unlocked", "slow", err)
		}
	case <-time.After(10 * ttl):
		t.Fatalf("Lock(%q) by the second replica still waiting %v after the holder unlocked", "slow", 10*ttl)
	}
}

// TestLeaseLost: when a renewal finds the lock gone (it expired while
// Redis was out of reach, or was removed), renewing stops without taking
// the lock again, another replica can get it, and the first holder's unlock
// reports the loss and leaves the new holder's lock alone.
func TestLeaseLost(t *testing.T) {
	t.Parallel()
	const ttl = time.Second
	server := keystoretest.StartRedis(t)
	admin := server.Client(t)
	st := newTestStore(t, server, func(o *redis.Options) { o.LockTTL = ttl })
	key := st.prefix + "lock:lost"
	staleUnlock, err := st.Lock(t.Context(), "lost")
	if err != nil {
		t.Fatalf("Lock(%q) = %v; want nil", "lost", err)
	}
	if n, err := admin.Del(t.Context(), key).Result(); n != 1 || err != nil {
		t.Fatalf("DEL %s = %d, %v; want 1, nil", key, n, err)
	}
	// Two renewal periods: a renewal that took the lock again would have
	// put the key back by now.
	time.Sleep(2 * ttl / 3)
	if n, err := admin.Exists(t.Context(), key).Result(); n != 0 || err != nil {
		t.Errorf("EXISTS %s two renewal periods after the lock was lost = %d, %v; want 0, nil", key, n, err)
	}
	unlock, err := st.Lock(t.Context(), "lost")
	if err != nil {
		t.Fatalf("Lock(%q) after the first holder lost it = %v; want nil", "lost", err)
	}
	err = staleUnlock()
	if !errors.Is(err, redis.ErrLockLost) || !strings.Contains(err.Error(), "renewal") {
		t.Errorf("unlock(%q) by the holder that lost it = %v; want ErrLockLost saying a renewal found it lost", "lost", err)
	}
	assertLockHeld(t, st, "lost")
	if err := unlock(); err != nil {
		t.Errorf("unlock(%q) by the new holder = %v; want nil", "lost", err)
	}
}

// TestLeaseEnds: the goroutine renewing a lock ends at once when the
// lock is released, when its holder's context ends, and when the store is
// closed; none renews a lock afterwards. The default lock_ttl keeps the
// first renewal 10s away, so the goroutine cannot end on its own (finding
// the lock gone) within the test. Not parallel: it tells its own renewal
// goroutine from the others by which one appears during its Lock.
func TestLeaseEnds(t *testing.T) {
	server := keystoretest.StartRedis(t)
	admin := server.Client(t)
	tests := []struct {
		name string
		end  func(t *testing.T, st *testStore, unlock func() error, abandon context.CancelFunc)
	}{
		{"unlock", func(t *testing.T, st *testStore, unlock func() error, _ context.CancelFunc) {
			// unlock waits for the renewal to end: bound that wait.
			unlocked := make(chan error, 1)
			go func() { unlocked <- unlock() }()
			select {
			case err := <-unlocked:
				if err != nil {
					t.Errorf("unlock() = %v; want nil", err)
				}
			case <-time.After(time.Second):
				t.Fatalf("unlock() still blocked after 1s, waiting for its renewal to end")
			}
			key := st.prefix + "lock:ends"
			if n, err := admin.Exists(t.Context(), key).Result(); n != 0 || err != nil {
				t.Errorf("EXISTS %s after unlock = %d, %v; want 0, nil", key, n, err)
			}
		}},
		{"context ended", func(_ *testing.T, _ *testStore, _ func() error, abandon context.CancelFunc) {
			abandon()
		}},
		{"store closed", func(t *testing.T, st *testStore, _ func() error, _ context.CancelFunc) {
			if err := st.Close(); err != nil {
				t.Errorf("Close() = %v; want nil", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := newTestStore(t, server, nil)
			ctx, abandon := context.WithCancel(t.Context())
			defer abandon()
			before := renewGoroutines()
			unlock, err := st.Lock(ctx, "ends")
			if err != nil {
				t.Fatalf("Lock(%q) = %v; want nil", "ends", err)
			}
			var ours []string
			for id := range renewGoroutines() {
				if !before[id] {
					ours = append(ours, id)
				}
			}
			if len(ours) != 1 {
				t.Fatalf("Lock(%q) started %d renewal goroutines; want 1", "ends", len(ours))
			}
			tt.end(t, st, unlock, abandon)
			if !goroutineEnds(ours[0], time.Second) {
				t.Errorf("renewal goroutine %s still running 1s after the lock's end (%s)", ours[0], tt.name)
			}
		})
	}
}

// renewGoroutines returns the ids of the goroutines renewing a lock: those
// that Lock started, whether they have begun to run renew yet or not.
func renewGoroutines() map[string]bool {
	ids := make(map[string]bool)
	for _, g := range leakcheck.Stacks() {
		if strings.Contains(g, "created by github.com/oauth2upstream/caddy-oauth2-upstream/keystore/redis.(*Store).lease") {
			id, _, _ := strings.Cut(strings.TrimPrefix(g, "goroutine "), " ")
			ids[id] = true
		}
	}
	return ids
}

// goroutineEnds reports whether the goroutine id has ended, within limit.
// It polls: a goroutine's exit is not an event another can wait on, and the
// renewal's last step (closing the channel unlock waits on) comes just
// before it returns.
func goroutineEnds(id string, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for renewGoroutines()[id] {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// replyDropper is a TCP proxy in front of Redis that can lose one reply:
// once told a marker, it forwards the next command that contains it, then
// swallows everything Redis answers on that connection, as a network that
// drops the reply to a command that ran. The client times out, drops the
// connection and retries on another.
type replyDropper struct {
	listener net.Listener
	target   string

	mu      sync.Mutex // guards every field below
	marker  []byte     // what the command whose reply to drop contains; nil once used
	dropped []byte     // what was swallowed
	conns   []net.Conn // open connections, both sides, closed by the test's end

	running sync.WaitGroup // the proxy's goroutines
}

// startReplyDropper starts a proxy to target on a loopback port the kernel
// chooses, stopped when the test ends.
func startReplyDropper(t *testing.T, target string) *replyDropper {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &replyDropper{listener: l, target: target}
	p.running.Go(p.accept)
	t.Cleanup(func() {
		l.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.running.Wait()
	})
	return p
}

func (p *replyDropper) addr() string { return p.listener.Addr().String() }

// dropNextReplyTo arms the proxy: the reply to the next command containing
// marker is lost.
func (p *replyDropper) dropNextReplyTo(marker []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.marker = marker
}

// droppedReply returns what the proxy swallowed.
func (p *replyDropper) droppedReply() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.dropped)
}

func (p *replyDropper) accept() {
	for {
		client, err := p.listener.Accept()
		if err != nil {
			return // closed by the test's end
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, client, server)
		p.mu.Unlock()
		var swallow atomic.Bool
		p.running.Go(func() { p.forwardCommands(client, server, &swallow) })
		p.running.Go(func() { p.forwardReplies(server, client, &swallow) })
	}
}

// forwardCommands copies commands to Redis, turning swallow on before it
// forwards the command that holds the marker. It keeps the end of each read
// (markers are shorter) so that a marker split between two reads is still
// found.
func (p *replyDropper) forwardCommands(client, server net.Conn, swallow *atomic.Bool) {
	defer server.Close()
	defer client.Close()
	const keep = 256
	buf := make([]byte, 32<<10)
	var tail []byte
	for {
		n, err := client.Read(buf)
		if n > 0 {
			seen := append(tail, buf[:n]...)
			p.mu.Lock()
			if p.marker != nil && bytes.Contains(seen, p.marker) {
				p.marker = nil
				swallow.Store(true)
			}
			p.mu.Unlock()
			tail = bytes.Clone(seen[max(0, len(seen)-keep):])
			if _, err := server.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// forwardReplies copies replies to the client until swallow is on, then
// keeps them.
func (p *replyDropper) forwardReplies(server, client net.Conn, swallow *atomic.Bool) {
	defer client.Close()
	defer server.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := server.Read(buf)
		if n > 0 {
			if swallow.Load() {
				p.mu.Lock()
				p.dropped = append(p.dropped, buf[:n]...)
				p.mu.Unlock()
			} else if _, err := client.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return // the client gave up on the connection, or the test ended
		}
	}
}
