// Package bench measures what the oauth2_upstream sidecar costs: the
// repository's Caddy binary with bare reverse_proxy, the same binary with a
// static header (the control) or oauth2_upstream in front of
// reverse_proxy, and nginx where installed, driven side by side on
// loopback by a closed-loop load generator; a refresh storm; concurrent
// large uploads, for the peak memory; and what many key sets cost: sidecars
// over thousands of header-selected key sets (memory, throughput, the admin
// list), a herd of tokens expiring together against a rate-limiting token
// endpoint, and replicas sharing Redis.
// cmd/bench runs it all and prints the report that BENCHMARKS.md quotes.
package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Tokens the harness seeds and issues. They are not secrets.
const (
	benchAccessToken  = "bench-access-token"
	benchRefreshToken = "bench-refresh-0"
	staleAccessToken  = "bench-stale-access-token"
	freshAccessToken  = "bench-fresh-access-token"
)

// Env is where servers under test come from: the Caddy binary, and a
// scratch directory for their configs, logs, keystores and temp files.
type Env struct {
	CaddyBin string
	Dir      string
	// CandidateBin, when set, is a second Caddy with the module (built
	// from a patched tree, say), compared as a third server.
	CandidateBin string
	// Admin serves the admin API of the compared Caddys, so that
	// CompareOptions.ProfileDir can take CPU profiles from them.
	Admin bool

	mu   sync.Mutex // guards next: herds of several sizes run at once
	next int
}

// dir makes a fresh subdirectory for one server under test.
func (e *Env) dir(name string) (string, error) {
	e.mu.Lock()
	e.next++
	d := filepath.Join(e.Dir, fmt.Sprintf("%02d-%s", e.next, name))
	e.mu.Unlock()
	return d, os.MkdirAll(d, 0o700)
}

// SidecarName names the server with oauth2_upstream, whose cost the targets
// in BENCHMARKS.md bound.
const SidecarName = "caddy-oauth2"

// Targets are the servers of the throughput comparison, each with its own
// upstream, and the token endpoint the sidecar would refresh at.
type Targets struct {
	List  []*Target
	Token *TokenEndpoint
}

// StartTargets starts the servers compared: bare reverse_proxy (the
// baseline, first), Caddy setting a static Authorization header before
// reverse_proxy (the control: what any added header costs), oauth2_upstream
// + reverse_proxy with a valid, long-lived token seeded in its keystore (so
// no grant is made), and, when nginxBin is not empty, nginx setting a
// static header.
func (e *Env) StartTargets(ctx context.Context, nginxBin string) (ts *Targets, err error) {
	ts = &Targets{}
	defer func() {
		if err != nil {
			ts.Stop()
		}
	}()
	ts.Token, err = StartTokenEndpoint(benchRefreshToken, benchAccessToken, time.Hour, 0)
	if err != nil {
		return nil, err
	}
	bare, err := e.startCaddyTarget(ctx, "caddy-bare", e.CaddyBin, CaddySpec{}, "")
	if err != nil {
		return nil, err
	}
	ts.List = append(ts.List, bare)
	header, err := e.startCaddyTarget(ctx, "caddy-header", e.CaddyBin, CaddySpec{StaticAuthorization: "Bearer " + benchAccessToken}, "Bearer "+benchAccessToken)
	if err != nil {
		return nil, err
	}
	ts.List = append(ts.List, header)

	keys, err := e.dir("keystore")
	if err != nil {
		return nil, err
	}
	if err := SeedKeySet(keys, ts.Token.URL, benchAccessToken, benchRefreshToken, time.Now().Add(24*time.Hour)); err != nil {
		return nil, fmt.Errorf("seeding key set: %w", err)
	}
	oauth := &OAuth2Options{TokenURL: ts.Token.URL, KeystoreDir: keys, Refresh: "proactive"}
	sidecar, err := e.startCaddyTarget(ctx, SidecarName, e.CaddyBin, CaddySpec{OAuth2: oauth}, "Bearer "+benchAccessToken)
	if err != nil {
		return nil, err
	}
	ts.List = append(ts.List, sidecar)
	if e.CandidateBin != "" {
		// Its own copy of the key set: two processes, one keystore
		// directory, would coordinate through its locks.
		keys, err := e.dir("keystore-candidate")
		if err != nil {
			return nil, err
		}
		if err := SeedKeySet(keys, ts.Token.URL, benchAccessToken, benchRefreshToken, time.Now().Add(24*time.Hour)); err != nil {
			return nil, fmt.Errorf("seeding key set: %w", err)
		}
		oauth := &OAuth2Options{TokenURL: ts.Token.URL, KeystoreDir: keys, Refresh: "proactive"}
		candidate, err := e.startCaddyTarget(ctx, "caddy-oauth2-candidate", e.CandidateBin, CaddySpec{OAuth2: oauth}, "Bearer "+benchAccessToken)
		if err != nil {
			return nil, err
		}
		ts.List = append(ts.List, candidate)
	}

	if nginxBin != "" {
		up, err := StartUpstream("Bearer " + benchAccessToken)
		if err != nil {
			return nil, err
		}
		t := &Target{Name: "nginx", Upstream: up}
		ts.List = append(ts.List, t)
		dir, err := e.dir("nginx")
		if err != nil {
			return nil, err
		}
		if t.Proc, err = StartNginx(ctx, nginxBin, dir, up.Addr, "Bearer "+benchAccessToken); err != nil {
			return nil, err
		}
	}
	return ts, nil
}

// startCaddyTarget starts an upstream that wants Authorization auth, and
// the Caddy bin in front of it, configured by spec (whose Upstream it sets).
func (e *Env) startCaddyTarget(ctx context.Context, name, bin string, spec CaddySpec, auth string) (*Target, error) {
	return e.startCaddyTargetWith(ctx, name, bin, spec, auth, UpstreamOptions{})
}

// startCaddyTargetWith is startCaddyTarget with the upstream's options.
func (e *Env) startCaddyTargetWith(ctx context.Context, name, bin string, spec CaddySpec, auth string, uopt UpstreamOptions) (*Target, error) {
	up, err := StartUpstreamWith(auth, uopt)
	if err != nil {
		return nil, err
	}
	t := &Target{Name: name, Upstream: up, measureCPU: true}
	dir, err := e.dir(name)
	if err == nil {
		spec.Upstream, spec.Admin = up.Addr, e.Admin
		t.Proc, err = StartCaddy(ctx, name, bin, dir, spec)
	}
	if err != nil {
		up.Close()
		return nil, err
	}
	return t, nil
}

// Stop stops every server and upstream that was started.
func (ts *Targets) Stop() {
	for _, t := range ts.List {
		if t.Proc != nil {
			t.Proc.Stop()
		}
		t.Upstream.Close()
	}
	if ts.Token != nil {
		ts.Token.Close()
	}
}

// upstreamErrors are what t's upstream saw go wrong: Authorization headers
// it rejected, and bodies that reached it short or changed.
func (t *Target) upstreamErrors() []error {
	var errs []error
	if n := t.Upstream.Rejected.Load(); n > 0 {
		errs = append(errs, fmt.Errorf("%s: the upstream rejected the Authorization header of %d requests", t.Name, n))
	}
	if n := t.Upstream.Short.Load(); n > 0 {
		errs = append(errs, fmt.Errorf("%s: %d request bodies reached the upstream short or changed", t.Name, n))
	}
	return errs
}

// Check reports what went wrong behind the load generator's back: requests
// the upstreams rejected or received short, and grants (a valid long-lived
// token must not be refreshed).
func (ts *Targets) Check() error {
	var errs []error
	for _, t := range ts.List {
		errs = append(errs, t.upstreamErrors()...)
	}
	if n := ts.Token.Grants.Load() + ts.Token.Refused.Load(); n > 0 {
		errs = append(errs, fmt.Errorf("the token endpoint got %d grant requests during the throughput runs; want 0", n))
	}
	return errors.Join(errs...)
}
