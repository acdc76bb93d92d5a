package integration_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
)

// stormSize is how many requests arrive at once.
const stormSize = 200

// stormLifespan is longer than tokenLifespan so that the storm's 200
// requests, however slowly a loaded machine serves them, finish well before
// the new token is due for refresh: the one grant is then the whole story.
const stormLifespan = 6 * time.Second

// Scenario 3: 200 concurrent requests crossing one expiry are all answered
// 200, with exactly one grant and no reuse detection (invariant 4). Two ways
// to cross it: a proactive sidecar that knows its token has expired (every
// request waits for the one grant), and a reactive one whose token the
// provider already refuses while the sidecar cannot know it (no expires_in:
// a storm of 401s, each replayed after the one grant).
func TestStormCrossingOneExpiry(t *testing.T) {
	tests := []struct {
		name    string
		mode    string
		profile authserver.Profile
	}{
		{name: "proactive, token past its expiry", mode: "proactive", profile: authserver.Microsoft()},
		{name: "reactive without expires_in, a storm of 401s", mode: "reactive", profile: authserver.Profile{OmitExpiresIn: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			auth := newAuthServer(t, authserver.Config{AccessTokenLifespan: stormLifespan, Profile: tt.profile})
			api := newResourceServer(t, auth)
			dir, ksOption := fileKeystore(t)
			sc := startSidecar(t, spec{
				auth: auth, upstream: hostport(api.URL()), keystore: ksOption, seed: seedToken(t, auth),
				options: []string{"refresh " + tt.mode, "expiry_skew " + expirySkew.String()},
			})
			c := newClient(t, stormSize)
			if r := get(c, sc.URL()+"/warm-up"); r.status != http.StatusOK {
				t.Fatalf("warm-up request: %s; want 200", r)
			}
			ks, _ := readKeySet(t, dir, keySetName)
			if tt.mode == "proactive" {
				waitFor(t, stormLifespan+time.Second, "the sidecar's token expiry", func() bool { return time.Now().After(ks.Expiry) })
			} else {
				waitFor(t, stormLifespan+2*time.Second, "the provider's token expiry", func() bool { return !introspect(t, auth, ks.Token.AccessToken()) })
			}
			grants, attempts, unauthorized := auth.Grants(), auth.GrantAttempts(), api.Unauthorized()

			results := storm(c, sc.URL()+"/storm", stormSize)
			if ok, summary := results.allOK(); !ok || results.count() != stormSize {
				t.Errorf("storm: %s; want %d answered 200", summary, stormSize)
			}
			rejected := api.Unauthorized() - unauthorized
			entries, err := sc.Entries()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("storm of %d: grants %d, attempts %d, reuse detections %d, 401s %d, replays %d",
				stormSize, auth.Grants()-grants, auth.GrantAttempts()-attempts, auth.ReuseDetections(), rejected, sidecar.Count(entries, sidecar.MsgReplaying))
			if got := auth.Grants() - grants; got != 1 {
				t.Errorf("grants during the storm = %d; want 1", got)
			}
			if got := auth.GrantAttempts() - attempts; got != 1 {
				t.Errorf("grant attempts during the storm = %d; want 1", got)
			}
			if got := auth.ReuseDetections(); got != 0 {
				t.Errorf("reuse detections = %d; want 0", got)
			}
			if after, _ := readKeySet(t, dir, keySetName); after.Generation != ks.Generation+1 {
				t.Errorf("stored generation after the storm = %d; want %d", after.Generation, ks.Generation+1)
			}
			if replays := sidecar.Count(entries, sidecar.MsgReplaying); replays != rejected {
				t.Errorf("sidecar replayed %d requests; want one per 401 (%d)", replays, rejected)
			}
			if tt.mode == "reactive" && rejected == 0 {
				t.Errorf("no request met the expired token; the storm crossed no expiry")
			}
		})
	}
}

// storm sends n GET requests at once and tallies the answers.
func storm(c *http.Client, url string, n int) *tally {
	var (
		results tally
		wg      sync.WaitGroup
		start   = make(chan struct{})
	)
	for range n {
		wg.Go(func() {
			<-start
			results.add(get(c, url))
		})
	}
	close(start)
	wg.Wait()
	return &results
}
