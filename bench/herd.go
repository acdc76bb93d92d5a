package bench

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/redis"
)

// HerdOptions shapes a refresh herd: many key sets whose tokens expire
// within the same window, in proactive mode, under steady traffic that
// cycles through every account, against a token endpoint that rate-limits.
type HerdOptions struct {
	KeySets int
	// Replicas are the sidecars serving the accounts; more than one
	// share a Redis keystore at RedisAddr, one uses a file keystore.
	Replicas  int
	RedisAddr string
	// The tokens expire between ExpiryStart and ExpiryStart+ExpiryWindow
	// after the seed, in an order unrelated to the accounts' names.
	ExpiryStart  time.Duration
	ExpiryWindow time.Duration
	// Skew is the sidecars' expiry_skew; 0 leaves the default.
	Skew time.Duration
	// MaxConcurrentGrants is the sidecars' option; 0 leaves the default.
	MaxConcurrentGrants int
	// Traffic: Rate requests a second in all, on Conns connections spread
	// over the replicas, until Tail after the last expiry.
	Rate  float64
	Conns int
	Tail  time.Duration
	// The token endpoint answers after Latency, issues tokens valid for
	// Lifetime, and answers 429 while more than RateLimit grants are in
	// flight.
	Latency   time.Duration
	Lifetime  time.Duration
	RateLimit int
	Timeout   time.Duration // bound on one request
	Progress  io.Writer
}

// HerdResult is what a herd measured.
type HerdResult struct {
	HerdOptions
	Seeded  time.Time // the zero of the timeline
	Traffic *PacedResult
	Grants  GrantLog
	// Upstream refusals: tokens past their expiry, of another account,
	// or not issued by the harness.
	Expired, Foreign, Rejected int64
	MostExpired                time.Duration
	Waits                      HerdWaits
	Curve                      []int // grants that arrived in each second since Seeded
	// Sidecar is what the sidecars logged about their grants.
	Sidecar SidecarGrants
	// Stored counts the key sets in the keystore by generation at the end.
	Stored map[int64]int
	// LoadAverage is /proc/loadavg's figures at the end.
	LoadAverage string
}

// HerdWaits are how long accounts waited for their refresh.
type HerdWaits struct {
	Granted, NotGranted, GrantedTwice int
	// FromWindow: from when the account's proactive window opened to
	// when its grant reached the token endpoint (negative would mean that
	// proactiveWindowStart no longer follows the handler); FromExpiry:
	// from its expiry (negative: before it).
	FromWindowMin, FromWindowMedian, FromWindowMax time.Duration
	FromExpiryMedian, FromExpiryMax                time.Duration
	SlowestAccount                                 string
	AfterExpiry                                    int // accounts whose grant came after their token expired
}

// defaultSkew is the handler's expiry_skew default.
const defaultSkew = credential.DefaultSkew

// Herd seeds opt.KeySets accounts, starts the replicas and the traffic,
// and waits until every token has expired and Tail has passed.
func (e *Env) Herd(ctx context.Context, opt HerdOptions) (*HerdResult, error) {
	if opt.Progress == nil {
		opt.Progress = io.Discard
	}
	names := accountNames(opt.KeySets)
	te, err := StartAccountTokenEndpoint(names, opt.Lifetime, opt.Latency, opt.RateLimit)
	if err != nil {
		return nil, err
	}
	defer te.Close()
	up, err := StartAccountUpstream()
	if err != nil {
		return nil, err
	}
	defer up.Close()

	res := &HerdResult{HerdOptions: opt}
	store, keysDir, err := e.herdKeystore(opt)
	if err != nil {
		return nil, err
	}
	if c, ok := store.(io.Closer); ok {
		defer c.Close()
	}
	res.Seeded = time.Now()
	expiries := herdExpiries(res.Seeded, opt)
	seed := AccountSeed{Names: names, Expiry: func(i int) time.Time { return expiries[i] }, Client: bindingOf(te.URL)}
	if store == nil {
		err = SeedFileAccounts(keysDir, seed)
	} else {
		err = SeedStoreAccounts(ctx, store, seed)
	}
	if err != nil {
		return nil, fmt.Errorf("seeding %d key sets: %w", opt.KeySets, err)
	}
	fmt.Fprintf(opt.Progress, "herd: %d key sets seeded in %s\n", opt.KeySets, time.Since(res.Seeded).Round(time.Millisecond))

	addrs, logs, stop, err := e.startHerdReplicas(ctx, opt, te.URL, up.Addr, keysDir)
	if err != nil {
		return nil, err
	}
	defer stop()

	end := res.Seeded.Add(opt.ExpiryStart + opt.ExpiryWindow + opt.Tail)
	fmt.Fprintf(opt.Progress, "herd: %.0f requests/s over %d accounts on %d replica(s) until %s from now\n",
		opt.Rate, opt.KeySets, opt.Replicas, time.Until(end).Round(time.Second))
	res.Traffic, err = RunPaced(ctx, PacedOptions{Addrs: addrs, Accounts: names, Request: Request{Method: "GET", Path: "/herd"},
		Rate: opt.Rate, Conns: opt.Conns, Duration: time.Until(end), Timeout: opt.Timeout})
	if err != nil {
		return nil, err
	}
	res.Grants = te.Log()
	if res.Sidecar, err = readSidecarGrants(logs...); err != nil {
		return nil, err
	}
	if res.Stored, err = storedGenerations(ctx, store, keysDir, names); err != nil {
		return nil, err
	}
	res.Expired, res.Foreign, res.Rejected = up.Expired.Load(), up.Foreign.Load(), up.Rejected.Load()
	res.MostExpired = time.Duration(up.MostExpired.Load())
	res.Waits = herdWaits(names, expiries, res.Grants, cmp.Or(opt.Skew, defaultSkew))
	res.Curve = grantCurve(res.Seeded, res.Grants)
	res.LoadAverage = loadAverage()
	return res, nil
}

// startHerdReplicas starts opt.Replicas sidecars in proactive mode over the
// herd's keystore, each naming itself in its token requests (replicaParam),
// and returns their addresses, their logs, and how to stop them.
func (e *Env) startHerdReplicas(ctx context.Context, opt HerdOptions, tokenURL, upstream, keysDir string) (addrs, logs []string, stop func(), err error) {
	var procs []*Process
	stop = func() {
		for _, p := range procs {
			p.Stop()
		}
	}
	for r := range opt.Replicas {
		dir, err := e.dir(fmt.Sprintf("herd-%d-replica-%d", opt.KeySets, r))
		if err != nil {
			stop()
			return nil, nil, nil, err
		}
		spec := CaddySpec{Upstream: upstream, OAuth2: &OAuth2Options{TokenURL: tokenURL, KeystoreDir: keysDir,
			RedisAddr: opt.RedisAddr, Refresh: "proactive", KeySet: accountKeySet, KeySetAllow: accountAllow,
			ExpirySkew: opt.Skew, MaxConcurrentGrants: opt.MaxConcurrentGrants,
			Params: map[string][]string{replicaParam: {fmt.Sprint(r)}}}}
		proc, err := StartCaddy(ctx, fmt.Sprintf("caddy-oauth2 (herd, replica %d)", r), e.CaddyBin, dir, spec)
		if err != nil {
			stop()
			return nil, nil, nil, err
		}
		procs = append(procs, proc)
		addrs, logs = append(addrs, proc.Addr), append(logs, proc.Log)
	}
	return addrs, logs, stop, nil
}

// herdKeystore makes the keystore the herd's replicas share: a Redis store
// at opt.RedisAddr, or (nil and) a file keystore directory.
func (e *Env) herdKeystore(opt HerdOptions) (keystore.Store, string, error) {
	dir, err := e.dir(fmt.Sprintf("herd-%d-keystore", opt.KeySets))
	if err != nil || opt.RedisAddr == "" {
		return nil, dir, err
	}
	store, err := redis.New(redis.Options{Addresses: []string{opt.RedisAddr}})
	return store, dir, err
}

// ReplicaHerd runs the herd with opt.Replicas sidecars sharing a Redis
// keystore, on a redis-server from redisBin that it starts and stops.
func (e *Env) ReplicaHerd(ctx context.Context, opt HerdOptions, redisBin string) (*HerdResult, error) {
	dir, err := e.dir("redis")
	if err != nil {
		return nil, err
	}
	redis, err := StartRedis(ctx, redisBin, dir)
	if err != nil {
		return nil, err
	}
	defer redis.Stop()
	opt.RedisAddr = redis.Addr
	return e.Herd(ctx, opt)
}

// storedGenerations counts the stored key sets of names by generation, in
// store or (when it is nil) the file keystore at dir.
func storedGenerations(ctx context.Context, store keystore.Store, dir string, names []string) (map[int64]int, error) {
	if store == nil {
		f, err := file.New(dir)
		if err != nil {
			return nil, err
		}
		store = f
	}
	var mu sync.Mutex // guards out
	out := map[int64]int{}
	err := parallel(len(names), func(i int) error {
		ks, err := store.Load(ctx, names[i])
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		out[ks.Generation]++
		return nil
	})
	return out, err
}

// herdExpiries spreads the expiries over the window in an order that has
// nothing to do with the names, which the traffic cycles through in order.
func herdExpiries(seeded time.Time, opt HerdOptions) []time.Time {
	const stride = 7919 // a prime: i*stride mod n visits every slot once unless n is a multiple
	n := opt.KeySets
	out := make([]time.Time, n)
	for i := range out {
		slot := i
		if n%stride != 0 {
			slot = i * stride % n
		}
		out[i] = seeded.Add(opt.ExpiryStart + opt.ExpiryWindow*time.Duration(slot)/time.Duration(max(n, 1)))
	}
	return out
}

// proactiveWindowStart is when account name's proactive refresh may start:
// its expiry less its share of the skew. It follows credential's
// proactiveSkew and spreadOf (unexported): a point between the skew and
// half of it, drawn from the name and generation, for a lifetime longer
// than twice the skew.
func proactiveWindowStart(name string, gen int64, expiry time.Time, skew time.Duration) time.Time {
	h := fnv.New64a()
	h.Write([]byte(name))
	binary.Write(h, binary.BigEndian, gen)
	spread := 0.5 + float64(h.Sum64()>>11)/(1<<53)/2
	return expiry.Add(-time.Duration(float64(skew) * spread))
}

// herdWaits works out each account's wait for its first grant.
func herdWaits(names []string, expiries []time.Time, log GrantLog, skew time.Duration) HerdWaits {
	var w HerdWaits
	var fromWindow, fromExpiry []time.Duration
	for i, name := range names {
		arrivals := log.Arrivals[name]
		switch len(arrivals) {
		case 0:
			w.NotGranted++
			continue
		case 1:
		default:
			w.GrantedTwice++
		}
		w.Granted++
		wait := arrivals[0].Sub(proactiveWindowStart(name, 1, expiries[i], skew))
		late := arrivals[0].Sub(expiries[i])
		if len(fromWindow) == 0 || wait > w.FromWindowMax {
			w.SlowestAccount, w.FromWindowMax = name, wait
		}
		fromWindow, fromExpiry = append(fromWindow, wait), append(fromExpiry, late)
		if late > 0 {
			w.AfterExpiry++
		}
	}
	if len(fromWindow) > 0 {
		w.FromWindowMin, w.FromWindowMedian = slices.Min(fromWindow), median(fromWindow)
		w.FromExpiryMedian, w.FromExpiryMax = median(fromExpiry), slices.Max(fromExpiry)
	}
	return w
}

// grantCurve counts the grants that arrived in each second since start.
func grantCurve(start time.Time, log GrantLog) []int {
	var curve []int
	for _, arrivals := range log.Arrivals {
		for _, a := range arrivals {
			s := max(int(a.Sub(start)/time.Second), 0)
			for len(curve) <= s {
				curve = append(curve, 0)
			}
			curve[s]++
		}
	}
	return curve
}

// Check compares the herd with the targets: every account granted
// exactly once, no expired or misdirected token upstream, no failed
// request, no 429, and at most maxInFlight grants in flight per replica.
// Tokens that reached the upstream expired by at most lateTolerance pass:
// a request that the sidecar sends in a token's last instant arrives after
// it (see BENCHMARKS.md); zero tolerates none.
func (r *HerdResult) Check(maxInFlight int64, lateTolerance time.Duration) error {
	var errs []error
	if r.Waits.NotGranted > 0 || r.Waits.GrantedTwice > 0 {
		errs = append(errs, fmt.Errorf("%d accounts never refreshed, %d refreshed more than once; want each once", r.Waits.NotGranted, r.Waits.GrantedTwice))
	}
	if (r.Expired > 0 && r.MostExpired > lateTolerance) || r.Foreign+r.Rejected > 0 {
		errs = append(errs, fmt.Errorf("the upstream got %d expired tokens (the latest %s late), %d of another account, %d unknown",
			r.Expired, r.MostExpired, r.Foreign, r.Rejected))
	}
	if r.Stored[2] != r.KeySets {
		errs = append(errs, fmt.Errorf("stored generations %v; want all %d key sets at generation 2", r.Stored, r.KeySets))
	}
	if r.Traffic.Failed > 0 {
		errs = append(errs, fmt.Errorf("%d requests failed (%v; first: %s)", r.Traffic.Failed, r.Traffic.Statuses, r.Traffic.FirstError))
	}
	if r.Grants.Throttled > 0 || r.Grants.Refused > 0 {
		errs = append(errs, fmt.Errorf("the token endpoint answered %d grants 429 and refused %d", r.Grants.Throttled, r.Grants.Refused))
	}
	for replica, n := range r.Grants.MostInFlightReplica {
		if n > maxInFlight {
			errs = append(errs, fmt.Errorf("replica %s had %d grants in flight at once; want at most %d", replica, n, maxInFlight))
		}
	}
	return errors.Join(errs...)
}

// loadAverage is the one, five and fifteen minute load averages.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return f[0] + " " + f[1] + " " + f[2]
}
