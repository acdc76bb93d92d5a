package credential

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// A temporary failure whose backoff outlasts the token in use makes the key
// set failing, not healthy: requests will fail until the backoff ends. One
// whose backoff ends while the token is still valid leaves it expiring, and
// healthy.
func TestStatusFailingWhenBackoffOutlastsToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		retryAfter time.Duration
		wantState  string
	}{
		{name: "backoff ends before the expiry", retryAfter: 2 * time.Minute, wantState: StateExpiring},
		{name: "backoff ends after the expiry", retryAfter: 20 * time.Minute, wantState: StateFailing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			f.r.maxRetryAfter = time.Hour
			// Valid for 10 more minutes, old enough for any refresh.
			ks := f.keySet("sf", 1, "at-0", "rt-0", f.clock.Now().Add(10*time.Minute))
			ks.UpdatedAt = f.clock.Now().Add(-time.Hour)
			storeKeySet(t, f.store, ks)
			f.respond(func(w http.ResponseWriter, _ *http.Request) bool {
				w.Header().Set("Retry-After", strconv.Itoa(int(tt.retryAfter.Seconds())))
				w.WriteHeader(http.StatusTooManyRequests)
				return true
			})
			if _, err := f.r.ForceRefresh(context.Background(), "sf"); err == nil {
				t.Fatal("ForceRefresh() against a 429 = nil; want the failure")
			}
			s, err := f.r.Status(context.Background(), "sf")
			if err != nil {
				t.Fatal(err)
			}
			if s.State != tt.wantState || s.Healthy() != (tt.wantState != StateFailing) {
				t.Errorf("Status(%q) = %s, healthy %v; want %s", "sf", s.State, s.Healthy(), tt.wantState)
			}
		})
	}
}
