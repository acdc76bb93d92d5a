package integration_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// restarts is how many times the restart scenario stops the sidecar.
const restarts = 3

// rotationTimeout bounds waiting for the next rotation under traffic: one
// refresh interval (at most 2.5s here) and then some.
const rotationTimeout = 10 * time.Second

// msgSeeded is the handler's line when it stores the refresh_token option.
const msgSeeded = "seeded key set from the refresh_token option"

// Scenario 4: the sidecar is stopped (SIGTERM) right after a rotation and
// started again on the same keystore: it goes on with the rotated refresh
// token it stored, never with the seed it was configured with (spending
// that again would be a reuse, and revoke the whole family).
func TestRestartContinuesWithPersistedRotatedToken(t *testing.T) {
	auth := newAuthServer(t, authserver.Config{})
	api := newResourceServer(t, auth)
	dir, ksOption := fileKeystore(t)
	seed := seedToken(t, auth)
	sc := startSidecar(t, spec{
		auth: auth, upstream: hostport(api.URL()), keystore: ksOption, seed: seed,
		options: []string{"expiry_skew " + expirySkew.String()},
	})

	from := int64(1) // the seed's generation
	for i := range restarts + 1 {
		c := newClient(t, 2) // no connection pooled from the previous process
		stored := awaitRotation(t, c, sc, dir, from)
		if got, want := stored.Token.RefreshToken(), lastRefreshToken(auth); got != want {
			t.Fatalf("run %d: the stored refresh token is not the one issued last", i+1)
		}
		if stored.Token.RefreshToken() == seed {
			t.Fatalf("run %d: the stored refresh token is still the seed", i+1)
		}
		if i == restarts {
			break
		}
		if err := sc.Stop(); err != nil {
			t.Fatalf("run %d: SIGTERM: %v", i+1, err)
		}
		if after, _ := readKeySet(t, dir, keySetName); after.Generation != stored.Generation {
			t.Fatalf("run %d: generation %d after the stop; want %d", i+1, after.Generation, stored.Generation)
		}
		t.Logf("run %d: stopped right after the rotation from generation %d to %d", i+1, from, stored.Generation)
		from = stored.Generation
		mustStart(t, sc)
	}

	entries, err := sc.Entries()
	if err != nil {
		t.Fatal(err)
	}
	final, _ := readKeySet(t, dir, keySetName)
	t.Logf("%d restarts: generation %d, grants %d, attempts %d, reuse detections %d",
		restarts, final.Generation, auth.Grants(), auth.GrantAttempts(), auth.ReuseDetections())
	if got := sidecar.Count(entries, msgSeeded); got != 1 {
		t.Errorf("the seed was stored %d times; want once, by the first run", got)
	}
	if got := auth.ReuseDetections(); got != 0 {
		t.Errorf("reuse detections = %d; want 0", got)
	}
	if auth.GrantAttempts() != auth.Grants() || int64(auth.Grants()) != final.Generation-1 {
		t.Errorf("grant attempts %d, grants %d, stored generation %d; want attempts = grants = generation-1",
			auth.GrantAttempts(), auth.Grants(), final.Generation)
	}
}

// awaitRotation sends requests, each answered 200, until the sidecar has
// stored a generation newer than from, and returns that key set.
func awaitRotation(t *testing.T, c *http.Client, sc *sidecar.Process, dir string, from int64) *keystore.KeySet {
	t.Helper()
	var ks *keystore.KeySet
	waitFor(t, rotationTimeout, "a rotation under traffic", func() bool {
		if r := get(c, sc.URL()+"/traffic"); r.status != http.StatusOK {
			t.Fatalf("request: %s; want 200", r)
		}
		ks, _ = readKeySet(t, dir, keySetName)
		return ks.Generation > from
	})
	return ks
}

// lastRefreshToken is the refresh token of the newest grant.
func lastRefreshToken(auth *authserver.Server) string {
	issued := auth.Issued()
	for i := len(issued) - 1; i >= 0; i-- {
		if issued[i].GrantType == authserver.GrantRefreshToken {
			return issued[i].RefreshToken
		}
	}
	return ""
}
