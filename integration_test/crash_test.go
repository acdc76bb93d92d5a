package integration_test

import (
	"context"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
)

// Bounds of the crash scenario.
const (
	crashes = 24
	// crashWorkers send requests back to back; with `refresh always` each
	// request makes (or shares) a grant, so refreshes never stop.
	crashWorkers = 4
	// crashWindow: each kill lands at a random moment within it after the
	// traffic started.
	crashWindow = 300 * time.Millisecond
	// probes are the sequential requests that test a restarted sidecar.
	probes = 5
)

// Scenario 5: the sidecar is killed (SIGKILL) at random moments of
// refresh-heavy traffic, 24 times, and started again each time. The key set
// document always decodes: never torn (invariant 5). Each restart either
// serves 200s, one grant per request as `refresh always` asks, or, when the
// kill fell between the provider's rotation and the keystore write (the new
// refresh token died with the process), answers the documented 502
// invalid_grant with exactly one grant attempt, however many requests come
// (no loop of grants). Reseeding the keystore then brings it back without a
// restart.
func TestCrashDuringRefreshesNeverTearsKeySet(t *testing.T) {
	auth := newAuthServer(t, authserver.Config{})
	api := newResourceServer(t, auth)
	dir, ksOption := fileKeystore(t)
	sc := startSidecar(t, spec{
		auth: auth, upstream: hostport(api.URL()), keystore: ksOption, seed: seedToken(t, auth),
		options: []string{"refresh always"},
	})
	if r := get(newClient(t, 1), sc.URL()+"/first"); r.status != http.StatusOK {
		t.Fatalf("first request: %s; want 200", r) // stores the seed, then its successor
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 5))

	served, lost := 0, 0
	for i := range crashes {
		delay := time.Duration(rng.Int64N(int64(crashWindow)))
		grants := crashUnderTraffic(t, auth, sc, delay)
		ks, _ := readKeySet(t, dir, keySetName) // fails the test if torn
		// A grant the dead process sent may still be served (and rotate
		// the token); let it end, or it could race the restart's grants.
		waitFor(t, 10*time.Second, "the dead process's grants to end", func() bool { return auth.TokenRequestsInFlight() == 0 })
		mustStart(t, sc)

		attempts, reuses := auth.GrantAttempts(), auth.ReuseDetections()
		statuses := probe(t, sc)
		attempted, reused := auth.GrantAttempts()-attempts, auth.ReuseDetections()-reuses
		t.Logf("crash %2d after %3dms, %3d grants: generation %d stored; restart answered %v, %d grant attempts, %d reuse detections",
			i+1, delay.Milliseconds(), grants, ks.Generation, statuses, attempted, reused)
		switch statuses[http.StatusOK] {
		case probes:
			served++
			if attempted != probes || reused != 0 {
				t.Errorf("crash %d: restart served 200s with %d grant attempts and %d reuse detections; want %d and 0", i+1, attempted, reused, probes)
			}
		case 0:
			lost++
			if statuses[http.StatusBadGateway] != probes || attempted != 1 || reused != 1 {
				t.Errorf("crash %d: restart answered %v with %d grant attempts, %d reuse detections; want %d × 502, 1 attempt, 1 reuse detection",
					i+1, statuses, attempted, reused, probes)
			}
			reseed(t, auth, sc, dir)
		default:
			t.Errorf("crash %d: restart answered %v; want all 200 or all 502", i+1, statuses)
		}
	}
	t.Logf("%d crashes: %d restarts served 200, %d answered 502 invalid_grant (a rotation lost with the process); grants %d, reuse detections %d",
		crashes, served, lost, auth.Grants(), auth.ReuseDetections())
	if served+lost != crashes {
		t.Errorf("%d restarts served 200 and %d answered 502; want the %d restarts to be one or the other", served, lost, crashes)
	}
}

// crashUnderTraffic runs refresh-heavy traffic, kills the sidecar after
// delay, and returns how many grants the authorization server made meanwhile.
func crashUnderTraffic(t *testing.T, auth *authserver.Server, sc *sidecar.Process, delay time.Duration) int {
	t.Helper()
	grants := auth.Grants()
	c := newClient(t, crashWorkers)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	for range crashWorkers {
		wg.Go(func() {
			for ctx.Err() == nil {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, sc.URL()+"/busy", nil)
				if err != nil {
					return
				}
				_ = do(c, req) // the kill breaks some; only the key set matters
			}
		})
	}
	timer := time.NewTimer(delay)
	<-timer.C
	if err := sc.Kill(); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	cancel()
	wg.Wait()
	return auth.Grants() - grants
}

// probe sends probes sequential requests to a restarted sidecar and counts
// the answers by status; a 502 must be the documented invalid_grant problem.
func probe(t *testing.T, sc *sidecar.Process) map[int]int {
	t.Helper()
	c := newClient(t, 1)
	statuses := map[int]int{}
	for range probes {
		r := get(c, sc.URL()+"/probe")
		if r.err != nil {
			t.Fatalf("probe: %s", r)
		}
		statuses[r.status]++
		if r.status == http.StatusBadGateway {
			if p := r.problem(t); p.OAuthError != "invalid_grant" || p.KeySet != keySetName {
				t.Errorf("502 problem %+v; want invalid_grant for key set %q", p, keySetName)
			}
		}
	}
	return statuses
}

// reseed stores a new generation holding a fresh seed, as an operator would
// after re-consenting, and checks that the running sidecar adopts it: the
// remembered 502 gives way without a restart.
func reseed(t *testing.T, auth *authserver.Server, sc *sidecar.Process, dir string) {
	t.Helper()
	stored, _ := readKeySet(t, dir, keySetName)
	next := &keystore.KeySet{Name: keySetName, Generation: stored.Generation + 1, UpdatedAt: time.Now().UTC(), Token: keystore.Token{},
		Client: stored.Client} // still the sidecar's client: an unbound document would be refused
	next.Token.SetString(keystore.FieldRefreshToken, seedToken(t, auth))
	store, err := file.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Save(t.Context(), next); err != nil {
		t.Fatalf("reseeding: %v", err)
	}
	if r := get(newClient(t, 1), sc.URL()+"/reseeded"); r.status != http.StatusOK {
		t.Fatalf("request after reseeding: %s; want 200", r)
	}
}
