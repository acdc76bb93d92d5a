package bench

import (
	"context"
	"os"
	"testing"
	"time"
)

// The scale measurement still runs: sidecars that select one of many key
// sets by header serve every account with its own token, load them all,
// list them a page at a time, and keep nothing for names that are not
// stored (a small run of cmd/bench -parts scale).
func TestScaleSmoke(t *testing.T) {
	env := newTestEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opt := ScaleOptions{Sizes: []int{1, 200}, Unknown: 400, ListLimit: 100, ListWalks: 1, Conns: 8, TokenSizes: []int{0},
		Compare: CompareOptions{Rounds: 1, Duration: 500 * time.Millisecond, MaxRequests: 100_000, Timeout: 10 * time.Second}}
	res, err := env.Scale(ctx, opt)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range res.Comparison.Summary() {
		if s.OK == 0 || s.Failed != 0 {
			t.Errorf("Scale: %s: %d ok, %d failed (%s); want some ok and none failed", s.Name, s.OK, s.Failed, s.FirstError)
		}
	}
	for _, s := range res.Sidecars {
		if s.HeapStarted <= 0 || s.HeapLoaded <= 0 {
			t.Errorf("Scale: %d key sets: heap %d started, %d loaded; want both read", s.KeySets, s.HeapStarted, s.HeapLoaded)
		}
		if want := (s.KeySets + opt.ListLimit - 1) / opt.ListLimit; len(s.List.Pages) != want {
			t.Errorf("Scale: %d key sets listed in %d pages of %d; want %d", s.KeySets, len(s.List.Pages), opt.ListLimit, want)
		}
	}
	u := res.UnknownHeap
	if u.Statuses[502] != int64(opt.Unknown/2) || u.Statuses[403] != int64(opt.Unknown/2) || u.ListedAfter != 200 {
		t.Errorf("Scale: %d unknown names answered %v, then %d key sets listed; want half 502, half 403, then 200",
			opt.Unknown, u.Statuses, u.ListedAfter)
	}
	if len(res.Engine) != len(opt.TokenSizes) {
		t.Errorf("Scale: %d engine measurements; want %d", len(res.Engine), len(opt.TokenSizes))
	}
}

// smokeHerd is a herd a smoke test can wait for: 200 key sets expiring
// within two seconds, a 2 s expiry skew, every account asked for four
// times a second.
func smokeHerd(replicas int) HerdOptions {
	return HerdOptions{KeySets: 200, Replicas: replicas, ExpiryStart: 4 * time.Second, ExpiryWindow: 2 * time.Second,
		Skew: 2 * time.Second, Rate: 800, Conns: 8, Tail: time.Second,
		Latency: 20 * time.Millisecond, Lifetime: time.Hour, RateLimit: 50, Timeout: 10 * time.Second}
}

// smokeLateTolerance is how late a token may reach the upstream in a smoke
// test: in a run this short every account's proactive window is a second
// or two, so a replica whose first request for an account comes in the
// token's last milliseconds is likely, and the handler still sends that
// token. cmd/bench counts every one.
const smokeLateTolerance = 100 * time.Millisecond

// A herd of key sets expiring together is refreshed once each, ahead of
// the expiry, at most max_concurrent_grants at a time, and no request
// fails or carries an expired token (a small run of -parts herd).
func TestHerdSmoke(t *testing.T) {
	env := newTestEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := env.Herd(ctx, smokeHerd(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Check(8, smokeLateTolerance); err != nil {
		t.Error(err)
	}
	if res.Waits.Granted != 200 || len(res.Curve) == 0 {
		t.Errorf("Herd: %d accounts granted, curve %v; want 200 and a curve", res.Waits.Granted, res.Curve)
	}
}

// Three replicas on one Redis make one grant per key set between them, and
// each keeps its own bound (a small run of -parts replicas).
func TestReplicasSmoke(t *testing.T) {
	env := newTestEnv(t)
	redis := RedisPath()
	if redis == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("redis-server not found (CI must install it)")
		}
		t.Skip("redis-server not found")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := env.ReplicaHerd(ctx, smokeHerd(3), redis)
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Check(8, smokeLateTolerance); err != nil {
		t.Error(err)
	}
	if len(res.Grants.RequestsReplica) != 3 {
		t.Errorf("ReplicaHerd: token requests by replica %v; want grants from all 3", res.Grants.RequestsReplica)
	}
}
