package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// PacedOptions shapes a steady stream of requests that cycles through many
// accounts, as a connector serving them sends it: request k is due at
// k/Rate seconds after the start and selects account k modulo their number.
type PacedOptions struct {
	Addrs    []string // servers; connection i sends to Addrs[i%len(Addrs)]
	Accounts []string // X-Account values, in turn
	Request  Request
	Rate     float64 // requests per second, in all
	Conns    int     // at most this many requests in flight
	Duration time.Duration
	Timeout  time.Duration // bound on one request
}

// PacedResult is what a paced run measured.
type PacedResult struct {
	RoundResult
	Statuses map[int]int64 // answers by status; 0 for transport errors
	// Behind is the most a request started after it was due: the
	// connections were all busy, or the machine was.
	Behind time.Duration
}

// RunPaced sends requests at opt.Rate until opt.Duration has passed or ctx
// ends, on opt.Conns keep-alive connections dialled before the start.
func RunPaced(ctx context.Context, opt PacedOptions) (*PacedResult, error) {
	conns := make([]*conn, opt.Conns)
	for i := range conns {
		conns[i] = newConn(opt.Addrs[i%len(opt.Addrs)], opt.Request, opt.Timeout)
		if err := conns[i].dial(); err != nil {
			for _, c := range conns[:i] {
				c.close()
			}
			return nil, fmt.Errorf("dialling %s: %w", conns[i].addr, err)
		}
	}
	heads := newAccountHeads(opt.Request, opt.Addrs[0], opt.Accounts)
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		results  = make([]RoundResult, len(conns))
		statuses = make([]map[int]int64, len(conns))
		behind   atomic.Int64
	)
	interval := time.Duration(float64(time.Second) / opt.Rate)
	start := time.Now()
	deadline := start.Add(opt.Duration)
	for i, c := range conns {
		statuses[i] = map[int]int64{}
		wg.Go(func() {
			defer c.close()
			res := &results[i]
			for ctx.Err() == nil {
				k := next.Add(1) - 1
				due := start.Add(time.Duration(k) * interval)
				if !due.Before(deadline) {
					return
				}
				if wait := time.Until(due); wait > 0 {
					time.Sleep(wait)
				} else {
					storeMax(&behind, int64(-wait))
				}
				c.head = heads.heads[k%int64(len(heads.heads))]
				t0 := time.Now()
				status, err := c.do()
				lat := time.Since(t0)
				statuses[i][status]++
				if err == nil && status < 300 {
					res.OK++
					res.Latencies = append(res.Latencies, lat)
					continue
				}
				res.Failed++
				if res.FirstError == "" {
					res.FirstError = describe(status, err)
				}
			}
		})
	}
	wg.Wait()
	out := &PacedResult{RoundResult: mergeResults(results, time.Since(start)), Statuses: map[int]int64{},
		Behind: time.Duration(behind.Load())}
	for _, s := range statuses {
		for status, n := range s {
			out.Statuses[status] += n
		}
	}
	return out, ctx.Err()
}

// Touch sends n requests, conns at a time, cycling through the accounts,
// and fails unless every one is answered 2xx: it makes a sidecar load
// every key set (n at least their number). Sidecars compared by what
// touching them left behind get the same n and conns, so that they hold
// the same connections.
func Touch(ctx context.Context, addr string, accounts []string, n, conns int, timeout time.Duration) error {
	res, err := RunPaced(ctx, PacedOptions{Addrs: []string{addr}, Accounts: accounts,
		Request: Request{Method: "GET", Path: "/touch"}, Rate: 1e9, Conns: conns,
		Duration: time.Duration(n) * time.Nanosecond, Timeout: timeout})
	if err != nil {
		return err
	}
	if res.OK != int64(n) {
		return fmt.Errorf("touching %d accounts: %d ok, %d failed (%s)", len(accounts), res.OK, res.Failed, res.FirstError)
	}
	return nil
}
