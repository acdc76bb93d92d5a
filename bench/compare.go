package bench

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Target is one server under test in a side-by-side comparison.
type Target struct {
	Name     string
	Proc     *Process
	Upstream *Upstream
	// measureCPU: the server is one process whose CPU time /proc shows
	// (nginx's work is done by its workers).
	measureCPU bool
	// Accounts are the X-Account values its requests carry in turn, for
	// a sidecar that selects the key set by that header; none: no header.
	Accounts []string
}

// Scenario is one load shape of a comparison.
type Scenario struct {
	Name    string
	Request Request
	Conns   int
}

// CompareOptions bounds a comparison.
type CompareOptions struct {
	Rounds      int           // measured rounds; each runs every target once
	Duration    time.Duration // of one target's run in a round
	Warmup      time.Duration // an unmeasured run of each target first; 0 for none
	MaxRequests int64         // bound on the requests of one run
	Timeout     time.Duration // bound on one request
	Progress    io.Writer
	// ProfileDir, when set, receives a CPU profile of each Caddy that
	// serves its admin API, taken during its first measured round (which
	// the profiler slows a little, every server alike).
	ProfileDir string
	// Rotate starts each round with the next target (A B C, B C A, ...),
	// so that no target always runs first after a pause.
	Rotate bool
}

// Comparison holds the runs of every target, round by round. Targets run
// one after the other within a round (A B A B ...), so that both see the
// same state of a shared, noisy machine, and ratios are taken per round.
type Comparison struct {
	Scenario Scenario
	Targets  []string
	Rounds   [][]RoundResult // [round][target]
}

// Compare drives each target with sc in turn, opt.Rounds times.
func Compare(ctx context.Context, targets []*Target, sc Scenario, opt CompareOptions) (*Comparison, error) {
	load := LoadOptions{Conns: sc.Conns, Duration: opt.Warmup, MaxRequests: opt.MaxRequests, Timeout: opt.Timeout}
	c := &Comparison{Scenario: sc}
	for _, t := range targets {
		c.Targets = append(c.Targets, t.Name)
		load.Accounts = t.Accounts
		if opt.Warmup > 0 {
			if _, err := RunLoad(ctx, t.Proc.Addr, sc.Request, load); err != nil {
				return nil, fmt.Errorf("%s, %s warm-up: %w", sc.Name, t.Name, err)
			}
		}
	}
	load.Duration = opt.Duration
	for round := range opt.Rounds {
		results := make([]RoundResult, len(targets))
		for k := range targets {
			i := k
			if opt.Rotate {
				i = (k + round) % len(targets)
			}
			t := targets[i]
			profile := ""
			if opt.ProfileDir != "" && round == 0 && t.Proc.AdminAddr != "" {
				profile = filepath.Join(opt.ProfileDir, fileName(sc.Name+"-"+t.Name)+".cpu.pprof")
			}
			load.Accounts = t.Accounts
			res, err := runMeasured(ctx, t, sc.Request, load, profile)
			if err != nil {
				return nil, fmt.Errorf("%s, %s round %d: %w", sc.Name, t.Name, round+1, err)
			}
			results[i] = res
			if opt.Progress != nil {
				fmt.Fprintf(opt.Progress, "  %-16s round %d %-14s %8.0f req/s  p50 %-9s p99 %-9s failed %d\n",
					sc.Name, round+1, t.Name, res.RPS(), res.Percentile(0.50).Round(time.Microsecond),
					res.Percentile(0.99).Round(time.Microsecond), res.Failed)
			}
		}
		c.Rounds = append(c.Rounds, results)
	}
	return c, nil
}

// runMeasured is one load run of t, with the server's CPU time during it,
// and its CPU profile written to profile when that is not empty.
func runMeasured(ctx context.Context, t *Target, req Request, load LoadOptions, profile string) (RoundResult, error) {
	var before time.Duration
	if t.measureCPU {
		before, _ = t.Proc.CPUTime()
	}
	profiled := make(chan error, 1)
	if profile != "" {
		go func() { profiled <- t.Proc.CPUProfile(ctx, load.Duration, profile) }()
	} else {
		profiled <- nil
	}
	res, err := RunLoad(ctx, t.Proc.Addr, req, load)
	if perr := <-profiled; err == nil && perr != nil {
		err = fmt.Errorf("profiling %s: %w", t.Name, perr)
	}
	if err != nil {
		return res, err
	}
	if t.measureCPU {
		if after, err := t.Proc.CPUTime(); err == nil {
			res.CPU = after - before
		}
	}
	return res, nil
}

// TargetSummary is one target's medians over the rounds, and its paired
// comparison with the baseline (the first target, unless SummaryAgainst
// names another) of the same rounds.
type TargetSummary struct {
	Name           string
	RPS            float64
	P50, P99       time.Duration
	CPUPerRequest  time.Duration // 0 when not measured
	CPURatio       float64       // median over rounds of CPU per request / baseline's; 0 when not measured
	RatioRPS       float64       // median over rounds of RPS / baseline RPS
	RatioMin       float64       // the smallest and largest per-round ratio
	RatioMax       float64
	AddedP50       time.Duration // median over rounds of P50 - baseline P50
	AddedP99       time.Duration
	OK, Failed     int64 // summed over rounds
	FirstError     string
	RoundsMeasured int
}

// Summary reduces the rounds to one line a target.
func (c *Comparison) Summary() []TargetSummary { return c.SummaryAgainst(0) }

// SummaryAgainst is Summary with the target of index baseline as the
// baseline.
func (c *Comparison) SummaryAgainst(baseline int) []TargetSummary {
	out := make([]TargetSummary, len(c.Targets))
	for i, name := range c.Targets {
		s := TargetSummary{Name: name, RoundsMeasured: len(c.Rounds)}
		var rps, ratio, cpuRatio []float64
		var p50, p99, cpu, add50, add99 []time.Duration
		for _, round := range c.Rounds {
			r, base := round[i], round[baseline]
			rps = append(rps, r.RPS())
			p50 = append(p50, r.Percentile(0.50))
			p99 = append(p99, r.Percentile(0.99))
			cpu = append(cpu, r.CPUPerRequest())
			if base.CPUPerRequest() > 0 && r.CPUPerRequest() > 0 {
				cpuRatio = append(cpuRatio, float64(r.CPUPerRequest())/float64(base.CPUPerRequest()))
			}
			ratio = append(ratio, r.RPS()/base.RPS())
			add50 = append(add50, r.Percentile(0.50)-base.Percentile(0.50))
			add99 = append(add99, r.Percentile(0.99)-base.Percentile(0.99))
			s.OK += r.OK
			s.Failed += r.Failed
			if s.FirstError == "" {
				s.FirstError = r.FirstError
			}
		}
		s.RPS, s.RatioRPS = median(rps), median(ratio)
		s.RatioMin, s.RatioMax = slices.Min(ratio), slices.Max(ratio)
		s.P50, s.P99, s.CPUPerRequest, s.CPURatio = median(p50), median(p99), median(cpu), median(cpuRatio)
		s.AddedP50, s.AddedP99 = median(add50), median(add99)
		out[i] = s
	}
	return out
}

// fileName makes s safe as a file name.
func fileName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, s)
}

// median of a non-empty list (the mean of the middle two for an even one).
func median[T float64 | time.Duration](v []T) T {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
