package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"time"
)

// What the harness asks a Caddy's admin API (CaddySpec.Admin): its heap
// after a GC, and the oauth2_upstream key set list, page by page.

// adminClient talks to the admin APIs of the Caddys under test.
var adminClient = &http.Client{Timeout: time.Minute}

// adminGet GETs path from p's admin API, with the answer's headers.
func (p *Process) adminGet(ctx context.Context, path string) ([]byte, http.Header, error) {
	if p.AdminAddr == "" {
		return nil, nil, fmt.Errorf("%s serves no admin API", p.Name)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.AdminAddr+path, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return body, resp.Header, err
}

// HeapAfterGC lets the connections a load run closed wind down, makes
// Caddy collect garbage (twice: the heap profile's gc=1 runs one) and then
// reads its HeapAlloc from expvar's memstats: the live heap, plus what the
// profile and expvar themselves allocated since the GC (tens of KiB).
func (p *Process) HeapAfterGC(ctx context.Context) (int64, error) {
	time.Sleep(heapSettle)
	for range 2 {
		if _, _, err := p.adminGet(ctx, "/debug/pprof/heap?gc=1"); err != nil {
			return 0, err
		}
	}
	body, _, err := p.adminGet(ctx, "/debug/vars")
	if err != nil {
		return 0, err
	}
	var vars struct {
		MemStats struct{ HeapAlloc int64 } `json:"memstats"`
	}
	if err := json.Unmarshal(body, &vars); err != nil {
		return 0, fmt.Errorf("reading memstats from /debug/vars: %w", err)
	}
	return vars.MemStats.HeapAlloc, nil
}

// heapSettle is how long HeapAfterGC waits first: the server's connection
// goroutines, and their buffers, end when they read the client's close.
const heapSettle = 200 * time.Millisecond

// RSS is the process's resident set size (VmRSS), in bytes.
func (p *Process) RSS() (int64, error) { return readStatusKB(p.Pid(), "VmRSS") }

// ListWalk is a walk through the admin API's key set list.
type ListWalk struct {
	Pages   []time.Duration // how long each page took, in order
	Names   int             // key sets listed
	Largest int             // bytes of the largest page
}

// nextLink finds the next page in a Link header (RFC 8288).
var nextLink = regexp.MustCompile(`<([^>]+)>;\s*rel="next"`)

// WalkKeySets reads GET /oauth2_upstream/key_sets a page of limit at a
// time, following the Link headers, and checks that the names come sorted
// and each once.
func (p *Process) WalkKeySets(ctx context.Context, limit int) (*ListWalk, error) {
	walk := &ListWalk{}
	path := fmt.Sprintf("/oauth2_upstream/key_sets?limit=%d", limit)
	last := ""
	for path != "" {
		start := time.Now()
		body, header, err := p.adminGet(ctx, path)
		walk.Pages = append(walk.Pages, time.Since(start))
		if err != nil {
			return walk, err
		}
		walk.Largest = max(walk.Largest, len(body))
		var page []struct {
			Name  string `json:"name"`
			State string `json:"state"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			return walk, fmt.Errorf("GET %s: %w", path, err)
		}
		if len(page) > limit {
			return walk, fmt.Errorf("GET %s: %d key sets; want at most %d", path, len(page), limit)
		}
		for _, s := range page {
			if s.Name <= last {
				return walk, fmt.Errorf("GET %s: %q after %q; want names sorted, each once", path, s.Name, last)
			}
			last = s.Name
		}
		walk.Names += len(page)
		path = ""
		if m := nextLink.FindStringSubmatch(header.Get("Link")); m != nil {
			path = m[1]
		}
	}
	return walk, nil
}

// Median, Max and Percentile of the page times.
func (w *ListWalk) Median() time.Duration { return median(w.Pages) }
func (w *ListWalk) Max() time.Duration    { return slices.Max(w.Pages) }
func (w *ListWalk) Percentile(p float64) time.Duration {
	return RoundResult{Latencies: slices.Sorted(slices.Values(w.Pages))}.Percentile(p)
}

// Over counts the pages that took longer than d.
func (w *ListWalk) Over(d time.Duration) int {
	n := 0
	for _, p := range w.Pages {
		if p > d {
			n++
		}
	}
	return n
}
