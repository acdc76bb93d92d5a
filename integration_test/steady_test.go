package integration_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
)

// Bounds of the steady-traffic scenarios.
const (
	// steadyRun covers ten token lifespans, and more.
	steadyRun = 10*tokenLifespan + time.Second
	// requestGap paces each client loop.
	requestGap = 20 * time.Millisecond
	// grantLag bounds how late a proactive refresh may start after its
	// due time: the next request's arrival (requestGap), the flight's
	// keystore lock and load, the grant's round trip to fosite (in a
	// -race test process) and the durable write. Measured: 5-40ms.
	grantLag = requestGap + 250*time.Millisecond
	// clockSlack covers the sidecar computing the expiry from when it sent
	// the grant, a little before the authorization server issued it.
	clockSlack = 50 * time.Millisecond
)

// hostport turns a server's base URL into a reverse_proxy upstream.
func hostport(baseURL string) string { return strings.TrimPrefix(baseURL, "http://") }

// Scenario 1: steady traffic over ten token lifetimes. Every request is
// answered 200, no 401 ever reaches the sidecar (proactive refresh), and the
// grants are exactly the expiries that traffic crossed: each stored once
// (generation), none early (no extra grant), none late (none missing).
func TestSteadyTrafficGrantsOncePerExpiry(t *testing.T) {
	auth := newAuthServer(t, authserver.Config{})
	api := newResourceServer(t, auth)
	dir, ksOption := fileKeystore(t)
	sc := startSidecar(t, spec{
		auth: auth, upstream: hostport(api.URL()), keystore: ksOption, seed: seedToken(t, auth),
		options: []string{"expiry_skew " + expirySkew.String()},
	})
	c := newClient(t, 2)

	var results tally
	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), steadyRun)
	defer cancel()
	paced(ctx, requestGap, func() {
		r := get(c, sc.URL()+"/steady")
		results.add(r)
		if r.status == http.StatusOK {
			if e := r.echo(t); e.AuthorizationCount != 1 {
				t.Errorf("resource server saw %d Authorization headers; want 1", e.AuthorizationCount)
			}
		}
	})
	end := time.Now()
	t.Logf("traffic: %v over %s", results.byStatus, end.Sub(start).Round(time.Millisecond))
	if ok, summary := results.allOK(); !ok {
		t.Errorf("steady traffic: %s; want every request 200", summary)
	}

	entries, err := sc.Entries()
	if err != nil {
		t.Fatal(err)
	}
	grants := loggedGrants(t, entries)
	checkGrantsMatchExpiries(t, grants, end, grantLag)
	if got := auth.Grants(); got != len(grants) {
		t.Errorf("authorization server made %d grants; sidecar logged %d", got, len(grants))
	}
	ks, _ := readKeySet(t, dir, keySetName)
	if got, want := ks.Generation-1, int64(len(grants)); got != want {
		t.Errorf("stored generation %d: %d key sets stored after the seed; want %d, one per grant", ks.Generation, got, want)
	}
	if got := auth.GrantAttempts(); got != len(grants) {
		t.Errorf("grant attempts = %d; want %d (every attempt succeeded)", got, len(grants))
	}
	if got := auth.ReuseDetections(); got != 0 {
		t.Errorf("reuse detections = %d; want 0", got)
	}
	// fosite revokes the previous access token on every refresh, so the
	// request that triggered a background refresh, still carrying the old
	// token, may meet a 401: it is replayed with the new token, no grant.
	rejected, replays := api.Unauthorized(), sidecar.Count(entries, sidecar.MsgReplaying)
	t.Logf("401s from the resource server: %d, replays: %d", rejected, replays)
	if rejected != replays || rejected > len(grants)-1 {
		t.Errorf("resource server answered 401 %d times, sidecar replayed %d; want equal, and at most one per refresh (%d)", rejected, replays, len(grants)-1)
	}
}

// paced calls f every gap until ctx ends, one call at a time.
func paced(ctx context.Context, gap time.Duration, f func()) {
	tick := time.NewTicker(gap)
	defer tick.Stop()
	for ctx.Err() == nil {
		f()
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// refreshGrants returns the refresh_token grants, in order.
func refreshGrants(auth *authserver.Server) []authserver.Issued {
	var grants []authserver.Issued
	for _, i := range auth.Issued() {
		if i.GrantType == authserver.GrantRefreshToken {
			grants = append(grants, i)
		}
	}
	return grants
}

// grant is one grant as the sidecar logged it.
type grant struct {
	generation int64     // the generation it replaced
	started    time.Time // "refreshing key set"
	expiry     time.Time // of the token it got: "refreshed key set"
}

// loggedGrants pairs the sidecar's "refreshing key set" and "refreshed key
// set" lines by generation.
func loggedGrants(t *testing.T, entries []sidecar.Entry) []grant {
	t.Helper()
	var grants []grant
	byGeneration := map[int64]int{} // replaced generation -> index in grants
	for _, e := range entries {
		switch e.Msg {
		case sidecar.MsgRefreshing:
			byGeneration[e.Int("generation")] = len(grants)
			grants = append(grants, grant{generation: e.Int("generation"), started: e.At})
		case sidecar.MsgRefreshed:
			k, ok := byGeneration[e.Int("generation")-1]
			if !ok {
				t.Fatalf("sidecar logged %q generation %d without %q generation %d", sidecar.MsgRefreshed, e.Int("generation"), sidecar.MsgRefreshing, e.Int("generation")-1)
			}
			grants[k].expiry = e.Time("expiry")
		}
	}
	return grants
}

// checkGrantsMatchExpiries checks that the sidecar's grants (the first one
// spends the seed) are exactly the expiries that traffic, running until
// end, crossed. A proactive sidecar refreshes when a request finds the
// token within expiry_skew of its expiry (computed by the sidecar from
// expires_in, which fosite rounds down: 2s or 3s for a 3s lifespan), so
// grant k's token is due for refresh at due(k) = expiry(k) - expiry_skew,
// and traffic that crosses due(k) must start grant k+1 within
// [due(k), due(k) + grantLag], by the sidecars' clock: earlier is an
// extra grant, later (or never) a missed expiry. A due time within
// grantLag of the end may or may not have been served. So the expected
// number of grants is exactly 1 + the due times that traffic crossed.
func checkGrantsMatchExpiries(t *testing.T, grants []grant, end time.Time, grantLag time.Duration) {
	t.Helper()
	if len(grants) < 2 {
		t.Fatalf("%d grants; want one per token lifetime", len(grants))
	}
	crossed, maybe := 0, 0
	var gaps []time.Duration
	for k, g := range grants {
		if g.expiry.IsZero() {
			t.Fatalf("grant %d (generation %d) logged no expiry; want one from expires_in", k+1, g.generation)
		}
		earliest, due := refreshWindow(g.started, g.expiry, expirySkew)
		switch {
		case due.Add(grantLag).Before(end):
			crossed++
		case earliest.Before(end):
			maybe++
		}
		if k+1 == len(grants) {
			if due.Add(grantLag).Before(end) {
				t.Errorf("grant %d was due for refresh at +%s, traffic ran until +%s, and no grant followed (a missed expiry)",
					k+1, due.Sub(grants[0].started), end.Sub(grants[0].started))
			}
			break
		}
		next := grants[k+1].started
		gaps = append(gaps, next.Sub(g.started).Round(time.Millisecond))
		if next.Before(earliest.Add(-clockSlack)) {
			t.Errorf("grant %d started %s before grant %d could be due for refresh (an extra grant)", k+2, earliest.Sub(next), k+1)
		}
		if next.After(due.Add(grantLag)) {
			t.Errorf("grant %d started %s after grant %d was due for refresh; want within %s (a missed expiry)", k+2, next.Sub(due), k+1, grantLag)
		}
	}
	span := end.Sub(grants[0].started)
	t.Logf("grants: %d over %s = 1 (seed) + %d refreshes; expiries crossed by traffic: %d (+%d within %s of the end); gaps %v",
		len(grants), span.Round(time.Millisecond), len(grants)-1, crossed, maybe, grantLag, gaps)
	if refreshes := len(grants) - 1; refreshes < crossed || refreshes > crossed+maybe {
		t.Errorf("%d refreshes; want %d, one per expiry that traffic crossed", refreshes, crossed)
	}
	if lifetimes := span / tokenLifespan; lifetimes < 10 {
		t.Errorf("traffic covered %d token lifetimes; want at least 10", lifetimes)
	}
}
