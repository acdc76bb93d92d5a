package bench

import (
	"context"
	"fmt"
	"time"
)

// StormOptions shapes a refresh storm.
type StormOptions struct {
	Requests int           // arriving at once
	Refresh  string        // the handler's refresh mode
	Latency  time.Duration // of the token endpoint's answer
	Timeout  time.Duration // bound on one request
	// Rejected: the stale token has no known expiry (as with Salesforce),
	// so every request first reaches the upstream, gets its 401, and is
	// replayed after the refresh. Otherwise the token's expiry has just
	// passed and requests wait for the refresh before going upstream.
	Rejected bool
}

// StormResult is what a storm measured.
type StormResult struct {
	StormOptions
	Grants  int64 // grants the token endpoint answered
	Refused int64 // grants it refused (a refresh token spent twice)
	Burst   BurstResult
	// UpstreamRejected counts the 401s the upstream gave to the stale
	// token (Rejected storms only: each is followed by a replay).
	UpstreamRejected int64
}

// Failed is the number of requests that did not get a 2xx answer.
func (s *StormResult) Failed() int64 { return s.Burst.Failed }

// Storm starts a fresh sidecar whose stored token is stale, sends
// opt.Requests requests at once, and counts the grants the token endpoint
// made for them: DESIGN.md invariant 4 wants exactly one.
func (e *Env) Storm(ctx context.Context, opt StormOptions) (*StormResult, error) {
	te, err := StartTokenEndpoint(benchRefreshToken, freshAccessToken, time.Hour, opt.Latency)
	if err != nil {
		return nil, err
	}
	defer te.Close()
	up, err := StartUpstream("Bearer " + freshAccessToken)
	if err != nil {
		return nil, err
	}
	defer up.Close()

	keys, err := e.dir("storm-keystore")
	if err != nil {
		return nil, err
	}
	expiry := time.Now().Add(-time.Second) // just expired
	if opt.Rejected {
		expiry = time.Time{} // unknown: only the upstream's 401 tells
	}
	if err := SeedKeySet(keys, te.URL, staleAccessToken, benchRefreshToken, expiry); err != nil {
		return nil, fmt.Errorf("seeding key set: %w", err)
	}
	dir, err := e.dir("storm-caddy")
	if err != nil {
		return nil, err
	}
	spec := CaddySpec{Upstream: up.Addr, OAuth2: &OAuth2Options{TokenURL: te.URL, KeystoreDir: keys, Refresh: opt.Refresh}}
	proc, err := StartCaddy(ctx, "caddy-oauth2 (storm)", e.CaddyBin, dir, spec)
	if err != nil {
		return nil, err
	}
	defer proc.Stop()

	burst, err := Burst(ctx, proc.Addr, Request{Method: "GET", Path: "/storm"}, opt.Requests, opt.Timeout)
	if err != nil {
		return nil, err
	}
	return &StormResult{
		StormOptions:     opt,
		Grants:           te.Grants.Load(),
		Refused:          te.Refused.Load(),
		Burst:            burst,
		UpstreamRejected: up.Rejected.Load(),
	}, nil
}
