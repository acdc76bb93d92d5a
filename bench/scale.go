package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// ScaleOptions shapes the "cost as work grows" measurement: sidecars that
// select the key set by header, over keystores of Sizes key sets.
type ScaleOptions struct {
	// Sizes are the key sets of each sidecar; the first is the baseline
	// of the req/s ratios.
	Sizes []int
	// Unknown distinct names that are not stored are asked of the
	// largest sidecar, half admitted by key_set_allow, half not.
	Unknown int
	// ListLimit is the page size of the admin list walks, ListWalks
	// the walks through the whole list.
	ListLimit int
	ListWalks int
	// TokenSizes are the access token sizes of the in-process engine
	// measurement (0: the harness's own, about 30 bytes).
	TokenSizes []int
	// ProfileDir, when set, receives the largest sidecar's heap profile
	// with every key set loaded, and its CPU profile during walks through
	// the admin list.
	ProfileDir string
	Compare    CompareOptions
	Conns      int
	Progress   io.Writer
}

// ScaleResult is what the scale measurement found.
type ScaleResult struct {
	ScaleOptions
	Engine      []EngineMemory // in-process, for each size above 1 and token size
	Comparison  *Comparison    // one target per size
	Sidecars    []ScaleSidecar // per size
	UnknownHeap UnknownNames   // on the largest sidecar
}

// ScaleSidecar is what one sidecar of the scale measurement showed.
type ScaleSidecar struct {
	KeySets int
	// Caddy's heap after a GC (HeapAlloc), just started and after one
	// request per key set; and its RSS then.
	HeapStarted, HeapLoaded int64
	RSSStarted, RSSLoaded   int64
	List                    *ListWalk // after the throughput rounds
}

// HeapPerKeySet is what loading each key set added to Caddy's heap, less
// what the same steps added to the baseline (one key set) sidecar's.
func (r *ScaleResult) HeapPerKeySet(i int) float64 {
	s, base := r.Sidecars[i], r.Sidecars[0]
	if s.KeySets == base.KeySets {
		return 0
	}
	return float64((s.HeapLoaded-s.HeapStarted)-(base.HeapLoaded-base.HeapStarted)) / float64(s.KeySets-base.KeySets)
}

// UnknownNames is what requests for names that are not stored did.
type UnknownNames struct {
	Names            int
	Statuses         map[int]int64
	HeapBefore       int64
	HeapAfter        int64
	ListedAfter      int // key sets the admin list shows afterwards
	ListedBeforeWant int
}

// Scale runs the scale measurement: the in-process engine memory first
// (nothing else runs then), then one sidecar per size side by side.
func (e *Env) Scale(ctx context.Context, opt ScaleOptions) (*ScaleResult, error) {
	if opt.Progress == nil {
		opt.Progress = io.Discard
	}
	res := &ScaleResult{ScaleOptions: opt}
	largest := slices.Max(opt.Sizes)
	var err error
	if res.Engine, err = e.measureEngines(ctx, opt); err != nil {
		return nil, err
	}
	te, err := StartAccountTokenEndpoint(accountNames(largest), time.Hour, 0, herdRateLimit)
	if err != nil {
		return nil, err
	}
	defer te.Close()
	upstreams := map[*Target]*AccountUpstream{}
	defer func() {
		for t, up := range upstreams {
			t.Proc.Stop()
			up.Close()
		}
	}()
	var targets []*Target
	for _, n := range opt.Sizes {
		t, up, s, err := e.startScaleSidecar(ctx, n, largest, te.URL, opt)
		if err != nil {
			return nil, err
		}
		targets, upstreams[t] = append(targets, t), up
		res.Sidecars = append(res.Sidecars, s)
	}

	sc := Scenario{Name: "GET 1 KiB, X-Account cycling", Request: Request{Method: "GET", Path: "/get"}, Conns: opt.Conns}
	fmt.Fprintf(opt.Progress, "scale: %s, %d connections, %d rounds of %s\n", sc.Name, sc.Conns, opt.Compare.Rounds, opt.Compare.Duration)
	if res.Comparison, err = Compare(ctx, targets, sc, opt.Compare); err != nil {
		return nil, err
	}
	for i, t := range targets {
		fmt.Fprintf(opt.Progress, "scale: walking the key set list of %s\n", t.Name)
		if res.Sidecars[i].List, err = walkRepeatedly(ctx, t.Proc, opt.ListLimit, opt.ListWalks); err != nil {
			return nil, fmt.Errorf("%s: %w", t.Name, err)
		}
		if got := res.Sidecars[i].List.Names; got != opt.Sizes[i] {
			return nil, fmt.Errorf("%s: the admin list shows %d key sets; want %d", t.Name, got, opt.Sizes[i])
		}
	}
	if opt.ProfileDir != "" {
		if err := profileLargest(ctx, targets[len(targets)-1], opt); err != nil {
			return nil, err
		}
	}
	if opt.Unknown > 0 {
		t := targets[len(targets)-1]
		fmt.Fprintf(opt.Progress, "scale: %d unknown names through %s\n", opt.Unknown, t.Name)
		if res.UnknownHeap, err = askUnknown(ctx, t, opt); err != nil {
			return nil, err
		}
	}

	var errs []error
	for t, up := range upstreams {
		if n := up.Bad(); n > 0 {
			errs = append(errs, fmt.Errorf("%s: the upstream refused %d requests (%d expired, %d of another account, %d unknown tokens)",
				t.Name, n, up.Expired.Load(), up.Foreign.Load(), up.Rejected.Load()))
		}
	}
	if l := te.Log(); len(l.Arrivals) > 0 || l.Refused > 0 || l.Throttled > 0 {
		errs = append(errs, fmt.Errorf("the token endpoint got grant requests for %d key sets; want none (every token is valid for an hour)", len(l.Arrivals)+len(l.RefusedBy)))
	}
	return res, errors.Join(errs...)
}

// measureEngines measures the engine's memory in this process for every
// size of at least 100 key sets (the figure of a handful is noise) and
// token size.
func (e *Env) measureEngines(ctx context.Context, opt ScaleOptions) ([]EngineMemory, error) {
	var out []EngineMemory
	for _, n := range opt.Sizes {
		for _, size := range opt.TokenSizes {
			if n < 100 {
				continue
			}
			dir, err := e.dir(fmt.Sprintf("engine-%d", n))
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(opt.Progress, "engine memory: %d key sets, access token %d B\n", n, size)
			m, err := MeasureEngineMemory(ctx, dir, n, size, opt.Unknown)
			if err != nil {
				return nil, fmt.Errorf("engine memory, %d key sets: %w", n, err)
			}
			out = append(out, m)
		}
	}
	return out, nil
}

// startScaleSidecar starts the sidecar over n key sets and reads its heap
// just started and after touching every key set, with as many requests
// (touches) for every sidecar alike, so that they hold the same
// connections.
func (e *Env) startScaleSidecar(ctx context.Context, n, touches int, tokenURL string, opt ScaleOptions) (*Target, *AccountUpstream, ScaleSidecar, error) {
	s := ScaleSidecar{KeySets: n}
	fmt.Fprintf(opt.Progress, "scale: starting a sidecar over %d key sets\n", n)
	t, up, err := e.startAccountSidecar(ctx, fmt.Sprintf("keysets-%d", n), n, tokenURL)
	if err != nil {
		return nil, nil, s, err
	}
	fail := func(err error) (*Target, *AccountUpstream, ScaleSidecar, error) {
		t.Proc.Stop()
		up.Close()
		return nil, nil, s, fmt.Errorf("%s: %w", t.Name, err)
	}
	// Before the handler's first background check (30 s), which loads
	// every stored key set it may serve.
	if s.HeapStarted, err = t.Proc.HeapAfterGC(ctx); err != nil {
		return fail(err)
	}
	s.RSSStarted, _ = t.Proc.RSS()
	if err := Touch(ctx, t.Proc.Addr, t.Accounts, touches, opt.Conns, requestTimeout); err != nil {
		return fail(err)
	}
	if s.HeapLoaded, err = t.Proc.HeapAfterGC(ctx); err != nil {
		return fail(err)
	}
	s.RSSLoaded, _ = t.Proc.RSS()
	return t, up, s, nil
}

// listProfileTime is how long the CPU profile of list walks runs.
const listProfileTime = 5 * time.Second

// profileLargest writes t's heap profile (every key set loaded) and a CPU
// profile taken while the admin list is walked over and over.
func profileLargest(ctx context.Context, t *Target, opt ScaleOptions) error {
	heap, _, err := t.Proc.adminGet(ctx, "/debug/pprof/heap?gc=1")
	if err == nil {
		err = os.WriteFile(filepath.Join(opt.ProfileDir, t.Name+"-loaded.heap.pprof"), heap, 0o644)
	}
	if err != nil {
		return err
	}
	profiled := make(chan error, 1)
	go func() {
		profiled <- t.Proc.CPUProfile(ctx, listProfileTime, filepath.Join(opt.ProfileDir, t.Name+"-list.cpu.pprof"))
	}()
	for deadline := time.Now().Add(listProfileTime); time.Now().Before(deadline); {
		if _, err := t.Proc.WalkKeySets(ctx, opt.ListLimit); err != nil {
			return err
		}
	}
	return <-profiled
}

// walkRepeatedly walks the whole key set list walks times, and returns the
// pages of every walk.
func walkRepeatedly(ctx context.Context, p *Process, limit, walks int) (*ListWalk, error) {
	all := &ListWalk{}
	for range max(walks, 1) {
		w, err := p.WalkKeySets(ctx, limit)
		if err != nil {
			return nil, err
		}
		all.Pages, all.Names, all.Largest = append(all.Pages, w.Pages...), w.Names, max(all.Largest, w.Largest)
	}
	return all, nil
}

// askUnknown asks sidecar t for opt.Unknown distinct names that are not
// stored, reading its heap before and after, and its key set list after.
func askUnknown(ctx context.Context, t *Target, opt ScaleOptions) (UnknownNames, error) {
	u := UnknownNames{Names: opt.Unknown, ListedBeforeWant: len(t.Accounts)}
	var err error
	if u.HeapBefore, err = t.Proc.HeapAfterGC(ctx); err != nil {
		return u, err
	}
	res, err := RunPaced(ctx, PacedOptions{Addrs: []string{t.Proc.Addr}, Accounts: unknownNames(opt.Unknown),
		Request: Request{Method: "GET", Path: "/unknown"}, Rate: 1e9, Conns: opt.Conns,
		Duration: time.Duration(opt.Unknown), Timeout: requestTimeout})
	if err != nil {
		return u, err
	}
	u.Statuses = res.Statuses
	if u.HeapAfter, err = t.Proc.HeapAfterGC(ctx); err != nil {
		return u, err
	}
	walk, err := t.Proc.WalkKeySets(ctx, opt.ListLimit)
	if err != nil {
		return u, err
	}
	u.ListedAfter = walk.Names
	if res.Statuses[502]+res.Statuses[403] != int64(opt.Unknown) {
		return u, fmt.Errorf("%s: unknown names answered %v; want only 502 and 403", t.Name, res.Statuses)
	}
	return u, nil
}

// startAccountSidecar starts a Caddy whose oauth2_upstream selects the key
// set by the X-Account header, over a file keystore seeded with n accounts
// whose tokens are valid for a day, with its admin API, and the upstream
// that checks their tokens.
func (e *Env) startAccountSidecar(ctx context.Context, name string, n int, tokenURL string) (*Target, *AccountUpstream, error) {
	names := accountNames(n)
	keys, err := e.dir(name + "-keystore")
	if err != nil {
		return nil, nil, err
	}
	expiry := time.Now().Add(24 * time.Hour)
	seed := AccountSeed{Names: names, Expiry: func(int) time.Time { return expiry },
		Client: bindingOf(tokenURL)}
	if err := SeedFileAccounts(keys, seed); err != nil {
		return nil, nil, fmt.Errorf("seeding %d key sets: %w", n, err)
	}
	up, err := StartAccountUpstream()
	if err != nil {
		return nil, nil, err
	}
	dir, err := e.dir(name)
	if err != nil {
		up.Close()
		return nil, nil, err
	}
	spec := CaddySpec{Upstream: up.Addr, Admin: true, OAuth2: &OAuth2Options{TokenURL: tokenURL, KeystoreDir: keys,
		Refresh: "proactive", KeySet: accountKeySet, KeySetAllow: accountAllow}}
	proc, err := StartCaddy(ctx, name, e.CaddyBin, dir, spec)
	if err != nil {
		up.Close()
		return nil, nil, err
	}
	// The account upstream, not a Target's Upstream, checks these
	// requests.
	return &Target{Name: name, Proc: proc, measureCPU: true, Accounts: names}, up, nil
}
