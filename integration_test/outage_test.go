package integration_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
)

// Bounds of the outage scenario.
const (
	outageTokenLifespan = 6 * time.Second
	// outageLoadPeriod is each client's pause between requests; the
	// clients run outageClients at a time.
	outageLoadPeriod = 20 * time.Millisecond
	outageClients    = 4
	// outageRecovery is how soon after the token endpoint answers again the
	// first request must be served: the urgent backoff (at most 1s after
	// the last failure) and a grant, with room for a loaded machine.
	outageRecovery = 1500 * time.Millisecond
	// outageRetryGap bounds the pause between two grant attempts while
	// requests wait on the expired token: the urgent backoff (at most 1s)
	// and the next request's arrival.
	outageRetryGap = 1250 * time.Millisecond
)

// timedResponse is a response and when it arrived.
type timedResponse struct {
	response
	at time.Time
}

// Issue 24, item 4: the token endpoint goes down while the token still
// lives, answering in turn with resets, hangs and 503s, across the token's
// expiry, then comes back. While the token lives every request is served;
// after it expires every failure is a 503 problem with Retry-After; once
// the endpoint answers again the first request is served within about a
// second, not after a backoff that grew through the outage.
func TestOutageRecoversWithinASecond(t *testing.T) {
	t.Parallel()
	auth := newAuthServer(t, authserver.Config{AccessTokenLifespan: outageTokenLifespan})
	api := newResourceServer(t, auth)
	dir, ksOption := fileKeystore(t)
	sc := startSidecar(t, spec{
		auth: auth, upstream: hostport(api.URL()), keystore: ksOption, seed: seedToken(t, auth),
		options: []string{"refresh proactive", "expiry_skew 3s"},
	})
	c := newClient(t, outageClients)
	if r := get(c, sc.URL()+"/before"); r.status != http.StatusOK {
		t.Fatalf("request before the outage: %s; want 200", r)
	}
	ks, _ := readKeySet(t, dir, keySetName)
	expiry := ks.Expiry
	grantsBefore := auth.Grants()

	// Down from now until 9s past the expiry, in phases.
	phases := []struct {
		fault authserver.Fault
		until time.Time
	}{
		{authserver.FaultReset, expiry.Add(-2 * time.Second)},
		{authserver.FaultHang, expiry},
		{authserver.FaultUnavailable, expiry.Add(3 * time.Second)},
		{authserver.FaultReset, expiry.Add(6 * time.Second)},
		{authserver.FaultUnavailable, expiry.Add(9 * time.Second)},
	}
	stop := make(chan struct{})
	var load sync.WaitGroup
	var mu sync.Mutex // guards got
	var got []timedResponse
	for range outageClients {
		load.Go(func() {
			tick := time.NewTicker(outageLoadPeriod)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				r := get(c, sc.URL()+"/outage")
				mu.Lock()
				got = append(got, timedResponse{r, time.Now()})
				mu.Unlock()
			}
		})
	}
	down := time.Now()
	for _, p := range phases {
		auth.SetOutage(p.fault)
		if !sleepUntil(t, p.until) {
			break
		}
	}
	auth.SetOutage(0)
	back := time.Now()
	// Run on for the bound and a second more, then stop the load.
	sleepUntil(t, back.Add(outageRecovery+time.Second))
	close(stop)
	load.Wait()

	var before, during, after tally
	var firstOK time.Time
	for _, r := range got {
		switch {
		case r.at.Before(expiry.Add(-minTokenLife)):
			before.add(r.response)
			if r.status != http.StatusOK {
				t.Errorf("request at %s, while the token lived: %s; want 200", r.at.Format(time.StampMilli), r.response)
			}
		case r.at.Before(back):
			during.add(r.response)
		default:
			after.add(r.response)
			if r.status == http.StatusOK && firstOK.IsZero() {
				firstOK = r.at
			}
		}
		if r.status != http.StatusOK {
			checkUnavailable(t, r.response, "token_endpoint_unavailable")
		}
	}
	t.Logf("outage %s..%s (expiry %s): while the token lived %v; after its expiry %v; after the endpoint came back %v",
		down.Format(time.StampMilli), back.Format(time.StampMilli),
		expiry.Format(time.StampMilli), before.byStatus, during.byStatus, after.byStatus)
	if firstOK.IsZero() {
		t.Fatalf("no request served within %s after the token endpoint came back", outageRecovery+time.Second)
	}
	recovered := firstOK.Sub(back)
	t.Logf("first 200 %s after the token endpoint answered again", recovered.Round(time.Millisecond))
	if recovered > outageRecovery {
		t.Errorf("first 200 %s after the token endpoint came back; want within %s", recovered.Round(time.Millisecond), outageRecovery)
	}
	checkUrgentRetries(t, auth.OutageRequests(), expiry, back)
	if during.count() == 0 {
		t.Errorf("no request between the expiry and the endpoint's return: the scenario did not cross the expiry")
	}
	if g := auth.Grants() - grantsBefore; g < 1 || g > 2 {
		t.Errorf("grants after the outage = %d; want 1 or 2 (one per lifetime since)", g)
	}
	if n := auth.ReuseDetections(); n != 0 {
		t.Errorf("reuse detections = %d; want 0", n)
	}
}

// checkUrgentRetries checks that, from the token's expiry until the
// endpoint came back, with requests waiting, grant attempts came at most
// outageRetryGap apart, however many had failed before.
func checkUrgentRetries(t *testing.T, attempts []time.Time, expiry, back time.Time) {
	t.Helper()
	last := expiry
	var widest time.Duration
	for _, at := range append(attempts, back) {
		if at.Before(expiry) {
			continue
		}
		widest = max(widest, at.Sub(last))
		last = at
	}
	t.Logf("grant attempts during the outage: %d; widest gap after the expiry %s", len(attempts), widest.Round(time.Millisecond))
	if widest > outageRetryGap {
		t.Errorf("grant attempts after the token expired came up to %s apart; want at most %s (the urgent backoff)", widest.Round(time.Millisecond), outageRetryGap)
	}
}

// sleepUntil waits until deadline or the test's end, and reports whether
// the deadline came.
func sleepUntil(t *testing.T, deadline time.Time) bool {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-t.Context().Done():
		return false
	}
}
