package credential

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// A page of names is the first limit names after the cursor, in order,
// whatever order the map gives them in.
func TestFirstNamesAfter(t *testing.T) {
	t.Parallel()
	states := make(map[string]*keySetState)
	var all []string
	for _, i := range rand.Perm(1000) {
		name := fmt.Sprintf("acct-%04d", i)
		states[name] = nil
		all = append(all, name)
	}
	slices.Sort(all)
	for _, tt := range []struct {
		after string
		limit int
		want  []string
	}{
		{"", 10, all[:10]},
		{"acct-0500", 3, all[501:504]},
		{"acct-0998", 10, all[999:]},
		{"acct-0999", 10, nil},
		{"", 0, all},
		{"acct-0100", -1, all[101:]},
	} {
		got := firstNamesAfter(states, tt.after, tt.limit)
		if len(got) != len(tt.want) || (len(got) > 0 && !slices.Equal(got, tt.want)) {
			t.Errorf("firstNamesAfter(after %q, limit %d) = %d names from %v; want %d from %v",
				tt.after, tt.limit, len(got), first(got), len(tt.want), first(tt.want))
		}
	}
}

func first(names []string) string {
	if len(names) == 0 {
		return "(none)"
	}
	return names[0]
}

// A token with less than minTokenLife left would die on its way to the
// upstream: it is refreshed first, not sent.
func TestDyingTokenIsNotSent(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	storeKeySet(t, f.store, f.keySet("sf", 1, "at-old", "rt-0", f.clock.Now().Add(minTokenLife/2)))
	if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-1" {
		t.Errorf("Current(%q) with %v left = %s; want the refreshed Bearer at-1", "sf", minTokenLife/2, credString(cred))
	}
	storeKeySet(t, f.store, f.keySet("long", 1, "at-long", "rt-0", f.clock.Now().Add(2*minTokenLife+time.Minute)))
	if cred := f.mustCurrent(t, "long"); cred.Header != "Bearer at-long" {
		t.Errorf("Current(%q) = %s; want Bearer at-long", "long", credString(cred))
	}
}

// A token endpoint that answers expires_in at or below the sending floor
// (minTokenLife) would, taken at its word, grant tokens that are never
// sent: a grant per request, each rotating the refresh token. Its expiry
// is taken as unknown instead (logged once per grant): 50 requests, a
// second apart, make one grant and all carry its token, no proactive
// refresh is planned, and a trigger status still renews it.
func TestLifetimeAtSendingFloorIsUnknownExpiry(t *testing.T) {
	t.Parallel()
	for _, expiresIn := range []any{1, "1", 0.5} {
		t.Run(fmt.Sprintf("%#v", expiresIn), func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			f.te.Mu.Lock()
			f.te.Extra = map[string]any{"expires_in": expiresIn}
			f.te.Mu.Unlock()
			core, logs := observer.New(zap.DebugLevel)
			f.r.logger = zap.New(core)
			storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))

			others := 0 // requests that did not carry the first grant's token
			for range 50 {
				if cred := f.mustCurrent(t, "sf"); cred.Header != "Bearer at-1" {
					others++
				}
				f.clock.Advance(time.Second)
			}
			if got := f.te.Grants.Load(); got != 1 || others != 0 {
				t.Errorf("50 requests made %d grants, %d requests carried another token than Bearer at-1; want 1 grant, none", got, others)
			}
			if stored := loadKeySet(t, f.other, "sf"); !stored.Expiry.IsZero() {
				t.Errorf("stored expiry = %v; want unknown (zero)", stored.Expiry)
			}
			if s, ok := f.r.Schedule("sf"); !ok || !s.ProactiveRefresh.IsZero() {
				t.Errorf("Schedule(%q) = %+v, %v; want no proactive refresh", "sf", s, ok)
			}
			if got := logs.FilterLevelExact(zap.WarnLevel).FilterMessageSnippet("sending floor").Len(); got != 1 {
				t.Errorf("sending-floor warnings = %d; want 1 (one grant)", got)
			}

			cred, err := f.r.Rejected(context.Background(), "sf", 2)
			if err != nil || cred.Header != "Bearer at-2" {
				t.Errorf("Rejected(%q, 2) = %s, %v; want the renewed Bearer at-2", "sf", credString(cred), err)
			}
		})
	}
}
