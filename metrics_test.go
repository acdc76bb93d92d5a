package oauth2upstream

import (
	"bytes"
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
)

// scrape returns what a Prometheus scrape of reg reads, in the text format.
func scrape(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}).
		ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("scrape = %d: %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// sample returns the value of series (a name and its labels, in the text
// format's spelling) in a scrape, and whether it is there.
func sample(text, series string) (float64, bool) {
	for line := range strings.SplitSeq(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return f, err == nil
		}
	}
	return 0, false
}

// After a known sequence of requests the metrics read: three grants ok and
// one failed (and their durations), one request of each replay outcome, the
// expiry of the token in use, and a keystore error by operation.
func TestMetricsAfterRequests(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "metrics-ks", RefreshToken: "rt-0",
		BodyOptions: BodyOptions{ReplayMemory: 1024, MaxReplayBody: 1024}}, hostPort(t, api.server.URL))
	clock := credentialtest.NewClock()
	s.useClock(clock)
	reg := s.ctx.GetMetricsRegistry()

	s.get(t, "/first") // grant 1
	ageTokens(clock)
	api.setValid("Bearer at-2")
	if resp, _ := s.get(t, "/replayed"); resp.StatusCode != http.StatusOK { // grant 2, replayed
		t.Fatalf("replayed request = %d; want 200", resp.StatusCode)
	}
	ageTokens(clock)
	api.setValid("Bearer at-3")
	req, _ := http.NewRequest(http.MethodPost, s.server.URL+"/big", bytes.NewReader(make([]byte, 4096)))
	if resp, _ := s.do(t, req); resp.StatusCode != http.StatusUnauthorized { // grant 3, not replayable
		t.Fatalf("request with a body too large to replay = %d; want the upstream's 401", resp.StatusCode)
	}
	lastGrant := clock.Now()
	api.setValid("none")
	if resp, _ := s.get(t, "/too-recent"); resp.StatusCode != http.StatusUnauthorized { // at-3 just granted: no grant
		t.Fatalf("request rejecting the token just granted = %d; want the upstream's 401", resp.StatusCode)
	}
	ageTokens(clock)
	te.Mu.Lock()
	te.RefreshToken = "revoked"
	te.Mu.Unlock()
	if resp, _ := s.get(t, "/refresh-fails"); resp.StatusCode != http.StatusBadGateway { // grant 4 fails
		t.Fatalf("request whose refresh fails = %d; want 502", resp.StatusCode)
	}
	// A corrupt document: the next refresh fails loading it.
	if err := os.WriteFile(filepath.Join(s.dir, "metrics-ks.json"), []byte("{torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.handler.engine.ForceRefresh(context.Background(), "metrics-ks"); err == nil {
		t.Fatal("ForceRefresh over a corrupt document succeeded")
	}

	text := scrape(t, reg)
	want := map[string]float64{
		`caddy_oauth2_upstream_grants_total{key_set="metrics-ks",result="ok"}`:               3,
		`caddy_oauth2_upstream_grants_total{key_set="metrics-ks",result="error"}`:            1,
		`caddy_oauth2_upstream_grant_duration_seconds_count{key_set="metrics-ks"}`:           4,
		`caddy_oauth2_upstream_replays_total{key_set="metrics-ks",outcome="replayed"}`:       1,
		`caddy_oauth2_upstream_replays_total{key_set="metrics-ks",outcome="not_replayable"}`: 1,
		`caddy_oauth2_upstream_replays_total{key_set="metrics-ks",outcome="refresh_failed"}`: 1,
		`caddy_oauth2_upstream_replays_total{key_set="metrics-ks",outcome="too_recent"}`:     1,
		`caddy_oauth2_upstream_keystore_errors_total{operation="load"}`:                      1,
		`caddy_oauth2_upstream_token_expiry_timestamp_seconds{key_set="metrics-ks"}`:         float64(lastGrant.Add(time.Hour).Unix()),
		// The corrupt document needs a person; one state at a time.
		`caddy_oauth2_upstream_key_set_state{key_set="metrics-ks",state="needs_reauthorization"}`: 1,
		`caddy_oauth2_upstream_key_set_state{key_set="metrics-ks",state="ok"}`:                    0,
		`caddy_oauth2_upstream_key_set_state{key_set="metrics-ks",state="keystore_failing"}`:      0,
	}
	for series, v := range want {
		got, ok := sample(text, series)
		if !ok || math.Abs(got-v) > 1e-6 {
			t.Errorf("%s = %v (present %v); want %v", series, got, ok, v)
		}
	}
	if _, ok := sample(text, `caddy_oauth2_upstream_keystore_errors_total{operation="save"}`); ok {
		t.Errorf("keystore save errors counted; want none")
	}
}

// The expiry gauge follows the key set in use however it changed: here an
// admin PUT, which makes no grant.
func TestMetricsExpiryFollowsPut(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "metrics-put", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
	clock := credentialtest.NewClock()
	s.useClock(clock)
	const series = `caddy_oauth2_upstream_token_expiry_timestamp_seconds{key_set="metrics-put"}`
	if v, ok := sample(scrape(t, s.ctx.GetMetricsRegistry()), series); ok {
		t.Errorf("before any key set is loaded: %s = %v; want no sample", series, v)
	}
	a, _ := adminFor(t)
	if rec := adminCall(t, a, http.MethodPut, "/oauth2_upstream/key_sets/metrics-put", `{"access_token":"x","expires_in":120}`); rec.Code != http.StatusOK {
		t.Fatalf("PUT = %d (%s)", rec.Code, rec.Body)
	}
	want := float64(clock.Now().Add(2 * time.Minute).Unix())
	if v, ok := sample(scrape(t, s.ctx.GetMetricsRegistry()), series); !ok || v != want {
		t.Errorf("after PUT: %s = %v (present %v); want %v", series, v, ok, want)
	}
}

// Handlers of one config share its registry: the second registration reuses
// the first one's collectors rather than failing, and both count into them.
func TestMetricsSharedRegistry(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	first, err := newUpstreamMetrics(reg, new(live.Registry), live.Config{})
	if err != nil {
		t.Fatalf("newUpstreamMetrics() = %v", err)
	}
	second, err := newUpstreamMetrics(reg, new(live.Registry), live.Config{})
	if err != nil {
		t.Fatalf("second newUpstreamMetrics() = %v; want the registered collectors reused", err)
	}
	if first.grants != second.grants || first.replays != second.replays {
		t.Errorf("second handler got new collectors; want the registered ones")
	}
	first.GrantDone("shared", nil, time.Second)
	second.GrantDone("shared", nil, time.Second)
	if v, _ := sample(scrape(t, reg), `caddy_oauth2_upstream_grants_total{key_set="shared",result="ok"}`); v != 2 {
		t.Errorf("grants_total = %v; want 2", v)
	}
}

// The refresh token gauges follow the key set in use, when its provider
// announced the refresh token's lifetime: when it expires, and 1 once it
// expires within reauthorize_warning and no refresh will save it (here: an
// extendable lifetime whose renewal halfway through is overdue). A key set
// whose provider announced none has no sample.
func TestMetricsRefreshTokenExpiry(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "metrics-rt", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
	clock := credentialtest.NewClock()
	s.useClock(clock)
	const (
		expirySeries   = `caddy_oauth2_upstream_refresh_token_expiry_timestamp_seconds{key_set="metrics-rt"}`
		expiringSeries = `caddy_oauth2_upstream_refresh_token_expiring{key_set="metrics-rt"}`
	)
	a, _ := adminFor(t)
	if rec := adminCall(t, a, http.MethodPut, "/oauth2_upstream/key_sets/metrics-rt", `{"access_token":"x","expires_in":120}`); rec.Code != http.StatusOK {
		t.Fatalf("PUT = %d (%s)", rec.Code, rec.Body)
	}
	text := scrape(t, s.ctx.GetMetricsRegistry())
	for _, series := range []string{expirySeries, expiringSeries} {
		if v, ok := sample(text, series); ok {
			t.Errorf("no refresh lifetime announced: %s = %v; want no sample", series, v)
		}
	}
	body := `{"access_token":"x","refresh_token":"rt-x","expires_in":120,"refresh_expires_in":86400}`
	if rec := adminCall(t, a, http.MethodPut, "/oauth2_upstream/key_sets/metrics-rt", body); rec.Code != http.StatusOK {
		t.Fatalf("PUT = %d (%s)", rec.Code, rec.Body)
	}
	want := float64(clock.Now().Add(24 * time.Hour).Unix())
	text = scrape(t, s.ctx.GetMetricsRegistry())
	if v, ok := sample(text, expirySeries); !ok || v != want {
		t.Errorf("%s = %v (present %v); want %v", expirySeries, v, ok, want)
	}
	if v, ok := sample(text, expiringSeries); !ok || v != 0 {
		t.Errorf("a day left: %s = %v (present %v); want 0", expiringSeries, v, ok)
	}
	clock.Advance(19 * time.Hour) // past three quarters of its life
	if v, ok := sample(scrape(t, s.ctx.GetMetricsRegistry()), expiringSeries); !ok || v != 1 {
		t.Errorf("five hours left: %s = %v (present %v); want 1", expiringSeries, v, ok)
	}
}
