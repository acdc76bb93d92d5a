// The refresh lock's part of the conformance suite: exclusion, context,
// independent names, serialized refreshes, and a stalled holder fenced.

package keystoretest

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// testLockExcludes: while one holder has the lock, a second Lock waits, and
// it gets the lock once the first holder unlocks.
func testLockExcludes(t *testing.T, st keystore.Store) {
	const name = "excl"
	unlock := mustLock(t, st, name)

	var released atomic.Bool
	acquired := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), promptly)
		defer cancel()
		unlock2, err := st.Lock(ctx, name)
		if err == nil {
			if !released.Load() {
				err = errors.New("second Lock returned before the first holder unlocked")
			}
			unlock2()
		}
		acquired <- err
	}()
	// Meanwhile the lock stays held; this also gives the goroutine above
	// time to be waiting when the holder unlocks.
	assertHeld(t, st, name)
	released.Store(true)
	if err := unlock(); err != nil {
		t.Fatalf("unlock(%q) = %v; want nil", name, err)
	}
	if err := <-acquired; err != nil {
		t.Fatalf("Lock(%q) after unlock = %v; want nil", name, err)
	}
}

// testLockHonoursContext: a waiting Lock gives up when its context is
// cancelled or its deadline passes, and leaves the lock usable afterwards.
func testLockHonoursContext(t *testing.T, st keystore.Store) {
	const name = "ctx"
	unlock := mustLock(t, st, name)

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		unlock2, err := st.Lock(ctx, name)
		if err == nil {
			unlock2()
		}
		done <- err
	}()
	// A Lock with a deadline gives up when it passes; meanwhile the
	// goroutine above has begun to wait, to be cancelled while waiting.
	assertHeld(t, st, name)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Lock(%q) with a cancelled context = %v; want context.Canceled", name, err)
		}
	case <-time.After(promptly):
		t.Fatalf("Lock(%q) still waiting %v after its context was cancelled", name, promptly)
	}

	if err := unlock(); err != nil {
		t.Fatalf("unlock(%q) = %v; want nil", name, err)
	}
	unlock = mustLock(t, st, name)
	if err := unlock(); err != nil {
		t.Fatalf("unlock(%q) = %v; want nil", name, err)
	}
}

// testLockNamesIndependent: one key set's refresh does not hold up another's.
func testLockNamesIndependent(t *testing.T, st keystore.Store) {
	unlockA := mustLock(t, st, "alpha")
	defer unlockA()
	unlockB := mustLock(t, st, "beta")
	defer unlockB()
}

// testLockSerializesRefreshes: contenders doing the refresh dance (lock,
// reload, save the next generation, unlock) never overlap, so none of their
// saves conflicts and every one of them lands.
func testLockSerializesRefreshes(t *testing.T, st keystore.Store) {
	const name = "serial"
	if err := st.Save(t.Context(), keySet(name, 1, "rt-0")); err != nil {
		t.Fatalf("Save(%q generation 1) = %v; want nil", name, err)
	}
	var inside atomic.Int32
	errs := make(chan error, contenders)
	start := make(chan struct{})
	for i := range contenders {
		go func() {
			<-start
			errs <- refreshOnce(st, name, fmt.Sprintf("rt-%d", i+1), &inside)
		}()
	}
	close(start)
	for range contenders {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	got, err := st.Load(t.Context(), name)
	if err != nil {
		t.Fatalf("Load(%q) = %v; want nil", name, err)
	}
	if want := int64(contenders + 1); got.Generation != want {
		t.Errorf("Load(%q).Generation = %d after %d serialized refreshes; want %d", name, got.Generation, contenders, want)
	}
}

func refreshOnce(st keystore.Store, name, refreshToken string, inside *atomic.Int32) error {
	ctx, cancel := context.WithTimeout(context.Background(), promptly*contenders)
	defer cancel()
	unlock, err := st.Lock(ctx, name)
	if err != nil {
		return fmt.Errorf("Lock(%q) = %v; want nil", name, err)
	}
	defer unlock()
	if n := inside.Add(1); n != 1 {
		return fmt.Errorf("Lock(%q) let %d holders in at once; want 1", name, n)
	}
	defer inside.Add(-1)
	ks, err := st.Load(ctx, name)
	if err != nil {
		return fmt.Errorf("Load(%q) under lock = %v; want nil", name, err)
	}
	next := keySet(name, ks.Generation+1, refreshToken)
	if err := st.Save(ctx, next); err != nil {
		return fmt.Errorf("Save(%q generation %d) under lock = %v; want nil", name, next.Generation, err)
	}
	return nil
}

// testStaleHolderFenced: a holder that read generation 1, then stalled while
// another process refreshed and stored generation 2, cannot overwrite
// generation 2 with its own (stale) refresh: the generation check fences it.
// Where locks expire, the stall outlives the holder's lock, so the other
// process got in while the stale holder still believed it held the lock; the
// stale holder's late unlock must not release its successor's lock either.
func (s *suite) testStaleHolderFenced(t *testing.T, st keystore.Store) {
	const name = "fenced"
	if err := st.Save(t.Context(), keySet(name, 1, "rt-1")); err != nil {
		t.Fatalf("Save(%q generation 1) = %v; want nil", name, err)
	}
	staleUnlock := mustLock(t, st, name)
	stale, err := st.Load(t.Context(), name)
	if err != nil {
		t.Fatalf("Load(%q) = %v; want nil", name, err)
	}
	if s.expireLock == nil {
		// Locks last until released: the other process gets in after
		// the stale holder's refresh failed and it unlocked, while the
		// holder still keeps (and later retries with) what it read.
		if err := staleUnlock(); err != nil {
			t.Fatalf("unlock(%q) = %v; want nil", name, err)
		}
	} else {
		s.expireLock(t, st, name)
	}

	newer := keySet(name, 2, "rt-2-newer")
	unlock := mustLock(t, st, name)
	if err := st.Save(t.Context(), newer); err != nil {
		t.Fatalf("Save(%q generation 2) by the new holder = %v; want nil", name, err)
	}
	if s.expireLock != nil {
		staleUnlock() // may report that the lock was lost; it must not free the new holder's
		assertHeld(t, st, name)
	}

	err = st.Save(t.Context(), stale.Next(token(`{"access_token":"at-stale","refresh_token":"rt-2-stale"}`), time.Time{}, time.Now()))
	if !errors.Is(err, keystore.ErrConflict) {
		t.Errorf("Save(%q generation 2) by the stale holder = %v; want ErrConflict", name, err)
	}
	if err := unlock(); err != nil {
		t.Errorf("unlock(%q) by the new holder = %v; want nil", name, err)
	}
	got, err := st.Load(t.Context(), name)
	if err != nil {
		t.Fatalf("Load(%q) = %v; want nil", name, err)
	}
	if diff := Diff(got, newer); diff != "" {
		t.Errorf("Load(%q) differs from the new holder's generation 2: %s", name, diff)
	}
}

// mustLock takes the named lock, failing the test if that takes longer than
// promptly.
func mustLock(t *testing.T, st keystore.Store, name string) func() error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), promptly)
	defer cancel()
	unlock, err := st.Lock(ctx, name)
	if err != nil {
		t.Fatalf("Lock(%q) = %v; want nil", name, err)
	}
	return unlock
}

// assertHeld checks that the named lock is held: another Lock must still be
// waiting when its deadline passes, and must then report that deadline.
func assertHeld(t *testing.T, st keystore.Store, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), heldFor)
	defer cancel()
	unlock, err := st.Lock(ctx, name)
	if err == nil {
		unlock()
		t.Fatalf("Lock(%q) while held = nil error; want context.DeadlineExceeded", name)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock(%q) while held = %v; want context.DeadlineExceeded", name, err)
	}
}
