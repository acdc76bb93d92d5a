// Command bench measures what the oauth2_upstream sidecar costs, side by
// side with bare reverse_proxy (and nginx, where installed), on loopback,
// and prints the tables BENCHMARKS.md quotes:
//
//	cd bench && go run ./cmd/bench
//
// It builds ../cmd/caddy, starts everything on kernel-chosen loopback
// ports, stops by itself (about 10 minutes with the defaults on two cores)
// and kills every process it started.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/oauth2upstream/caddy-oauth2-upstream/bench"
)

func main() {
	opt := bench.DefaultOptions()
	flag.StringVar(&opt.RepoDir, "repo", opt.RepoDir, "repository root, whose cmd/caddy is built")
	flag.IntVar(&opt.Rounds, "rounds", opt.Rounds, "measured rounds per scenario (each runs every server once)")
	flag.DurationVar(&opt.RoundDuration, "round", opt.RoundDuration, "duration of one server's run in a round")
	flag.DurationVar(&opt.Warmup, "warmup", opt.Warmup, "unmeasured run of each server before a scenario's rounds")
	flag.BoolVar(&opt.Nginx, "nginx", opt.Nginx, "compare with nginx too, when it is on PATH")
	flag.IntVar(&opt.StormRequests, "storm", opt.StormRequests, "requests arriving at once in a refresh storm")
	flag.IntVar(&opt.Uploads, "uploads", opt.Uploads, "concurrent uploads")
	flag.Int64Var(&opt.UploadSize, "upload-size", opt.UploadSize, "bytes of each upload")
	flag.IntVar(&opt.ScaleRounds, "scale-rounds", opt.ScaleRounds, "measured rounds of the scale part's throughput comparison")
	flag.DurationVar(&opt.ScaleRoundDuration, "scale-round", opt.ScaleRoundDuration, "duration of one sidecar's run in a round of the scale part")
	flag.Float64Var(&opt.HerdRate, "herd-rate", opt.HerdRate, "requests a second through the largest herd's sidecar(s), cycling its accounts")
	flag.DurationVar(&opt.HerdLatency, "herd-latency", opt.HerdLatency, "the herd token endpoint's answer time")
	flag.IntVar(&opt.Replicas, "replicas", opt.Replicas, "sidecars sharing Redis in the replicas part")
	scaleSizes := flag.String("scale-sizes", joinInts(opt.ScaleSizes), "key sets of the sidecars of the scale part, the first the baseline")
	herdSizes := flag.String("herd-sizes", joinInts(opt.HerdSizes), "key sets of the herds, run at the same time")
	scenarios := flag.String("scenarios", "", "run only the throughput and bodies scenarios whose name matches this regular expression")
	parts := flag.String("parts", strings.Join(opt.Parts, ","), "measurements to run, among throughput,storm,uploads,bodies,scale,herd,replicas")
	flag.StringVar(&opt.ProfileDir, "pprof", "", "write CPU profiles of the compared Caddys, one per scenario, and the largest scale sidecar's heap and list-walk profiles, to this directory")
	flag.StringVar(&opt.CandidateRepo, "candidate", "", "another tree of the repository whose Caddy is compared as a third server")
	out := flag.String("o", "", "also write the report to this file")
	flag.Parse()
	opt.Parts = strings.Split(*parts, ",")
	var err error
	if opt.ScaleSizes, err = parseInts(*scaleSizes); err == nil {
		opt.HerdSizes, err = parseInts(*herdSizes)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if *scenarios != "" {
		re, err := regexp.Compile(*scenarios)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: -scenarios:", err)
			os.Exit(2)
		}
		opt.Scenarios = slices.DeleteFunc(opt.Scenarios, func(sc bench.Scenario) bool { return !re.MatchString(sc.Name) })
		opt.BodyScenarios = slices.DeleteFunc(opt.BodyScenarios, func(sc bench.BodyScenario) bool { return !re.MatchString(sc.Name) })
	}
	if opt.ProfileDir != "" {
		if err := os.MkdirAll(opt.ProfileDir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, opt)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	rep.WriteMarkdown(os.Stdout)
	if *out != "" {
		f, err := os.Create(*out)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		rep.WriteMarkdown(f)
		if err := f.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

// parseInts reads a comma-separated list of positive whole numbers.
func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q: want positive whole numbers separated by commas", s)
		}
		out = append(out, n)
	}
	return out, nil
}
