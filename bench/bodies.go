package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// The bodies part: what request bodies cost through the sidecar, with
// zero-copy uploads (zero_copy_min, the default) and with every body kept
// for a replay (zero_copy_min off, the handler before zero-copy), against
// bare reverse_proxy, side by side in fresh servers for each scenario, so
// that each server's peak RSS is that scenario's. An upload also runs
// through bare reverse_proxy that sends it upstream with Expect, the
// control that tells the 100 Continue exchange's own price from the
// handler's.

// Names of the bodies part's servers.
const (
	bodiesZeroCopy   = "caddy-oauth2"
	bodiesKept       = "caddy-oauth2-kept"
	bodiesBareExpect = "caddy-bare-expect"
)

// BodyScenario is one load shape of the bodies part.
type BodyScenario struct {
	Scenario
	// Revoked: the upstream takes each access token for one request, so
	// that every request through a sidecar is rejected, refreshed (a grant
	// at the token endpoint) and replayed, and it checks every byte of
	// every body it reads against what the client sent.
	Revoked bool
}

// DefaultBodyScenarios are issue 26's: GETs at 64 and 1 connection, POSTs
// of 64 KiB, 1 MiB and 16 MiB, an upload the upstream answers without
// reading, and the POSTs through a revocation.
func DefaultBodyScenarios() []BodyScenario {
	post := func(name string, size int64, conns int) BodyScenario {
		return BodyScenario{Scenario: Scenario{Name: name, Request: Request{Method: "POST", Path: "/post", BodySize: size}, Conns: conns}}
	}
	revoked := func(s BodyScenario) BodyScenario {
		s.Name, s.Revoked, s.Conns = s.Name+", revoked", true, 1
		return s
	}
	return []BodyScenario{
		{Scenario: Scenario{Name: "GET 1 KiB", Request: Request{Method: "GET", Path: "/get"}, Conns: 64}},
		{Scenario: Scenario{Name: "GET 1 KiB, 1 conn", Request: Request{Method: "GET", Path: "/get"}, Conns: 1}},
		post("POST 64 KiB", 64<<10, 16),
		post("POST 1 MiB", 1<<20, 16),
		post("POST 16 MiB", 16<<20, 4),
		{Scenario: Scenario{Name: "POST 1.33 MiB unread", Conns: 16,
			Request: Request{Method: "POST", Path: unreadPath, BodySize: 1<<20 + 1<<20/3, EarlyAnswer: true}}},
		revoked(post("POST 64 KiB", 64<<10, 1)),
		revoked(post("POST 1 MiB", 1<<20, 1)),
		revoked(post("POST 16 MiB", 16<<20, 1)),
	}
}

// BodiesResult is one scenario of the bodies part.
type BodiesResult struct {
	Scenario   BodyScenario
	Comparison *Comparison
	PeakRSS    []int64 // VmHWM of each server after the scenario, in Comparison.Targets order
	Grants     []int64 // grants each server's token endpoint made
}

// runBodies runs every body scenario.
func (rep *Report) runBodies(ctx context.Context, env *Env, opt Options, progress io.Writer) error {
	copt := CompareOptions{Rounds: opt.Rounds, Duration: opt.RoundDuration, Warmup: opt.Warmup,
		MaxRequests: opt.MaxRequests, Timeout: requestTimeout, Progress: progress, Rotate: true, ProfileDir: opt.ProfileDir}
	for _, sc := range opt.BodyScenarios {
		fmt.Fprintf(progress, "bodies: %s, %d connections, %d rounds of %s\n", sc.Name, sc.Conns, opt.Rounds, opt.RoundDuration)
		res, err := env.Bodies(ctx, sc, copt)
		if err != nil {
			return fmt.Errorf("bodies, %s: %w", sc.Name, err)
		}
		rep.Bodies = append(rep.Bodies, res)
	}
	return nil
}

// Bodies starts the servers of sc (bare, zero-copy, kept, and for an
// upload without a revocation bare with Expect), compares them, and reads
// their peak RSS.
func (e *Env) Bodies(ctx context.Context, sc BodyScenario, copt CompareOptions) (res *BodiesResult, err error) {
	ts := &Targets{}
	var tokens []*TokenEndpoint
	defer func() {
		ts.Stop()
		for _, te := range tokens {
			te.Close()
		}
	}()
	uopt := UpstreamOptions{TokenOnce: sc.Revoked, Verify: sc.Revoked}
	bare, err := e.startCaddyTargetWith(ctx, "caddy-bare", e.CaddyBin, CaddySpec{}, "", UpstreamOptions{Verify: sc.Revoked})
	if err != nil {
		return nil, err
	}
	ts.List = append(ts.List, bare)
	for _, keep := range []bool{false, true} {
		name, auth := bodiesZeroCopy, "Bearer "+benchAccessToken
		if keep {
			name = bodiesKept
		}
		te, err := StartRotatingTokenEndpoint(benchRefreshToken, benchAccessToken)
		if err != nil {
			return nil, err
		}
		tokens = append(tokens, te)
		keys, err := e.dir(name + "-keystore")
		if err != nil {
			return nil, err
		}
		seeded := benchAccessToken
		if sc.Revoked {
			seeded += "-0" // taken once, by the warm-up's first request
		}
		if err := SeedKeySet(keys, te.URL, seeded, benchRefreshToken, time.Now().Add(24*time.Hour)); err != nil {
			return nil, fmt.Errorf("seeding key set: %w", err)
		}
		oauth := &OAuth2Options{TokenURL: te.URL, KeystoreDir: keys, Refresh: "proactive", KeepBodies: keep, RefreshAnyTime: sc.Revoked}
		t, err := e.startCaddyTargetWith(ctx, name, e.CaddyBin, CaddySpec{OAuth2: oauth}, auth, uopt)
		if err != nil {
			return nil, err
		}
		ts.List = append(ts.List, t)
	}
	if sc.withBareExpect() {
		t, err := e.startCaddyTargetWith(ctx, bodiesBareExpect, e.CaddyBin, CaddySpec{UpstreamExpect: true}, "", UpstreamOptions{})
		if err != nil {
			return nil, err
		}
		ts.List = append(ts.List, t)
	}
	c, err := Compare(ctx, ts.List, sc.Scenario, copt)
	if err != nil {
		return nil, err
	}
	res = &BodiesResult{Scenario: sc, Comparison: c, Grants: []int64{0}}
	for _, t := range ts.List {
		rss, err := t.Proc.PeakRSS()
		if err != nil {
			return nil, err
		}
		res.PeakRSS = append(res.PeakRSS, rss)
	}
	for _, te := range tokens {
		res.Grants = append(res.Grants, te.Grants.Load())
	}
	if sc.withBareExpect() {
		res.Grants = append(res.Grants, 0)
	}
	return res, res.check(ts, tokens)
}

// defaultZeroCopyMin is the handler's default zero_copy_min.
const defaultZeroCopyMin = 1 << 20

// expected is how many of the requests t's upstream answered should have
// come with Expect: all through bare with Expect, and through zero-copy
// uploads when the body reaches zero_copy_min; none otherwise.
func (res *BodiesResult) expected(t *Target) int64 {
	large := res.Scenario.Request.BodySize >= defaultZeroCopyMin
	if t.Name == bodiesBareExpect || t.Name == bodiesZeroCopy && large {
		return t.Upstream.Requests.Load()
	}
	return 0
}

// withBareExpect reports whether sc runs bare reverse_proxy with Expect
// too: for an upload without a revocation, where it is the control of the
// zero-copy path's price (a revocation needs a token, which bare has not).
func (sc BodyScenario) withBareExpect() bool { return sc.Request.BodySize > 0 && !sc.Revoked }

// check reports what went wrong behind the load generator's back: bodies
// that reached an upstream short or changed, answers it rejected, and
// grants where none was due (or, through a revocation, refused ones).
func (res *BodiesResult) check(ts *Targets, tokens []*TokenEndpoint) error {
	var errs []error
	for _, t := range ts.List {
		errs = append(errs, t.upstreamErrors()...)
		if n, want := t.Upstream.Expected.Load(), res.expected(t); n != want {
			errs = append(errs, fmt.Errorf("%s: %d of %d requests reached the upstream with Expect; want %d", t.Name, n, t.Upstream.Requests.Load(), want))
		}
	}
	for i, te := range tokens {
		if n := te.Refused.Load(); n > 0 {
			errs = append(errs, fmt.Errorf("%s: the token endpoint refused %d grants", ts.List[i+1].Name, n))
		}
		if n := te.Grants.Load(); !res.Scenario.Revoked && n > 0 {
			errs = append(errs, fmt.Errorf("%s: %d grants with a valid token", ts.List[i+1].Name, n))
		}
	}
	return errors.Join(errs...)
}
