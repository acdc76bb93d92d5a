package integration_test

import (
	"context"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
)

// Bounds of the replica scenarios.
const (
	replicaCount = 3
	// replicaClients are concurrent client loops spread over the replicas,
	// each pausing thinkMin to thinkMax between requests (about 300
	// requests/s in all: what two cores sustain under -race).
	replicaClients = 300
	thinkMin       = 500 * time.Millisecond
	thinkMax       = 1500 * time.Millisecond
	// replicaGrantLag bounds how late a cluster refresh may start after its
	// due time: requests reach some replica every few milliseconds, but
	// 300 clients, three sidecars, Redis and the -race servers share two
	// cores, and the refresh lock and reads go through Redis.
	replicaGrantLag = 600 * time.Millisecond
)

// Issue 4: three sidecars share one Redis keystore against the rotating
// provider with reuse detection. 300 concurrent clients over ten token
// lifetimes: every request 200, one grant per expiry for the whole cluster
// (the others adopt the stored key set: invariant 4 per cluster), no reuse.
func TestReplicasShareOneRedisKeystore(t *testing.T) {
	rd := startRedis(t, false)
	auth := newAuthServer(t, authserver.Config{})
	api := newResourceServer(t, auth)
	replicas := startReplicas(t, auth, api.URL(), rd, seedToken(t, auth))

	var results tally
	perReplica := make([]tally, replicaCount)
	ctx, cancel := context.WithTimeout(t.Context(), steadyRun)
	defer cancel()
	c := newClient(t, replicaClients)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range replicaClients {
		sc := replicas[i%replicaCount]
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), uint64(start.UnixNano())))
			// Spread the first requests over the first think time.
			think := time.NewTimer(time.Duration(rng.Int64N(int64(thinkMax))))
			defer think.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-think.C:
				}
				r := get(c, sc.URL()+"/replica")
				results.add(r)
				perReplica[i%replicaCount].add(r)
				think.Reset(thinkMin + time.Duration(rng.Int64N(int64(thinkMax-thinkMin))))
			}
		})
	}
	wg.Wait()
	end := time.Now()
	if ok, summary := results.allOK(); !ok {
		t.Errorf("traffic over %d replicas: %s; want every request 200", replicaCount, summary)
	}
	for i := range perReplica {
		t.Logf("replica %d: %d requests", i+1, perReplica[i].count())
	}

	grants := clusterGrants(t, replicas)
	checkGrantsMatchExpiries(t, grants, end, replicaGrantLag)
	ks := rd.keySet(t, rd.store(t))
	t.Logf("%d requests over %s: grants %d (attempts %d), stored generation %d, reuse detections %d, 401s replayed %d",
		results.count(), end.Sub(start).Round(time.Millisecond), auth.Grants(), auth.GrantAttempts(), ks.Generation, auth.ReuseDetections(), api.Unauthorized())
	if auth.Grants() != len(grants) || auth.GrantAttempts() != len(grants) || int64(len(grants)) != ks.Generation-1 {
		t.Errorf("grants %d, attempts %d, logged by the replicas %d, stored generation %d; want all equal (generation-1)",
			auth.Grants(), auth.GrantAttempts(), len(grants), ks.Generation)
	}
	if got := auth.ReuseDetections(); got != 0 {
		t.Errorf("reuse detections = %d; want 0", got)
	}
	granted := map[string]bool{}
	for _, sc := range replicas {
		entries, err := sc.Entries()
		if err != nil {
			t.Fatal(err)
		}
		if sidecar.Count(entries, sidecar.MsgRefreshing) > 0 {
			granted[sc.Addr] = true
		}
	}
	t.Logf("replicas that made grants: %d of %d", len(granted), replicaCount)
}

// startReplicas starts replicaCount sidecars sharing rd, all configured
// with the same seed, as one Deployment's pods would be.
func startReplicas(t *testing.T, auth *authserver.Server, apiURL string, rd *redisServer, seed string) []*sidecar.Process {
	t.Helper()
	var replicas []*sidecar.Process
	for range replicaCount {
		replicas = append(replicas, startSidecar(t, spec{
			auth: auth, upstream: hostport(apiURL), keystore: rd.keystoreOption(), seed: seed,
			options: []string{"expiry_skew " + expirySkew.String()},
		}))
	}
	return replicas
}

// clusterGrants merges the grants that the replicas logged, in time order.
func clusterGrants(t *testing.T, replicas []*sidecar.Process) []grant {
	t.Helper()
	var all []sidecar.Entry
	for _, sc := range replicas {
		entries, err := sc.Entries()
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, entries...)
	}
	slices.SortStableFunc(all, func(a, b sidecar.Entry) int { return a.At.Compare(b.At) })
	return loggedGrants(t, all)
}

// Issue 4, Redis outage: Redis is killed mid-run. Requests that need a
// grant get 503 with Retry-After (the others keep the valid token), no key
// set is lost (Redis's append-only file, fsynced on every write, survives
// the kill), and traffic recovers by itself when Redis is back on the same
// port with its data.
func TestReplicasRideOutRedisOutage(t *testing.T) {
	rd := startRedis(t, true)
	auth := newAuthServer(t, authserver.Config{})
	api := newResourceServer(t, auth)
	replicas := startReplicas(t, auth, api.URL(), rd, seedToken(t, auth))
	store := rd.store(t)
	c := newClient(t, replicaCount)

	next := 0
	roundRobin := func() (int, response) {
		i := next % replicaCount
		next++
		return i, get(c, replicas[i].URL()+"/outage")
	}
	// Two rotations before the outage.
	waitFor(t, rotationTimeout, "two rotations before the outage", func() bool {
		if _, r := roundRobin(); r.status != http.StatusOK {
			t.Fatalf("request before the outage: %s; want 200", r)
		}
		ks, err := store.Load(t.Context(), keySetName)
		return err == nil && ks.Generation >= 3
	})
	before := rd.keySet(t, store)
	rd.kill(t)
	down := time.Now()

	var during tally
	unavailable := map[int]bool{}
	waitFor(t, time.Until(before.Expiry)+10*time.Second, "every replica answering 503 while Redis is down", func() bool {
		i, r := roundRobin()
		during.add(r)
		switch r.status {
		case http.StatusOK:
		case http.StatusServiceUnavailable:
			checkUnavailable(t, r, "keystore_unavailable")
			unavailable[i] = true
		default:
			t.Fatalf("replica %d during the outage: %s; want 200 or 503", i+1, r)
		}
		return len(unavailable) == replicaCount
	})
	rd.start(t)
	back := time.Now()

	var after tally
	recovered := map[int]bool{}
	waitFor(t, recoveryTimeout, "every replica answering 200 after Redis is back", func() bool {
		i, r := roundRobin()
		after.add(r)
		switch r.status {
		case http.StatusOK:
			recovered[i] = true
		case http.StatusServiceUnavailable:
			checkUnavailable(t, r, "keystore_unavailable")
		default:
			t.Fatalf("replica %d after the outage: %s; want 200 or 503", i+1, r)
		}
		return len(recovered) == replicaCount
	})
	final := rd.keySet(t, store)
	t.Logf("Redis down %s: %v; after it came back: %v, all replicas recovered within %s; generation %d before, %d after; grants %d (attempts %d), reuse detections %d",
		back.Sub(down).Round(time.Millisecond), during.byStatus, after.byStatus, time.Since(back).Round(time.Millisecond),
		before.Generation, final.Generation, auth.Grants(), auth.GrantAttempts(), auth.ReuseDetections())
	if final.Generation <= before.Generation {
		t.Errorf("generation after recovery %d; want more than %d (stored before the outage, then a refresh)", final.Generation, before.Generation)
	}
	if int64(auth.Grants()) != final.Generation-1 || auth.GrantAttempts() != auth.Grants() {
		t.Errorf("grants %d, attempts %d, stored generation %d; want every grant stored (generation-1) and no failed grant",
			auth.Grants(), auth.GrantAttempts(), final.Generation)
	}
	if got := auth.ReuseDetections(); got != 0 {
		t.Errorf("reuse detections = %d; want 0", got)
	}
}
