package integration_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
)

// Bounds of the token endpoint fault scenario.
const (
	// faultRate is the requests per second sent to the replicas in all.
	faultRate = 550
	// faultMaxInFlight caps the requests outstanding at once.
	faultMaxInFlight = 300
	// faultRun spans ten token lifespans: 33,000 requests at faultRate,
	// some eighteen refreshes.
	faultRun = 10 * faultTokenLifespan
	// faultMinRequests and faultMinLifetimes are what the run must reach.
	faultMinRequests  = 30000
	faultMinLifetimes = 10
	// faultTokenLifespan is announced as expires_in 5 or 6 (fosite rounds
	// down), and faultSkew is half of 5s, the most a proactive skew can
	// be: each token is refreshed 2.5s to 3.5s after its grant and is
	// still valid for about 2.5s after that, time for a failed refresh to
	// be retried after its backoff (at most 1s after a first failure).
	faultTokenLifespan = 6 * time.Second
	faultSkew          = 2500 * time.Millisecond
	// faultMinRetryGap is the shortest backoff after a first failure: the
	// engine's 1s, of which equal jitter keeps half.
	faultMinRetryGap = 500 * time.Millisecond
)

// plannedFault arms faults once the authorization server has made
// afterGrants successful grants: the next token requests are then the
// proactive refreshes of a token that is still valid.
type plannedFault struct {
	afterGrants int
	faults      []authserver.Fault
}

// faultPlan first fails three refresh attempts in a row, one of each kind:
// the replicas, all due, make them within milliseconds, one each, so that
// the grant comes from a retry after a backoff. Then it fails one attempt
// alone every other grant, the kinds in turn, about one token request in
// four: another replica makes the grant while the one that failed backs
// off, and the grant revokes the access token the failed replica is still
// sending (fosite revokes the previous access token on every refresh).
var faultPlan = func() []plannedFault {
	plan := []plannedFault{{afterGrants: 2, faults: []authserver.Fault{authserver.FaultInvalidRequest, authserver.FaultUnavailable, authserver.FaultReset}}}
	kinds := []authserver.Fault{authserver.FaultInvalidRequest, authserver.FaultUnavailable, authserver.FaultReset}
	for i, grants := 0, 4; grants <= 16; i, grants = i+1, grants+2 {
		plan = append(plan, plannedFault{afterGrants: grants, faults: []authserver.Fault{kinds[i%len(kinds)]}})
	}
	return plan
}()

// Invariant 10: a request that the current token can serve is never failed
// because a refresh failed. Three proactive replicas share one Redis
// keystore under an open-loop load of 550 requests/s while the token
// endpoint answers proactive refreshes, each made while the token in use is
// still valid, with Hydra's 400 invalid_request (a storage conflict), a 503
// and a reset connection. Every request is answered 200, and the cluster
// still makes exactly one successful grant per token lifetime, each before
// the token it replaces expires, with no reuse detected.
func TestReplicasRideOutTokenEndpointFaults(t *testing.T) {
	rd := startRedis(t, false)
	auth := newAuthServer(t, authserver.Config{AccessTokenLifespan: faultTokenLifespan})
	api := newResourceServer(t, auth)
	replicas, targets := startFaultReplicas(t, auth, api.URL(), rd, seedToken(t, auth))

	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), faultRun)
	defer cancel()
	var armer sync.WaitGroup
	armer.Go(func() { armFaults(ctx, auth, faultPlan) })
	load := openLoad(ctx, newClient(t, faultMaxInFlight), targets, faultRate, faultMaxInFlight)
	end := time.Now()
	armer.Wait()

	t.Logf("%d requests in %s: %.0f/s sent, %.0f%% of the target %d/s, furthest behind schedule %s; latency p50 %s, p99 %s, max %s",
		load.sent, load.duration.Round(time.Millisecond), load.rate(), 100*load.rate()/faultRate, faultRate,
		load.maxBehind.Round(time.Millisecond), load.percentile(0.50).Round(time.Microsecond),
		load.percentile(0.99).Round(time.Microsecond), load.percentile(1).Round(time.Microsecond))
	for i := range load.perTarget {
		t.Logf("replica %d: %d requests", i+1, load.perTarget[i].count())
	}
	if load.sent < faultMinRequests {
		t.Errorf("%d requests sent; want at least %d", load.sent, faultMinRequests)
	}
	if ok, summary := load.results.allOK(); !ok {
		t.Errorf("traffic over %d replicas with token endpoint faults: %s; want every request 200", replicaCount, summary)
		for _, line := range load.failureSummary() {
			t.Log(line)
		}
		logRefreshTimeline(t, replicas)
	}
	injected := checkInjectedFaults(t, auth)
	lifetimes := clusterLifetimes(t, replicas)
	checkFaultsHitValidTokens(t, lifetimes, injected)
	grants := checkOneGrantPerLifetime(t, lifetimes, end, replicaGrantLag)
	if crossed := end.Sub(start); crossed < faultMinLifetimes*faultTokenLifespan {
		t.Errorf("traffic ran %s; want at least %d token lifespans (%s)", crossed.Round(time.Millisecond), faultMinLifetimes, faultMinLifetimes*faultTokenLifespan)
	}
	checkGrantFigures(t, rd, auth, lifetimes, grants, len(injected))
	t.Logf("401s from the resource server (old token revoked by another replica's grant, replayed): %d", api.Unauthorized())
}

// startFaultReplicas starts replicaCount proactive sidecars sharing rd and
// returns them with the URL each is sent requests on.
func startFaultReplicas(t *testing.T, auth *authserver.Server, apiURL string, rd *redisServer, seed string) ([]*sidecar.Process, []string) {
	t.Helper()
	var replicas []*sidecar.Process
	var targets []string
	for range replicaCount {
		sc := startSidecar(t, spec{
			auth: auth, upstream: hostport(apiURL), keystore: rd.keystoreOption(), seed: seed,
			options: []string{"refresh proactive", "expiry_skew " + faultSkew.String()},
		})
		replicas = append(replicas, sc)
		targets = append(targets, sc.URL()+"/faults")
	}
	return replicas, targets
}

// checkInjectedFaults checks that the token endpoint answered every fault
// of faultPlan, and returns them.
func checkInjectedFaults(t *testing.T, auth *authserver.Server) []authserver.InjectedFault {
	t.Helper()
	injected := auth.InjectedFaults()
	got, want := map[authserver.Fault]int{}, map[authserver.Fault]int{}
	for _, f := range injected {
		got[f.Fault]++
	}
	for _, p := range faultPlan {
		for _, f := range p.faults {
			want[f]++
		}
	}
	t.Logf("faults injected: %d (%s %d, %s %d, %s %d), still armed %d", len(injected),
		authserver.FaultInvalidRequest, got[authserver.FaultInvalidRequest], authserver.FaultUnavailable,
		got[authserver.FaultUnavailable], authserver.FaultReset, got[authserver.FaultReset], auth.ArmedFaults())
	for f, n := range want {
		if got[f] != n {
			t.Errorf("fault %s injected %d times; want %d", f, got[f], n)
		}
	}
	return injected
}

// armFaults arms each planned fault once the authorization server has made
// its number of grants, until ctx ends.
func armFaults(ctx context.Context, auth *authserver.Server, plan []plannedFault) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for _, p := range plan {
		for auth.Grants() < p.afterGrants {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
		for _, f := range p.faults {
			auth.InjectFaults(f, 1)
		}
	}
}

// tokenLifetime is one generation of the key set, as the replicas logged it.
type tokenLifetime struct {
	generation int64
	granted    time.Time // "refreshed key set" of this generation; zero for the seed
	expiry     time.Time
	attempts   []refreshAttempt // "refreshing key set": grants that were to replace it
	failures   []sidecar.Entry
	replaced   time.Time // "refreshed key set" of the next generation; zero while in use
}

// refreshAttempt is one "refreshing key set" line.
type refreshAttempt struct {
	replica int
	at      time.Time
}

// due is the window in which the replicas start refreshing it (see
// refreshWindow).
func (lt *tokenLifetime) due(skew time.Duration) (earliest, latest time.Time) {
	return refreshWindow(lt.granted, lt.expiry, skew)
}

// clusterLifetimes merges the replicas' logs into the key set's
// generations, oldest first.
func clusterLifetimes(t *testing.T, replicas []*sidecar.Process) []*tokenLifetime {
	t.Helper()
	byGeneration := map[int64]*tokenLifetime{}
	lifetime := func(gen int64) *tokenLifetime {
		if byGeneration[gen] == nil {
			byGeneration[gen] = &tokenLifetime{generation: gen}
		}
		return byGeneration[gen]
	}
	for i, sc := range replicas {
		entries, err := sc.Entries()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			gen := e.Int("generation")
			switch e.Msg {
			case sidecar.MsgRefreshing:
				lifetime(gen).attempts = append(lifetime(gen).attempts, refreshAttempt{replica: i + 1, at: e.At})
			case sidecar.MsgFailed:
				lifetime(gen).failures = append(lifetime(gen).failures, e)
			case sidecar.MsgRefreshed:
				lifetime(gen).granted, lifetime(gen).expiry = e.At, e.Time("expiry")
				if !lifetime(gen - 1).replaced.IsZero() {
					t.Errorf("generation %d was replaced twice", gen-1)
				}
				lifetime(gen - 1).replaced = e.At
			}
		}
	}
	lifetimes := slices.SortedFunc(func(yield func(*tokenLifetime) bool) {
		for _, lt := range byGeneration {
			if !yield(lt) {
				return
			}
		}
	}, func(a, b *tokenLifetime) int { return int(a.generation - b.generation) })
	for _, lt := range lifetimes {
		slices.SortFunc(lt.attempts, func(a, b refreshAttempt) int { return a.at.Compare(b.at) })
	}
	return lifetimes
}

// checkFaultsHitValidTokens checks that every fault answered a proactive
// refresh: made at or after its token was due, and before it expired.
func checkFaultsHitValidTokens(t *testing.T, lifetimes []*tokenLifetime, injected []authserver.InjectedFault) {
	t.Helper()
	for _, f := range injected {
		var inUse *tokenLifetime
		for _, lt := range lifetimes {
			if !lt.granted.IsZero() && !lt.granted.After(f.At) {
				inUse = lt
			}
		}
		if inUse == nil {
			t.Errorf("fault %s at %s hit no token in use", f.Fault, f.At.Format(time.StampMilli))
			continue
		}
		due, _ := inUse.due(faultSkew)
		t.Logf("fault %s on generation %d: %s after it was due, %s before it expired",
			f.Fault, inUse.generation, f.At.Sub(due).Round(time.Millisecond), inUse.expiry.Sub(f.At).Round(time.Millisecond))
		if f.At.Before(due.Add(-clockSlack)) || !f.At.Before(inUse.expiry) {
			t.Errorf("fault %s at %s hit generation %d, due %s, expiring %s; want a proactive refresh of a valid token",
				f.Fault, f.At.Format(time.StampMilli), inUse.generation, due.Format(time.StampMilli), inUse.expiry.Format(time.StampMilli))
		}
	}
}

// checkOneGrantPerLifetime checks that each token was replaced once, by a
// refresh first tried when it was due (not before, not later than lag) and
// finished before it expired, and that the token in use at the end was not
// yet due (or within lag of it). It returns the successful grants.
func checkOneGrantPerLifetime(t *testing.T, lifetimes []*tokenLifetime, end time.Time, lag time.Duration) int {
	t.Helper()
	grants, crossed, maybe := 0, 0, 0
	var periods []string
	for _, lt := range lifetimes {
		if !lt.replaced.IsZero() {
			grants++
		}
		if lt.granted.IsZero() {
			continue // the seed, replaced by the first grant
		}
		if lt.expiry.IsZero() {
			t.Fatalf("generation %d logged no expiry; want one from expires_in", lt.generation)
		}
		earliest, due := lt.due(faultSkew)
		switch {
		case due.Add(lag).Before(end):
			crossed++
		case earliest.Before(end):
			maybe++ // its window was open when traffic ended: a refresh may or may not have come
		}
		if lt.replaced.IsZero() {
			if due.Add(lag).Before(end) {
				t.Errorf("generation %d was due at %s, traffic ran until %s, and no grant replaced it (a missed expiry)",
					lt.generation, due.Format(time.StampMilli), end.Format(time.StampMilli))
			}
			continue
		}
		first := lt.attempts[0].at
		periods = append(periods, fmt.Sprintf("g%d: tried +%s, replaced +%s (attempts by replicas %v)", lt.generation,
			first.Sub(due).Round(time.Millisecond), lt.replaced.Sub(due).Round(time.Millisecond), lt.attemptsBy()))
		checkRetriesBackedOff(t, lt)
		if first.Before(earliest.Add(-clockSlack)) {
			t.Errorf("generation %d: first refresh %s before it could be due (an extra grant)", lt.generation, earliest.Sub(first))
		}
		if first.After(due.Add(lag)) {
			t.Errorf("generation %d: first refresh %s after it was due; want within %s", lt.generation, first.Sub(due), lag)
		}
		if !lt.replaced.Before(lt.expiry) {
			t.Errorf("generation %d: replaced %s after it expired; want while it was valid", lt.generation, lt.replaced.Sub(lt.expiry))
		}
	}
	t.Logf("successful grants %d = 1 (seed) + %d refreshes; token lifetimes crossed by traffic: %d (+%d whose window was open at the end); relative to the ends of their windows: %v",
		grants, grants-1, crossed, maybe, periods)
	if refreshes := grants - 1; refreshes < crossed || refreshes > crossed+maybe {
		t.Errorf("%d refreshes; want %d, one per token lifetime that traffic crossed (+%d whose window was open at the end)", refreshes, crossed, maybe)
	}
	return grants
}

// attemptsBy lists which replica made each attempt, in order.
func (lt *tokenLifetime) attemptsBy() []int {
	var by []int
	for _, a := range lt.attempts {
		by = append(by, a.replica)
	}
	return by
}

// checkRetriesBackedOff checks that no replica tried to replace a token
// again sooner than the backoff after its failed attempt.
func checkRetriesBackedOff(t *testing.T, lt *tokenLifetime) {
	t.Helper()
	last := map[int]time.Time{}
	for _, a := range lt.attempts {
		if prev, ok := last[a.replica]; ok && a.at.Sub(prev) < faultMinRetryGap {
			t.Errorf("generation %d: replica %d tried again %s after its failed attempt; want a backoff of at least %s",
				lt.generation, a.replica, a.at.Sub(prev).Round(time.Millisecond), faultMinRetryGap)
		}
		last[a.replica] = a.at
	}
}

// checkGrantFigures compares the grants the replicas logged with the
// authorization server's counts and the stored generation: every attempt
// either succeeded or met an injected fault.
func checkGrantFigures(t *testing.T, rd *redisServer, auth *authserver.Server, lifetimes []*tokenLifetime, grants, faults int) {
	t.Helper()
	attempts, failures := 0, 0
	for _, lt := range lifetimes {
		attempts += len(lt.attempts)
		failures += len(lt.failures)
		for _, e := range lt.failures {
			if !e.Bool("temporary") {
				t.Errorf("generation %d: refresh failure %q (%s) classified permanent; want temporary", lt.generation, e.String("error"), e.String("error_code"))
			}
		}
	}
	ks := rd.keySet(t, rd.store(t))
	t.Logf("grant attempts by the replicas %d (failed %d), at fosite %d, successful %d; stored generation %d; reuse detections %d",
		attempts, failures, auth.GrantAttempts(), auth.Grants(), ks.Generation, auth.ReuseDetections())
	if auth.Grants() != grants || auth.GrantAttempts() != grants || int64(grants) != ks.Generation-1 {
		t.Errorf("grants logged %d, at fosite %d (attempts %d), stored generation %d; want all equal (generation-1)",
			grants, auth.Grants(), auth.GrantAttempts(), ks.Generation)
	}
	if failures != faults || attempts != grants+faults {
		t.Errorf("replicas logged %d attempts, %d failures; want %d (one per grant and fault), %d (one per fault)",
			attempts, failures, grants+faults, faults)
	}
	if got := auth.ReuseDetections(); got != 0 {
		t.Errorf("reuse detections = %d; want 0", got)
	}
}

// logRefreshTimeline logs, in time order, what the replicas logged about
// refreshes (but not replays), to tell why requests failed.
func logRefreshTimeline(t *testing.T, replicas []*sidecar.Process) {
	t.Helper()
	type line struct {
		replica int
		entry   sidecar.Entry
	}
	var lines []line
	for i, sc := range replicas {
		entries, err := sc.Entries()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Logger == "http.handlers.oauth2_upstream" && e.Msg != sidecar.MsgReplaying {
				lines = append(lines, line{i + 1, e})
			}
		}
	}
	slices.SortStableFunc(lines, func(a, b line) int { return a.entry.At.Compare(b.entry.At) })
	for _, l := range lines {
		t.Logf("replica %d %s %q generation %d %s", l.replica, l.entry.At.Format(time.StampMilli), l.entry.Msg,
			l.entry.Int("generation"), l.entry.String("error"))
	}
}
