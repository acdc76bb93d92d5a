package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// The scale, herd and replicas parts of a run.

// herdTail is how long the herd's traffic goes on after the last expiry.
const herdTail = 5 * time.Second

// herdConns are the load generator's connections for the largest herd.
const herdConns = 32

func (rep *Report) runScale(ctx context.Context, env *Env, opt Options, progress io.Writer) error {
	res, err := env.Scale(ctx, ScaleOptions{Sizes: opt.ScaleSizes, Unknown: opt.ScaleUnknown, ListLimit: opt.ListLimit,
		ListWalks: opt.ListWalks, TokenSizes: opt.TokenSizes, Conns: 64, Progress: progress, ProfileDir: opt.ProfileDir,
		Compare: CompareOptions{Rounds: opt.ScaleRounds, Duration: opt.ScaleRoundDuration, Warmup: opt.Warmup,
			MaxRequests: opt.MaxRequests, Timeout: requestTimeout, Progress: progress, Rotate: true}})
	if err != nil {
		return fmt.Errorf("scale: %w", err)
	}
	rep.Scale = res
	return nil
}

// herdOptions are the herd of n key sets: every account is asked for as
// often as in the largest herd, where opt.HerdRate requests a second cycle
// through them.
func herdOptions(opt Options, n, largest int, progress io.Writer) HerdOptions {
	rate := opt.HerdRate * float64(n) / float64(largest)
	return HerdOptions{KeySets: n, Replicas: 1, ExpiryStart: opt.HerdExpiryStart, ExpiryWindow: opt.HerdExpiryWindow,
		Rate: rate, Conns: max(1, min(herdConns, int(rate/50))), Tail: herdTail,
		Latency: opt.HerdLatency, Lifetime: time.Hour, RateLimit: herdRateLimit, Timeout: requestTimeout, Progress: progress}
}

// herdRateLimit is the token endpoint's: above it, 429.
const herdRateLimit = 50

// runHerds runs the herds of every size at the same time, each with its
// own sidecar, token endpoint and upstream: the small ones cost little and
// would each take as long as the largest.
func (rep *Report) runHerds(ctx context.Context, env *Env, opt Options, progress io.Writer) error {
	largest := slices.Max(opt.HerdSizes)
	results := make([]*HerdResult, len(opt.HerdSizes))
	errs := make([]error, len(opt.HerdSizes))
	var wg sync.WaitGroup
	for i, n := range opt.HerdSizes {
		wg.Go(func() {
			results[i], errs[i] = env.Herd(ctx, herdOptions(opt, n, largest, progress))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("herd: %w", err)
	}
	rep.Herds = results
	return nil
}

func (rep *Report) runReplicas(ctx context.Context, env *Env, opt Options, progress io.Writer) error {
	redis := RedisPath()
	if redis == "" {
		rep.Notes = append(rep.Notes, "redis-server is not on PATH: the replicas part is skipped (the harness never installs it).")
		return nil
	}
	ho := herdOptions(opt, opt.ReplicaKeySets, opt.ReplicaKeySets, progress)
	ho.Replicas = opt.Replicas
	ho.Conns = max(ho.Conns, opt.Replicas)
	res, err := env.ReplicaHerd(ctx, ho, redis)
	if err != nil {
		return fmt.Errorf("replicas: %w", err)
	}
	rep.Replicas = res
	return nil
}
