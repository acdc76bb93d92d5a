package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"
)

// loadRun is what an openLoad run measured.
type loadRun struct {
	results   tally
	perTarget []tally
	sent      int
	duration  time.Duration // of the schedule: from the first send until ctx ended
	maxBehind time.Duration // the furthest a send fell behind its scheduled time

	mu        sync.Mutex // guards latencies and failures
	latencies []time.Duration
	failures  []failedRequest
}

// failedRequest is a request not answered 200.
type failedRequest struct {
	at     time.Time // when the answer (or the error) came
	target int
	answer string
}

// openLoad sends GET requests to targets in turn, rate per second in all,
// until ctx ends, and returns once every answer is in. It is an open loop:
// each send has its time on a fixed schedule and does not wait for earlier
// answers, so a slow answer does not lower the offered load, as a slow
// sidecar would not slow the connectors that call it. At most maxInFlight
// requests are outstanding; beyond that the schedule falls behind (and
// catches up when slots free), which the achieved rate and maxBehind show.
func openLoad(ctx context.Context, c *http.Client, targets []string, rate, maxInFlight int) *loadRun {
	run := &loadRun{perTarget: make([]tally, len(targets))}
	period := time.Second / time.Duration(rate)
	slots := make(chan struct{}, maxInFlight)
	var wg sync.WaitGroup
	timer := time.NewTimer(0)
	defer timer.Stop()
	start := time.Now()
	for k := 0; ; k++ {
		at := start.Add(time.Duration(k) * period)
		timer.Reset(time.Until(at))
		select {
		case <-ctx.Done():
		case <-timer.C:
		}
		if ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case slots <- struct{}{}:
		}
		if ctx.Err() != nil {
			break
		}
		run.maxBehind = max(run.maxBehind, time.Since(at))
		run.sent++
		target := k % len(targets)
		wg.Go(func() {
			defer func() { <-slots }()
			sent := time.Now()
			r := get(c, targets[target])
			run.record(target, r, time.Since(sent))
		})
	}
	run.duration = time.Since(start)
	wg.Wait()
	return run
}

func (run *loadRun) record(target int, r response, latency time.Duration) {
	run.results.add(r)
	run.perTarget[target].add(r)
	run.mu.Lock()
	defer run.mu.Unlock()
	run.latencies = append(run.latencies, latency)
	if r.err != nil || r.status != http.StatusOK {
		run.failures = append(run.failures, failedRequest{at: time.Now(), target: target, answer: shortAnswer(r)})
	}
}

// shortAnswer is r's status and, for a problem, its detail.
func shortAnswer(r response) string {
	var p problem
	if r.err == nil && r.header.Get("Content-Type") == "application/problem+json" && json.Unmarshal(r.body, &p) == nil {
		return fmt.Sprintf("%d problem: %s", r.status, p.Detail)
	}
	return truncate(r.String(), 200)
}

// failureSummary groups the failed requests by target and answer: how
// many, and from when to when.
func (run *loadRun) failureSummary() []string {
	run.mu.Lock()
	defer run.mu.Unlock()
	type group struct {
		target      int
		answer      string
		count       int
		first, last time.Time
	}
	var groups []*group
	for _, f := range run.failures {
		i := slices.IndexFunc(groups, func(g *group) bool { return g.target == f.target && g.answer == f.answer })
		if i < 0 {
			groups = append(groups, &group{target: f.target, answer: f.answer, first: f.at})
			i = len(groups) - 1
		}
		groups[i].count++
		groups[i].last = f.at
	}
	var lines []string
	for _, g := range groups {
		lines = append(lines, fmt.Sprintf("target %d: %d answers from %s to %s: %s", g.target+1, g.count,
			g.first.Format(time.StampMilli), g.last.Format(time.StampMilli), g.answer))
	}
	return lines
}

// rate is the requests sent per second of the schedule.
func (run *loadRun) rate() float64 { return float64(run.sent) / run.duration.Seconds() }

// percentile returns the latency that the fraction p of answers met.
func (run *loadRun) percentile(p float64) time.Duration {
	run.mu.Lock()
	defer run.mu.Unlock()
	if len(run.latencies) == 0 {
		return 0
	}
	sorted := slices.Sorted(slices.Values(run.latencies))
	return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]
}
