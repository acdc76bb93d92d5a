package integration_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/resourceserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// profileRotations is how many refreshes each profile scenario watches.
const profileRotations = 3

// profileTimeout bounds one profile scenario's traffic: a few lifetimes.
const profileTimeout = 20 * time.Second

// instanceURLUpstream is the Salesforce upstream: the API host comes with
// the token (Caddy refuses a placeholder with a scheme, hence .hostport).
const instanceURLUpstream = "{http.oauth2_upstream.extra.instance_url.hostport}"

// Scenario 6: provider profiles. Each subtest runs the sidecar against a
// provider shaped like a real one and checks what it stores and when it
// refreshes.
func TestProviderProfiles(t *testing.T) {
	t.Run("Google: no refresh_token in the response, the old one is kept", testKeepsRefreshToken)
	t.Run("no expires_in: refresh only on 401", testNoExpiresIn)
	t.Run("Microsoft: rotation on every grant", testRotationEveryGrant)
	t.Run("Salesforce: instance_url is the upstream", testInstanceURL)
}

// profileSidecar starts a provider with profile, an API and a proactive
// sidecar on a file keystore.
func profileSidecar(t *testing.T, profile authserver.Profile) (*authserver.Server, *resourceserver.Server, *sidecar.Process, string, string) {
	t.Helper()
	auth := newAuthServer(t, authserver.Config{Profile: profile})
	api := newResourceServer(t, auth)
	dir, ksOption := fileKeystore(t)
	seed := seedToken(t, auth)
	sc := startSidecar(t, spec{
		auth: auth, upstream: hostport(api.URL()), keystore: ksOption, seed: seed,
		options: []string{"expiry_skew " + expirySkew.String()},
	})
	return auth, api, sc, dir, seed
}

// trafficUntil sends paced requests, every one answered 200, until done
// holds, and returns the key sets stored along the way, one per generation.
func trafficUntil(t *testing.T, sc *sidecar.Process, dir string, done func(map[int64]*keystore.KeySet) bool) map[int64]*keystore.KeySet {
	t.Helper()
	c := newClient(t, 2)
	seen := map[int64]*keystore.KeySet{}
	ctx, cancel := context.WithTimeout(t.Context(), profileTimeout)
	defer cancel()
	paced(ctx, requestGap, func() {
		if r := get(c, sc.URL()+"/profile"); r.status != http.StatusOK {
			t.Fatalf("request: %s; want 200", r)
		}
		ks, _ := readKeySet(t, dir, keySetName)
		seen[ks.Generation] = ks
		if done(seen) {
			cancel()
		}
	})
	if !done(seen) {
		t.Fatalf("not done within %s; generations seen: %d", profileTimeout, len(seen))
	}
	return seen
}

// generationsAtLeast is a trafficUntil condition: generation n was stored.
func generationsAtLeast(n int64) func(map[int64]*keystore.KeySet) bool {
	return func(seen map[int64]*keystore.KeySet) bool { return seen[n] != nil }
}

func testKeepsRefreshToken(t *testing.T) {
	t.Parallel()
	auth, _, sc, dir, seed := profileSidecar(t, authserver.Google())
	seen := trafficUntil(t, sc, dir, generationsAtLeast(2+profileRotations))
	for gen, ks := range seen {
		if ks.Token.RefreshToken() != seed {
			t.Errorf("generation %d holds another refresh token than the seed; want the seed kept", gen)
		}
		if gen > 1 {
			if _, sent := ks.Token[keystore.FieldRefreshToken]; !sent || ks.Token.AccessToken() == "" {
				t.Errorf("generation %d: refresh token merged %t, access token %t; want both", gen, sent, ks.Token.AccessToken() != "")
			}
		}
	}
	checkOneGrantPerGeneration(t, auth, dir)
}

func testNoExpiresIn(t *testing.T) {
	t.Parallel()
	auth, api, sc, dir, _ := profileSidecar(t, authserver.Profile{OmitExpiresIn: true})
	seen := trafficUntil(t, sc, dir, generationsAtLeast(2+profileRotations))
	for gen, ks := range seen {
		if !ks.Expiry.IsZero() {
			t.Errorf("generation %d has expiry %v; want none (the provider sent no expires_in)", gen, ks.Expiry)
		}
	}
	// Only a 401 can have caused a refresh after the first grant: one 401
	// (one replay) per refresh, each a whole token lifetime after the last.
	entries, err := sc.Entries()
	if err != nil {
		t.Fatal(err)
	}
	grants := loggedGrants(t, entries)
	refreshes := len(grants) - 1
	if got := api.Unauthorized(); got != refreshes {
		t.Errorf("resource server answered 401 %d times; want %d, one per refresh", got, refreshes)
	}
	if got := sidecar.Count(entries, sidecar.MsgReplaying); got != refreshes {
		t.Errorf("sidecar replayed %d requests; want %d, one per refresh", got, refreshes)
	}
	// fosite rounds the token's expiry to the second: it lives at least
	// its lifespan less half a second.
	for k := 1; k < len(grants); k++ {
		if gap := grants[k].started.Sub(grants[k-1].started); gap < tokenLifespan-500*time.Millisecond {
			t.Errorf("refresh %d came %s after the previous grant; want no refresh before the token dies (%s)", k, gap, tokenLifespan)
		}
	}
	checkOneGrantPerGeneration(t, auth, dir)
}

func testRotationEveryGrant(t *testing.T) {
	t.Parallel()
	auth, _, sc, dir, seed := profileSidecar(t, authserver.Microsoft())
	seen := trafficUntil(t, sc, dir, generationsAtLeast(2+profileRotations))
	tokens := map[string]int64{seed: 1}
	for gen, ks := range seen {
		if gen == 1 {
			continue
		}
		if other, dup := tokens[ks.Token.RefreshToken()]; dup {
			t.Errorf("generations %d and %d hold the same refresh token; want a new one every grant", other, gen)
		}
		tokens[ks.Token.RefreshToken()] = gen
	}
	entries, err := sc.Entries()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Msg == sidecar.MsgRefreshed && !e.Bool("refresh_token_rotated") {
			t.Errorf("generation %d logged refresh_token_rotated false; want true", e.Int("generation"))
		}
	}
	checkOneGrantPerGeneration(t, auth, dir)
}

// checkOneGrantPerGeneration checks that every grant succeeded, was stored
// as one generation, and that no refresh token was spent twice.
func checkOneGrantPerGeneration(t *testing.T, auth *authserver.Server, dir string) {
	t.Helper()
	ks, _ := readKeySet(t, dir, keySetName)
	if auth.GrantAttempts() != auth.Grants() || int64(auth.Grants()) != ks.Generation-1 {
		t.Errorf("grant attempts %d, grants %d, stored generation %d; want attempts = grants = generation-1",
			auth.GrantAttempts(), auth.Grants(), ks.Generation)
	}
	if got := auth.ReuseDetections(); got != 0 {
		t.Errorf("reuse detections = %d; want 0", got)
	}
}

// Salesforce: the API's host comes in the token response (instance_url),
// used as the upstream through the .hostport placeholder. When the provider
// moves the org to another instance, the next token names it, and the
// replay after the 401 already goes there.
func testInstanceURL(t *testing.T) {
	t.Parallel()
	auth := newAuthServer(t, authserver.Config{})
	first, second := newResourceServer(t, auth), newResourceServer(t, auth)
	auth.SetProfile(authserver.Salesforce(first.URL()))
	dir, ksOption := fileKeystore(t)
	seed := seedToken(t, auth)
	sc := startSidecar(t, spec{auth: auth, upstream: instanceURLUpstream, keystore: ksOption, seed: seed})
	c := newClient(t, 2)
	for range 3 {
		if r := get(c, sc.URL()+"/sobjects"); r.status != http.StatusOK {
			t.Fatalf("request: %s; want 200", r)
		}
	}
	if got := first.Requests(); got != 3 {
		t.Fatalf("instance %s got %d requests; want 3", first.URL(), got)
	}

	// The org moves; its current token dies with its lifetime, and the
	// refresh that the 401 causes names the new instance.
	auth.SetProfile(authserver.Salesforce(second.URL()))
	waitFor(t, profileTimeout, "traffic moving to the new instance", func() bool {
		if r := get(c, sc.URL()+"/sobjects"); r.status != http.StatusOK {
			t.Fatalf("request: %s; want 200", r)
		}
		return second.Requests() > 0
	})
	moved := first.Requests()
	for range 3 {
		if r := get(c, sc.URL()+"/sobjects"); r.status != http.StatusOK {
			t.Fatalf("request after the move: %s; want 200", r)
		}
	}
	if got := first.Requests(); got != moved {
		t.Errorf("old instance got %d requests after the move; want none", got-moved)
	}
	if got := first.Unauthorized(); got != 1 {
		t.Errorf("old instance answered 401 %d times; want 1 (the expired token, replayed to the new instance)", got)
	}
	if got, want := second.Requests(), 4; got != want {
		t.Errorf("new instance got %d requests; want %d (the replay and 3 more)", got, want)
	}
	ks, _ := readKeySet(t, dir, keySetName)
	if got := ks.Token.String("instance_url"); got != second.URL() {
		t.Errorf("stored instance_url %q; want %q", got, second.URL())
	}
	if ks.Token.RefreshToken() != seed || !ks.Expiry.IsZero() {
		t.Errorf("stored key set: refresh token kept %t, expiry %v; want the seed kept and no expiry", ks.Token.RefreshToken() == seed, ks.Expiry)
	}
	checkOneGrantPerGeneration(t, auth, dir)
}
