package redis

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Bounds of the pause between two tries of a held lock. Refreshes take a
// token request's round trip, so polling faster only loads Redis.
const (
	lockRetryMin = 5 * time.Millisecond
	lockRetryMax = 100 * time.Millisecond
)

// ErrLockLost is wrapped by the error of an unlock whose lock had stopped
// being its holder's: it expired (the holder could not renew it for
// LockTTL) or was removed, and another replica may have refreshed the key
// set meanwhile. Save's generation check still keeps the holder from
// overwriting a newer key set.
var ErrLockLost = errors.New("refresh lock lost")

// acquireScript takes the lock when it is free, and also when it already
// holds the caller's value, setting the full TTL in both cases. The second
// case makes taking the lock idempotent: when the reply to a successful
// take is lost and the client sends the command again, the retry finds the
// caller's own lock and succeeds, where a plain SET NX would report the lock
// held and leave the caller waiting on itself for the whole TTL. A script
// rather than SET NX GET, which needs Redis 7.
//
// KEYS[1] lock key; ARGV[1] the holder's random value; ARGV[2] the TTL in
// milliseconds. Returns 1 when the caller holds the lock, 0 when another
// holder does.
var acquireScript = goredis.NewScript(`
local held = redis.call("GET", KEYS[1])
if held == ARGV[1] then
	redis.call("PEXPIRE", KEYS[1], ARGV[2])
	return 1
end
if held then
	return 0
end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
return 1
`)

// renewScript extends the lock's TTL only while it holds the caller's
// value. A lock that expired or was removed stays lost: renewing must not
// take it again, as another holder may have refreshed in between.
//
// KEYS[1] lock key; ARGV[1] the holder's value; ARGV[2] the TTL in
// milliseconds. Returns 1 when extended, 0 when the lock is not the
// caller's.
var renewScript = goredis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
`)

// unlockScript deletes the lock only while it holds the caller's value: a
// holder whose lock expired must not release its successor's.
var unlockScript = goredis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("DEL", KEYS[1])
end
return 0
`)

// Lock implements keystore.Store. It takes the lock with acquireScript, pausing
// between tries from lockRetryMin doubling up to lockRetryMax, until it
// holds the lock, ctx ends, or LockWait has passed.
//
// The lock is a lease: until unlock, or until ctx ends (the holder's work
// can then no longer reach the store), a goroutine extends its TTL every
// LockTTL/3, so a grant slower than LockTTL keeps other replicas out. If a
// renewal finds the lock gone or someone else's, renewing stops and unlock
// reports ErrLockLost.
func (r *Store) Lock(ctx context.Context, name string) (func() error, error) {
	if err := keystore.ValidateName(name); err != nil {
		return nil, err
	}
	key, value := r.lockKey(name), rand.Text()
	if err := r.acquire(ctx, name, key, value); err != nil {
		return nil, err
	}
	return r.lease(ctx, name, key, value).unlock, nil
}

// acquire runs acquireScript until it takes the lock; see Lock.
func (r *Store) acquire(ctx context.Context, name, key, value string) error {
	wait, cancel := context.WithTimeout(ctx, r.opts.LockWait)
	defer cancel()
	pause := lockRetryMin
	for {
		held, err := acquireScript.Run(wait, r.client, []string{key}, value, r.opts.LockTTL.Milliseconds()).Int64()
		if err == nil && held == 1 {
			return nil
		}
		if err != nil {
			// The script may have taken the lock before the error cut
			// its reply off: release it, or it blocks every replica
			// for LockTTL.
			r.release(ctx, key, value)
			if wait.Err() == nil {
				return fmt.Errorf("locking key set %q in redis: %w", name, err)
			}
		}
		timer := time.NewTimer(pause)
		select {
		case <-wait.Done():
			timer.Stop()
			if ctx.Err() != nil {
				return fmt.Errorf("waiting for the refresh lock of key set %q: %w", name, ctx.Err())
			}
			return fmt.Errorf("waiting for the refresh lock of key set %q: another replica held it longer than lock_wait %v: %w", name, r.opts.LockWait, wait.Err())
		case <-timer.C:
		}
		pause = min(2*pause, lockRetryMax)
	}
}

// lease is a lock that this process holds, renewed by renew until unlock.
type lease struct {
	store            *Store
	ctx              context.Context // the holder's, for release's values
	name, key, value string
	stopRenewing     context.CancelFunc
	renewed          chan struct{} // closed when renew has returned
	lost             error         // set by renew before it closes renewed

	once sync.Once // guards err: the first unlock releases, later ones repeat its answer
	err  error
}

// lease starts renewing the lock that acquire took and returns it.
func (r *Store) lease(ctx context.Context, name, key, value string) *lease {
	renewCtx, stop := context.WithCancel(ctx)
	l := &lease{store: r, ctx: ctx, name: name, key: key, value: value,
		stopRenewing: stop, renewed: make(chan struct{})}
	go l.renew(renewCtx)
	return l
}

// renew extends the lock's TTL every LockTTL/3 until ctx ends (unlock, the
// holder's context, or Close) or the lock is found lost. A renewal that
// fails (Redis slow or unreachable) is tried again at the next tick; the TTL
// left after one failure still spans another.
func (l *lease) renew(ctx context.Context) {
	defer close(l.renewed)
	defer context.AfterFunc(l.store.closing, l.stopRenewing)()
	every := l.store.opts.LockTTL / 3
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		extended, err := l.extend(ctx, every)
		switch {
		case errors.Is(err, goredis.ErrClosed):
			return
		case err == nil && !extended:
			l.lost = fmt.Errorf("%w: a renewal found it expired or taken over (lock_ttl %v), so another replica may have refreshed meanwhile", ErrLockLost, l.store.opts.LockTTL)
			return
		}
	}
}

// extend runs renewScript once, for at most limit so that a slow renewal
// does not delay the next.
func (l *lease) extend(ctx context.Context, limit time.Duration) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	n, err := renewScript.Run(ctx, l.store.client, []string{l.key}, l.value, l.store.opts.LockTTL.Milliseconds()).Int64()
	return n == 1, err
}

// unlock stops renewing, waiting until renew has returned so that no
// renewal runs after it, then releases the lock if it is still the
// holder's. Calling it more than once releases once and repeats the first
// answer.
func (l *lease) unlock() error {
	l.once.Do(func() {
		l.stopRenewing()
		<-l.renewed
		if l.lost != nil {
			l.err = fmt.Errorf("releasing the refresh lock of key set %q: %w", l.name, l.lost)
			return
		}
		released, err := l.store.release(l.ctx, l.key, l.value)
		switch {
		case err != nil:
			l.err = fmt.Errorf("releasing the refresh lock of key set %q: %w", l.name, err)
		case !released:
			l.err = fmt.Errorf("releasing the refresh lock of key set %q: %w: it had expired (lock_ttl %v) and may have passed to another holder", l.name, ErrLockLost, l.store.opts.LockTTL)
		}
	})
	return l.err
}

// release deletes the lock if it still holds value. It runs even when the
// lock's context has ended (the request finished or was cancelled), for at
// most ReadTimeout.
func (r *Store) release(ctx context.Context, key, value string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.opts.ReadTimeout)
	defer cancel()
	n, err := unlockScript.Run(ctx, r.client, []string{key}, value).Int64()
	return n == 1, err
}
