package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// testCaddy is the Caddy the tests run, built by the first that needs it
// into dir, which TestMain removes.
var testCaddy struct {
	dir  string
	once sync.Once
	bin  string
	err  error
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "oauth2-upstream-bench-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testCaddy.dir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// newTestEnv is an Env with the repository's Caddy, built once for every
// test of the package (see TestMain), and a scratch directory of the test.
func newTestEnv(t *testing.T) *Env {
	t.Helper()
	if testing.Short() {
		t.Skip("builds Caddy and starts several servers")
	}
	testCaddy.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		testCaddy.bin, testCaddy.err = BuildCaddy(ctx, "..", testCaddy.dir)
	})
	if testCaddy.err != nil {
		t.Fatal(testCaddy.err)
	}
	return &Env{CaddyBin: testCaddy.bin, Dir: filepath.Join(t.TempDir(), "run")}
}

// The harness still measures what cmd/bench reports: a short side-by-side
// run of bare reverse_proxy and the sidecar with a valid token (no grant,
// every request authenticated upstream), refresh storms that must make
// exactly one grant and fail no request, and uploads whose peak RSS is read.
func TestHarnessSmoke(t *testing.T) {
	env := newTestEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("compare", func(t *testing.T) {
		targets, err := env.StartTargets(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		defer targets.Stop()
		opt := CompareOptions{Rounds: 1, Duration: time.Second, MaxRequests: 100_000, Timeout: 10 * time.Second}
		for _, sc := range []Scenario{
			{Name: "GET", Request: Request{Method: "GET", Path: "/get"}, Conns: 8},
			{Name: "POST 64 KiB chunked", Request: Request{Method: "POST", Path: "/post", BodySize: 64 << 10, Chunked: true}, Conns: 8},
		} {
			c, err := Compare(ctx, targets.List, sc, opt)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range c.Summary() {
				if s.OK == 0 || s.Failed != 0 {
					t.Errorf("%s through %s: %d ok, %d failed (%s); want some ok and none failed", sc.Name, s.Name, s.OK, s.Failed, s.FirstError)
				}
			}
		}
		if err := targets.Check(); err != nil {
			t.Error(err)
		}
		for _, target := range targets.List {
			if cpu, err := target.Proc.CPUTime(); err != nil || cpu <= 0 {
				t.Errorf("%s: CPUTime() = %s, %v; want a positive time", target.Name, cpu, err)
			}
		}
	})

	for _, tc := range []struct {
		name string
		opt  StormOptions
	}{
		{name: "storm expired proactive", opt: StormOptions{Refresh: "proactive"}},
		{name: "storm rejected reactive", opt: StormOptions{Refresh: "reactive", Rejected: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opt.Requests, tc.opt.Latency, tc.opt.Timeout = 100, 50*time.Millisecond, 30*time.Second
			res, err := env.Storm(ctx, tc.opt)
			if err != nil {
				t.Fatal(err)
			}
			if res.Grants != 1 || res.Refused != 0 || res.Failed() != 0 {
				t.Errorf("Storm(%+v) = %d grants, %d refused, %d failed (%s); want 1 grant, 0 refused, 0 failed",
					tc.opt, res.Grants, res.Refused, res.Failed(), res.Burst.FirstError)
			}
			// Requests that reach the handler after the refresh carry the
			// new token; at least the first ones were rejected and replayed.
			if tc.opt.Rejected && res.UpstreamRejected == 0 {
				t.Errorf("Storm(%+v): upstream rejected no request; want the stale token rejected", tc.opt)
			}
		})
	}

	t.Run("uploads", func(t *testing.T) {
		opt := UploadOptions{Uploads: 4, Size: 4 << 20, Chunked: true, OAuth2: true, Timeout: 30 * time.Second}
		res, err := env.Uploads(ctx, opt)
		if err != nil {
			t.Fatal(err)
		}
		if res.Burst.OK != int64(opt.Uploads) {
			t.Errorf("Uploads(%+v): %d ok (%s); want %d", opt, res.Burst.OK, res.Burst.FirstError, opt.Uploads)
		}
		if res.PeakRSS <= 0 || res.PeakRSS < res.StartRSS {
			t.Errorf("Uploads(%+v): peak RSS %d after, %d before; want a positive, non-decreasing VmHWM", opt, res.PeakRSS, res.StartRSS)
		}
	})
}

// median is the middle value, or the mean of the two middle ones.
func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []float64
		want float64
	}{
		{name: "empty", in: nil, want: 0},
		{name: "odd", in: []float64{3, 1, 2}, want: 2},
		{name: "even", in: []float64{4, 1, 3, 2}, want: 2.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := median(tc.in); got != tc.want {
				t.Errorf("median(%v) = %v; want %v", tc.in, got, tc.want)
			}
		})
	}
}

// The bodies part measures what it reports, for every upload of up to
// 2 MiB: plain ones, one the upstream does not read, and uploads through a
// revocation, each replayed, every byte checked at the upstream, with a
// grant for each request through a sidecar, none failed, and Expect on
// the requests that should carry it (Bodies' check).
func TestBodiesSmoke(t *testing.T) {
	env := newTestEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	copt := CompareOptions{Rounds: 1, Duration: 300 * time.Millisecond, MaxRequests: 200, Timeout: 30 * time.Second}
	for _, sc := range DefaultBodyScenarios() {
		if sc.Request.BodySize == 0 || sc.Request.BodySize > 2<<20 {
			continue
		}
		t.Run(sc.Name, func(t *testing.T) {
			res, err := env.Bodies(ctx, sc, copt)
			if err != nil {
				t.Fatalf("Bodies() = %v", err)
			}
			for i, s := range res.Comparison.Summary() {
				if s.OK == 0 || s.Failed > 0 {
					t.Errorf("%s: %d ok, %d failed (%s); want all ok", s.Name, s.OK, s.Failed, s.FirstError)
				}
				if i > 0 && sc.Revoked && res.Grants[i] < s.OK-1 {
					t.Errorf("%s: %d grants for %d requests; want one each but the first's (the seeded token serves it)", s.Name, res.Grants[i], s.OK)
				}
				if res.PeakRSS[i] <= 0 {
					t.Errorf("%s: peak RSS %d; want it read", s.Name, res.PeakRSS[i])
				}
			}
		})
	}
}
