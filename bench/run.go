package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Options is what cmd/bench runs. DefaultOptions are the numbers.
type Options struct {
	RepoDir string // the repository root, whose cmd/caddy is built

	// Parts are the measurements to run: "throughput", "storm",
	// "uploads", "bodies", "scale", "herd", "replicas".
	Parts []string

	Scenarios []Scenario
	// BodyScenarios are the bodies part's (bodies.go), run with Rounds
	// of RoundDuration too.
	BodyScenarios []BodyScenario
	Rounds        int
	RoundDuration time.Duration
	Warmup        time.Duration
	MaxRequests   int64 // per run
	Nginx         bool  // compare with nginx too, when it is on PATH

	StormRequests int
	StormLatency  time.Duration

	Uploads    int
	UploadSize int64

	// ScaleSizes are the key sets of the sidecars compared in the scale
	// part, the first the baseline; ScaleUnknown distinct names that are
	// not stored are asked of the largest; the admin list is walked
	// ListLimit at a time; TokenSizes are the access token sizes of the
	// in-process memory measurement (0: the harness's, about 30 bytes).
	ScaleSizes   []int
	ScaleUnknown int
	// ScaleRounds of ScaleRoundDuration each: the sidecars take turns
	// starting a round.
	ScaleRounds        int
	ScaleRoundDuration time.Duration
	// ListWalks are the walks through the whole admin list.
	ListWalks  int
	ListLimit  int
	TokenSizes []int

	// HerdSizes are the key sets of the herds, run at the same time,
	// each with its own sidecar; the largest gets HerdRate requests a
	// second, the others as many as make every account as frequent.
	// ReplicaKeySets expire together on Replicas sidecars sharing Redis.
	// The tokens expire from HerdExpiryStart after the seed, over
	// HerdExpiryWindow; the token endpoint answers in HerdLatency.
	HerdSizes        []int
	HerdRate         float64
	HerdLatency      time.Duration
	HerdExpiryStart  time.Duration
	HerdExpiryWindow time.Duration
	Replicas         int
	ReplicaKeySets   int

	// ProfileDir, when set, receives CPU profiles of the Caddys, one per
	// scenario (go tool pprof <file>).
	ProfileDir string

	// CandidateRepo, when set, is another tree of the repository (with a
	// patched handler, say) whose Caddy runs as a third server.
	CandidateRepo string

	Progress io.Writer
}

// DefaultOptions: 64 connections, 5 rounds of 3 s per target and scenario,
// a 1000-request storm against a 50 ms token endpoint, 50 uploads of
// 100 MiB; sidecars over 1, 100 and 10,000 key sets selected by header;
// herds of 1, 100 and 10,000 key sets expiring within the same minute
// against a 20 ms token endpoint that answers 429 above 50 grants in
// flight, and 10,000 on three replicas sharing Redis.
func DefaultOptions() Options {
	return Options{
		RepoDir: "..",
		Parts:   []string{"throughput", "storm", "uploads", "bodies", "scale", "herd", "replicas"},
		Scenarios: []Scenario{
			{Name: "GET 1 KiB", Request: Request{Method: "GET", Path: "/get"}, Conns: 64},
			{Name: "POST 64 KiB", Request: Request{Method: "POST", Path: "/post", BodySize: 64 << 10}, Conns: 64},
			{Name: "POST 1 MiB", Request: Request{Method: "POST", Path: "/post", BodySize: 1 << 20}, Conns: 64},
			// One connection: the latency the handler adds to a request,
			// without the queueing that 64 connections on two cores add.
			{Name: "GET 1 KiB, 1 conn", Request: Request{Method: "GET", Path: "/get"}, Conns: 1},
		},
		BodyScenarios: DefaultBodyScenarios(),
		Rounds:        5,
		RoundDuration: 3 * time.Second,
		Warmup:        time.Second,
		MaxRequests:   10_000_000,
		Nginx:         true,
		StormRequests: 1000,
		StormLatency:  50 * time.Millisecond,
		Uploads:       50,
		UploadSize:    100 << 20,

		ScaleSizes:         []int{1, 100, 10_000},
		ScaleUnknown:       20_000,
		ScaleRounds:        12,
		ScaleRoundDuration: 2 * time.Second,
		ListWalks:          3,
		ListLimit:          100,
		TokenSizes:         []int{0, 1500},
		HerdSizes:          []int{1, 100, 10_000},
		HerdRate:           2000,
		HerdLatency:        20 * time.Millisecond,
		HerdExpiryStart:    40 * time.Second,
		HerdExpiryWindow:   time.Minute,
		Replicas:           3,
		ReplicaKeySets:     10_000,

		Progress: os.Stderr,
	}
}

// requestTimeout bounds any single request of a run.
const requestTimeout = 60 * time.Second

// Run builds Caddy and runs every measurement, stopping every process it
// started before it returns.
func Run(ctx context.Context, opt Options) (*Report, error) {
	dir, err := os.MkdirTemp("", "oauth2-upstream-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	rep := &Report{Started: time.Now(), Machine: describeMachine(), Options: opt}
	progress := opt.Progress
	if progress == nil {
		progress = io.Discard
	}

	fmt.Fprintf(progress, "building Caddy from %s/cmd/caddy\n", opt.RepoDir)
	bin, err := BuildCaddy(ctx, opt.RepoDir, dir)
	if err != nil {
		return nil, err
	}
	env := &Env{CaddyBin: bin, Dir: filepath.Join(dir, "run"), Admin: opt.ProfileDir != ""}
	if opt.CandidateRepo != "" {
		fmt.Fprintf(progress, "building the candidate Caddy from %s/cmd/caddy\n", opt.CandidateRepo)
		candidateDir := filepath.Join(dir, "candidate")
		if err := os.Mkdir(candidateDir, 0o700); err != nil {
			return nil, err
		}
		if env.CandidateBin, err = BuildCaddy(ctx, opt.CandidateRepo, candidateDir); err != nil {
			return nil, err
		}
	}

	if slices.Contains(opt.Parts, "throughput") {
		if err := rep.runThroughput(ctx, env, opt, progress); err != nil {
			return nil, err
		}
	}
	if slices.Contains(opt.Parts, "storm") {
		if err := rep.runStorms(ctx, env, opt, progress); err != nil {
			return nil, err
		}
	}
	if slices.Contains(opt.Parts, "uploads") {
		if err := rep.runUploads(ctx, env, opt, progress); err != nil {
			return nil, err
		}
	}
	if slices.Contains(opt.Parts, "bodies") {
		if err := rep.runBodies(ctx, env, opt, progress); err != nil {
			return nil, err
		}
	}
	if slices.Contains(opt.Parts, "scale") {
		if err := rep.runScale(ctx, env, opt, progress); err != nil {
			return nil, err
		}
	}
	if slices.Contains(opt.Parts, "herd") {
		if err := rep.runHerds(ctx, env, opt, progress); err != nil {
			return nil, err
		}
	}
	if slices.Contains(opt.Parts, "replicas") {
		if err := rep.runReplicas(ctx, env, opt, progress); err != nil {
			return nil, err
		}
	}
	rep.Elapsed = time.Since(rep.Started)
	return rep, nil
}

// runStorms runs a storm in each refresh mode, and one the upstream's 401
// reveals.
func (rep *Report) runStorms(ctx context.Context, env *Env, opt Options, progress io.Writer) error {
	for _, s := range []StormOptions{
		{Refresh: "proactive"},
		{Refresh: "reactive"},
		{Refresh: "reactive", Rejected: true},
	} {
		s.Requests, s.Latency, s.Timeout = opt.StormRequests, opt.StormLatency, requestTimeout
		fmt.Fprintf(progress, "storm: %d requests, refresh %s, rejected=%v\n", s.Requests, s.Refresh, s.Rejected)
		res, err := env.Storm(ctx, s)
		if err != nil {
			return fmt.Errorf("storm: %w", err)
		}
		rep.Storms = append(rep.Storms, res)
	}
	return nil
}

// runUploads runs the upload burst through bare reverse_proxy, and through
// the handler with and without a Content-Length.
func (rep *Report) runUploads(ctx context.Context, env *Env, opt Options, progress io.Writer) error {
	for _, u := range []UploadOptions{
		{OAuth2: false},
		{OAuth2: true},
		{OAuth2: true, Chunked: true},
	} {
		u.Uploads, u.Size, u.Timeout = opt.Uploads, opt.UploadSize, 5*time.Minute
		fmt.Fprintf(progress, "uploads: %d x %d MiB, oauth2=%v chunked=%v\n", u.Uploads, u.Size>>20, u.OAuth2, u.Chunked)
		res, err := env.Uploads(ctx, u)
		if err != nil {
			return fmt.Errorf("uploads: %w", err)
		}
		rep.Uploads = append(rep.Uploads, res)
	}
	return nil
}

// runThroughput starts the compared servers once and runs every scenario
// against them, side by side.
func (rep *Report) runThroughput(ctx context.Context, env *Env, opt Options, progress io.Writer) error {
	nginx := ""
	if opt.Nginx {
		if nginx = NginxPath(); nginx == "" {
			rep.Notes = append(rep.Notes, "nginx is not on PATH: its column is skipped (the harness never installs it).")
		}
	}
	targets, err := env.StartTargets(ctx, nginx)
	if err != nil {
		return err
	}
	defer targets.Stop()
	copt := CompareOptions{Rounds: opt.Rounds, Duration: opt.RoundDuration, Warmup: opt.Warmup,
		MaxRequests: opt.MaxRequests, Timeout: requestTimeout, Progress: progress, ProfileDir: opt.ProfileDir}
	for _, sc := range opt.Scenarios {
		fmt.Fprintf(progress, "%s, %d connections, %d rounds of %s\n", sc.Name, sc.Conns, opt.Rounds, opt.RoundDuration)
		c, err := Compare(ctx, targets.List, sc, copt)
		if err != nil {
			return err
		}
		rep.Comparisons = append(rep.Comparisons, c)
	}
	return targets.Check()
}
