package credential

import (
	"context"
	"testing"
	"time"
)

// TestEngineLastSecondWaitsForRefresh: a token with less than the sending
// floor (minTokenLife) left is not sent; the request that meets it waits
// for the refresh, joining the proactive one already in flight or starting
// one, and gets the new token, never a failure while the token endpoint
// answers.
func TestEngineLastSecondWaitsForRefresh(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{ModeProactive, ModeReactive} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			f.r.mode = mode
			expiry := f.clock.Now().Add(10 * time.Second)
			storeKeySet(t, f.store, f.keySet("sf", 1, "at-0", "rt-0", expiry))
			release := f.holdGrants(t)
			if mode == ModeProactive {
				// Within the skew: served at once, a background grant starts and is held.
				if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-0" {
					t.Fatalf("Current(%q) within the skew = %s; want Bearer at-0", "sf", credString(cred))
				}
			}
			f.clock.Advance(expiry.Sub(f.clock.Now()) - minTokenLife/2) // half the floor left
			type result struct {
				cred *Credential
				err  error
			}
			got := make(chan result, 1)
			go func() {
				cred, err := f.r.Current(context.Background(), "sf")
				got <- result{cred, err}
			}()
			release()
			if r := <-got; r.err != nil || r.cred.Header != "Bearer at-1" {
				t.Errorf("Current(%q) in the token's last %v = %s, %v; want Bearer at-1, after the refresh", "sf", minTokenLife/2, credString(r.cred), r.err)
			}
			if n := f.te.Grants.Load(); n != 1 {
				t.Errorf("grants = %d; want 1", n)
			}
		})
	}
}
