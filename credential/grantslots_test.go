package credential

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// inFlightCounter counts the token requests in flight, and the most seen,
// and holds those that spend refresh token rt-0 until gate is closed.
type inFlightCounter struct {
	base          http.RoundTripper
	gate          chan struct{}
	opened        sync.Once
	now, mostSeen atomic.Int64
}

func (c *inFlightCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	n := c.now.Add(1)
	defer c.now.Add(-1)
	for {
		most := c.mostSeen.Load()
		if n <= most || c.mostSeen.CompareAndSwap(most, n) {
			break
		}
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, err
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	if form, _ := url.ParseQuery(string(body)); form.Get("refresh_token") == "rt-0" {
		<-c.gate
	}
	return c.base.RoundTrip(r)
}

// newHerdEngine is an engine with limit grant slots over key sets
// herd-0..herd-<n-1>, whose tokens expire at expiry, all refreshable with
// refresh token rt-0, whose grants wait for the counter's gate. A grant
// with refresh token rt-urgent does not wait.
func newHerdEngine(t *testing.T, clock *credentialtest.Clock, n, limit int, expiry time.Time) (*Engine, *inFlightCounter) {
	t.Helper()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	te.Rotate = false
	te.Respond = func(w http.ResponseWriter, r *http.Request) bool {
		if r.FormValue("refresh_token") != "rt-urgent" {
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"access_token":"at-urgent","token_type":"Bearer","expires_in":3600}`)
		return true
	}
	store := newFileStore(t, t.TempDir())
	client := &keystore.Binding{TokenURL: te.URL(), ClientID: "client-1"} // the engine's, below
	for i := range n {
		storeKeySet(t, store, boundTo(testKeySet(fmt.Sprintf("herd-%d", i), 1, "at-0", "rt-0", expiry), client))
	}
	counter := &inFlightCounter{base: http.DefaultTransport, gate: make(chan struct{})}
	e := New(store, Config{
		Endpoint:            TokenEndpoint{URL: te.URL(), ClientID: "client-1", Transport: counter},
		MaxConcurrentGrants: limit,
		Skew:                30 * time.Second,
		Now:                 clock.Now,
		CheckInterval:       time.Hour,
	})
	t.Cleanup(e.Close)
	t.Cleanup(counter.open) // before Close: no grant stays held
	return e, counter
}

// open lets the held grants go.
func (c *inFlightCounter) open() { c.opened.Do(func() { close(c.gate) }) }

// Forty key sets whose tokens have all expired: the requests that need them
// all get a token, and the token endpoint never sees more grants at once
// than max_concurrent_grants.
func TestMaxConcurrentGrants(t *testing.T) {
	t.Parallel()
	clock := credentialtest.NewClock()
	e, counter := newHerdEngine(t, clock, 40, 3, clock.Now().Add(-time.Minute))
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Go(func() {
			if _, err := e.Current(context.Background(), fmt.Sprintf("herd-%d", i)); err != nil {
				errs <- err
			}
		})
	}
	credentialtest.Eventually(t, "three grants in flight", func() bool { return counter.now.Load() == 3 })
	counter.open()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Current() = %v", err)
	}
	if got := counter.mostSeen.Load(); got != 3 {
		t.Errorf("most grants in flight = %d; want 3 (max_concurrent_grants)", got)
	}
}

// startHerd makes the requests that start the proactive refreshes of key
// sets herd-0..herd-<n-1>, which the counter holds.
func startHerd(t *testing.T, e *Engine, n int) {
	t.Helper()
	for i := range n {
		if _, err := e.Current(context.Background(), fmt.Sprintf("herd-%d", i)); err != nil {
			t.Fatalf("Current() = %v; want the still-valid token", err)
		}
	}
}

// awaitCurrent fails the test unless Current(name) returns the urgent
// token before the held grants are let go.
func awaitCurrent(t *testing.T, e *Engine, name string) {
	t.Helper()
	got := make(chan error, 1)
	go func() {
		cred, err := e.Current(context.Background(), name)
		if err == nil && cred.Header != "Bearer at-urgent" {
			err = fmt.Errorf("header %q; want Bearer at-urgent", cred.Header)
		}
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("Current(%q) = %v", name, err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("Current(%q) waited behind the held proactive grants", name)
	}
}

// Proactive refreshes take at most three quarters of the slots: a request
// whose token has expired is not queued behind a backlog of them.
func TestUrgentGrantNotQueuedBehindProactive(t *testing.T) {
	t.Parallel()
	clock := credentialtest.NewClock()
	// Every token expires in 10 s: within the 30 s skew, still valid.
	e, counter := newHerdEngine(t, clock, 20, 4, clock.Now().Add(10*time.Second))
	storeKeySet(t, e.Store(), ownedBy(e, testKeySet("expired", 1, "at-0", "rt-urgent", clock.Now().Add(-time.Second))))
	startHerd(t, e, 20)
	credentialtest.Eventually(t, "three proactive grants in flight", func() bool { return counter.now.Load() == 3 })
	awaitCurrent(t, e, "expired")
	if got := counter.mostSeen.Load(); got != 4 {
		t.Errorf("most grants in flight = %d; want 4", got)
	}
}

// A proactive refresh still queued for a slot when its token expires is
// promoted by the request that comes to wait for it.
func TestQueuedProactiveGrantPromoted(t *testing.T) {
	t.Parallel()
	clock := credentialtest.NewClock()
	e, counter := newHerdEngine(t, clock, 20, 4, clock.Now().Add(10*time.Second))
	storeKeySet(t, e.Store(), ownedBy(e, testKeySet("late", 1, "at-0", "rt-urgent", clock.Now().Add(10*time.Second))))
	startHerd(t, e, 20)
	credentialtest.Eventually(t, "three proactive grants in flight", func() bool { return counter.now.Load() == 3 })
	// late's proactive refresh queues behind the herd's.
	if _, err := e.Current(context.Background(), "late"); err != nil {
		t.Fatalf("Current(late) = %v; want the still-valid token", err)
	}
	clock.Advance(11 * time.Second) // every token has expired
	awaitCurrent(t, e, "late")
}
