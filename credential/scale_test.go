package credential

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
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
