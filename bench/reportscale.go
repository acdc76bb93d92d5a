package bench

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
)

// Targets of the scale, herd and replicas parts, as BENCHMARKS.md states
// them.
const (
	targetRatioScale    = 0.95
	targetHeapPerKeySet = 4 << 10
	targetListPage      = 10 * time.Millisecond
	// Names asked for that are not stored must not grow the heap. Keeping
	// anything per name costs at least its string and a map entry (50 B
	// and more); what a GC leaves below targetUnknownPerName a name is
	// the measurement's noise (Caddy's heap, read through its admin API,
	// moves by tens of KiB between two readings with nothing between).
	targetUnknownPerName = 16
)

// maxInFlight is the bound the token endpoint must see per sidecar: the
// default of max_concurrent_grants, which the harness leaves.
const maxInFlight = credential.DefaultMaxConcurrentGrants

func (rep *Report) writeScaleTargets(w io.Writer) {
	if s := rep.Scale; s != nil && len(s.Sidecars) > 1 {
		last := len(s.Sidecars) - 1
		sum := s.Comparison.Summary()[last]
		target(w, fmt.Sprintf("req/s ratio %d / %d key sets >= %.2f (header-selected, GET 1 KiB, %d conns)",
			s.Sidecars[last].KeySets, s.Sidecars[0].KeySets, targetRatioScale, s.Conns),
			fmt.Sprintf("%.3f (%.3f-%.3f)", sum.RatioRPS, sum.RatioMin, sum.RatioMax), sum.RatioRPS >= targetRatioScale)
		for _, m := range s.Engine {
			target(w, fmt.Sprintf("heap per loaded idle key set <= %s (engine in-process, runtime/metrics, %d key sets, access token %d B)",
				kibibytes(targetHeapPerKeySet), m.KeySets, m.AccessTokenSize),
				bytesPer(m.PerKeySet()), m.PerKeySet() <= targetHeapPerKeySet)
		}
		per := s.HeapPerKeySet(last)
		target(w, fmt.Sprintf("heap per loaded idle key set <= %s (Caddy HeapAlloc after GC, %d key sets)", kibibytes(targetHeapPerKeySet), s.Sidecars[last].KeySets),
			bytesPer(per), per <= targetHeapPerKeySet)
		for _, m := range s.Engine {
			if m.AccessTokenSize == s.Engine[0].AccessTokenSize && m.KeySets == s.Sidecars[last].KeySets {
				per := float64(m.UnknownGrowth()) / float64(m.Unknown)
				target(w, fmt.Sprintf("no heap growth from %d unknown names (engine in-process: < %d B a name)", m.Unknown, targetUnknownPerName),
					fmt.Sprintf("%s (%.1f B a name)", signedBytes(m.UnknownGrowth()), per), per < targetUnknownPerName)
			}
		}
		if u := s.UnknownHeap; u.Names > 0 {
			growth := u.HeapAfter - u.HeapBefore
			per := float64(growth) / float64(u.Names)
			target(w, fmt.Sprintf("no heap growth from %d unknown names (Caddy: < %d B a name), key sets listed after", u.Names, targetUnknownPerName),
				fmt.Sprintf("%s (%.1f B a name), %d listed", signedBytes(growth), per, u.ListedAfter),
				per < targetUnknownPerName && u.ListedAfter == u.ListedBeforeWant)
		}
		list := s.Sidecars[last].List
		target(w, fmt.Sprintf("admin list page (limit %d) <= %s, %d key sets: median, p90, max of %d pages (over %s)",
			s.ListLimit, targetListPage, s.Sidecars[last].KeySets, len(list.Pages), targetListPage),
			fmt.Sprintf("%s, %s, %s (%d)", millis(list.Median()), millis(list.Percentile(0.9)), millis(list.Max()), list.Over(targetListPage)),
			list.Max() <= targetListPage)
	}
	for _, h := range append(slices.Clone(rep.Herds), rep.Replicas) {
		if h == nil || h.KeySets < 1000 {
			continue
		}
		name := fmt.Sprintf("herd, %d key sets", h.KeySets)
		if h.Replicas > 1 {
			name += fmt.Sprintf(", %d replicas on Redis", h.Replicas)
		}
		target(w, name+": no expired token upstream, no failed request, no 429",
			fmt.Sprintf("%d expired, %d failed, %d 429s", h.Expired, h.Traffic.Failed, h.Grants.Throttled),
			h.Expired == 0 && h.Traffic.Failed == 0 && h.Grants.Throttled == 0)
		most := slices.Max(slices.Collect(maps.Values(h.Grants.MostInFlightReplica)))
		target(w, fmt.Sprintf("%s: grants in flight per sidecar <= %d", name, maxInFlight),
			fmt.Sprint(most), most <= maxInFlight)
		target(w, name+": one grant per key set, none refused",
			fmt.Sprintf("%d granted once, %d more than once, %d never, %d refused", h.Waits.Granted-h.Waits.GrantedTwice,
				h.Waits.GrantedTwice, h.Waits.NotGranted, h.Grants.Refused),
			h.Waits.GrantedTwice == 0 && h.Waits.NotGranted == 0 && h.Grants.Refused == 0)
	}
}

func (rep *Report) writeScaleParts(w io.Writer) {
	if rep.Scale != nil || len(rep.Herds) > 0 {
		rep.writeCostTable(w)
	}
	if s := rep.Scale; s != nil {
		writeScaleThroughput(w, s)
		writeMemory(w, s)
		writeLists(w, s)
	}
	if len(rep.Herds) > 0 {
		fmt.Fprintf(w, "### Herd (tokens expiring within %s, from %s after the seed; token endpoint %s, 429 above %d in flight)\n\n",
			rep.Herds[0].ExpiryWindow, rep.Herds[0].ExpiryStart, rep.Herds[0].Latency, rep.Herds[0].RateLimit)
		writeHerds(w, rep.Herds)
		for _, h := range rep.Herds {
			if h.KeySets == slices.Max(rep.Options.HerdSizes) {
				writeCurve(w, h)
			}
		}
	}
	if h := rep.Replicas; h != nil {
		fmt.Fprintf(w, "### Replicas (%d sidecars, one redis-server, %d key sets)\n\n", h.Replicas, h.KeySets)
		writeHerds(w, []*HerdResult{h})
		fmt.Fprintln(w, "| replica | token requests | most in flight |")
		fmt.Fprintln(w, "|---|---|---|")
		for _, r := range slices.Sorted(maps.Keys(h.Grants.RequestsReplica)) {
			fmt.Fprintf(w, "| %s | %d | %d |\n", r, h.Grants.RequestsReplica[r], h.Grants.MostInFlightReplica[r])
		}
		fmt.Fprintln(w)
		writeCurve(w, h)
	}
}

// writeCostTable is the "cost as work grows" table: one row per key set
// count that any part measured.
func (rep *Report) writeCostTable(w io.Writer) {
	sizes := map[int]bool{}
	if s := rep.Scale; s != nil {
		for _, n := range s.Sizes {
			sizes[n] = true
		}
	}
	for _, h := range rep.Herds {
		sizes[h.KeySets] = true
	}
	fmt.Fprintln(w, "### Cost as work grows")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| key sets | heap per key set: engine (runtime/metrics) | Caddy heap after GC, all loaded (per key set) | Caddy RSS, all loaded | req/s vs 1 key set (min-max) | herd: grants/s, peak second (mean over the busy seconds) | herd: most in flight | list page (limit 100): median / max (pages) |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, n := range slices.Sorted(maps.Keys(sizes)) {
		engine, heap, rss, ratio, grants, inFlight, list := "", "", "", "", "", "", ""
		if s := rep.Scale; s != nil {
			for _, m := range s.Engine {
				if m.KeySets == n && m.AccessTokenSize == s.Engine[0].AccessTokenSize {
					engine = bytesPer(m.PerKeySet())
				}
			}
			if i := slices.Index(s.Sizes, n); i >= 0 {
				sc := s.Sidecars[i]
				heap = mebibytesFine(sc.HeapLoaded)
				if i > 0 {
					heap += " (" + bytesPer(s.HeapPerKeySet(i)) + ")"
				}
				rss = mebibytes(sc.RSSLoaded)
				sum := s.Comparison.Summary()[i]
				ratio = fmt.Sprintf("%.3f (%.3f-%.3f)", sum.RatioRPS, sum.RatioMin, sum.RatioMax)
				if i == 0 {
					ratio = "1 (baseline)"
				}
				list = fmt.Sprintf("%s / %s (%d)", millis(sc.List.Median()), millis(sc.List.Max()), len(sc.List.Pages))
			}
		}
		for _, h := range rep.Herds {
			if h.KeySets == n {
				peak, mean := curveRates(h.Curve)
				grants = fmt.Sprintf("%d (%.1f)", peak, mean)
				inFlight = fmt.Sprint(h.Grants.MostInFlight)
			}
		}
		fmt.Fprintf(w, "| %d | %s | %s | %s | %s | %s | %s | %s |\n", n, engine, heap, rss, ratio, grants, inFlight, list)
	}
	fmt.Fprintln(w)
}

func writeScaleThroughput(w io.Writer, s *ScaleResult) {
	c := s.Comparison
	fmt.Fprintf(w, "### Key sets selected by header (%s, %d conns; median of %d rounds of %s, side by side)\n\n",
		c.Scenario.Name, c.Scenario.Conns, s.Compare.Rounds, s.Compare.Duration)
	fmt.Fprintln(w, "| server | req/s | ratio vs first (min-max) | p50 | p99 | server CPU/req (vs first) | failed |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for i, sum := range c.Summary() {
		ratio, cpu := "(baseline)", micros(sum.CPUPerRequest)
		if i > 0 {
			ratio = fmt.Sprintf("%.3f (%.3f-%.3f)", sum.RatioRPS, sum.RatioMin, sum.RatioMax)
			cpu += fmt.Sprintf(" (%.2fx)", sum.CPURatio)
		}
		failed := fmt.Sprint(sum.Failed)
		if sum.FirstError != "" {
			failed += " (" + sum.FirstError + ")"
		}
		fmt.Fprintf(w, "| %s | %.0f | %s | %s | %s | %s | %s |\n", sum.Name, sum.RPS, ratio, micros(sum.P50), micros(sum.P99), cpu, failed)
	}
	fmt.Fprintln(w)
}

func writeMemory(w io.Writer, s *ScaleResult) {
	fmt.Fprintln(w, "### Memory per key set")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "In this process: a `credential.Engine` over a file keystore, `/gc/heap/live:bytes` after two `runtime.GC()`.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| key sets | access token | stored document | live heap before | all loaded | per key set | unknown names asked | growth after them |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, m := range s.Engine {
		fmt.Fprintf(w, "| %d | %d B | %d B | %s | %s | %s | %d | %s |\n", m.KeySets, m.AccessTokenSize, m.DocumentSize,
			mebibytesFine(m.Before), mebibytesFine(m.Loaded), bytesPer(m.PerKeySet()), m.Unknown, signedBytes(m.UnknownGrowth()))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "In Caddy: HeapAlloc (expvar) after `/debug/pprof/heap?gc=1` twice, just started and after one request per key set; per key set less the baseline sidecar's change.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| key sets | heap started | heap all loaded | change | per key set | RSS started | RSS all loaded |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for i, sc := range s.Sidecars {
		per := ""
		if i > 0 {
			per = bytesPer(s.HeapPerKeySet(i))
		}
		fmt.Fprintf(w, "| %d | %s | %s | %s | %s | %s | %s |\n", sc.KeySets, mebibytesFine(sc.HeapStarted), mebibytesFine(sc.HeapLoaded),
			signedBytes(sc.HeapLoaded-sc.HeapStarted), per, mebibytes(sc.RSSStarted), mebibytes(sc.RSSLoaded))
	}
	fmt.Fprintln(w)
	if u := s.UnknownHeap; u.Names > 0 {
		fmt.Fprintf(w, "Names that are not stored, asked of the %d-key-set Caddy once each: %d distinct, answered %s; heap after GC %s before, %s after (%s); the admin list shows %d key sets after.\n\n",
			u.ListedBeforeWant, u.Names, statuses(u.Statuses), mebibytesFine(u.HeapBefore), mebibytesFine(u.HeapAfter),
			signedBytes(u.HeapAfter-u.HeapBefore), u.ListedAfter)
	}
}

func writeLists(w io.Writer, s *ScaleResult) {
	fmt.Fprintf(w, "### Admin list (`GET /oauth2_upstream/key_sets?limit=%d`, following `Link: rel=\"next\"`, %d walks through the whole list after the throughput rounds)\n\n",
		s.ListLimit, max(s.ListWalks, 1))
	fmt.Fprintf(w, "| key sets | pages | median | p90 | max | pages over %s | largest page |\n", targetListPage)
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, sc := range s.Sidecars {
		l := sc.List
		fmt.Fprintf(w, "| %d | %d | %s | %s | %s | %d | %d B |\n", sc.KeySets, len(l.Pages), millis(l.Median()), millis(l.Percentile(0.9)),
			millis(l.Max()), l.Over(targetListPage), l.Largest)
	}
	fmt.Fprintln(w)
	if len(s.Engine) > 0 {
		fmt.Fprintf(w, "The same walk inside the engine (this process; `StatusesAfter(after, %d)`, `MergeStatuses`, JSON of the page; no HTTP):\n\n", listPageSize+1)
		fmt.Fprintln(w, "| key sets | access token | pages | median | max |")
		fmt.Fprintln(w, "|---|---|---|---|---|")
		for _, m := range s.Engine {
			fmt.Fprintf(w, "| %d | %d B | %d | %s | %s |\n", m.KeySets, m.AccessTokenSize, len(m.ListPages),
				millis(median(m.ListPages)), millis(slices.Max(m.ListPages)))
		}
		fmt.Fprintln(w)
	}
}

func writeHerds(w io.Writer, herds []*HerdResult) {
	fmt.Fprintln(w, "| key sets | requests (req/s) | failed | latency p50 / p99 / max | expired tokens upstream (latest) | grants (causes, as logged) | 429s | refused | most in flight | grant + store, as logged: median / p90 / max | accounts refreshed after expiry | wait from window start: least / median / slowest (account) | grant vs expiry: median / latest | load average at the end |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, h := range herds {
		granted := 0
		for _, a := range h.Grants.Arrivals {
			granted += len(a)
		}
		wt, t, d := h.Waits, h.Traffic, h.Sidecar.Durations
		took := ""
		if len(d) > 0 {
			sorted := RoundResult{Latencies: slices.Sorted(slices.Values(d))}
			took = fmt.Sprintf("%s / %s / %s", millis(sorted.Percentile(0.5)), millis(sorted.Percentile(0.9)), millis(slices.Max(d)))
		}
		fmt.Fprintf(w, "| %d | %d (%.1f) | %d %s | %s / %s / %s | %d (%s) | %d %s | %d | %d | %d | %s | %d | %s / %s / %s (%s) | %s / %s | %s |\n",
			h.KeySets, t.OK+t.Failed, h.Rate, t.Failed, statuses(t.Statuses),
			millis(t.Percentile(0.5)), millis(t.Percentile(0.99)), millis(t.Percentile(1)),
			h.Expired, millis(h.MostExpired), granted, causes(h.Sidecar.Causes), h.Grants.Throttled, h.Grants.Refused, h.Grants.MostInFlight,
			took, wt.AfterExpiry, seconds(wt.FromWindowMin), seconds(wt.FromWindowMedian), seconds(wt.FromWindowMax), wt.SlowestAccount,
			seconds(wt.FromExpiryMedian), seconds(wt.FromExpiryMax), h.LoadAverage)
	}
	fmt.Fprintln(w)
}

// writeCurve writes the grants that reached the token endpoint in each
// second since the seed, ten seconds a row.
func writeCurve(w io.Writer, h *HerdResult) {
	fmt.Fprintf(w, "Grants per second, %d key sets (second 0: the seed; tokens expire in seconds %d-%d; proactive windows open 15-30 s before):\n\n",
		h.KeySets, int(h.ExpiryStart/time.Second), int((h.ExpiryStart+h.ExpiryWindow)/time.Second))
	fmt.Fprintln(w, "| seconds | grants in each second |")
	fmt.Fprintln(w, "|---|---|")
	for start := 0; start < len(h.Curve); start += 10 {
		row := h.Curve[start:min(start+10, len(h.Curve))]
		fmt.Fprintf(w, "| %d-%d | %s |\n", start, start+len(row)-1, strings.Trim(fmt.Sprint(row), "[]"))
	}
	fmt.Fprintln(w)
}

// curveRates are the busiest second's grants and the mean over the
// seconds between the first and the last grant.
func curveRates(curve []int) (peak int, mean float64) {
	first, last, total := -1, -1, 0
	for s, n := range curve {
		if n > 0 {
			if first < 0 {
				first = s
			}
			last, total = s, total+n
		}
		peak = max(peak, n)
	}
	if first < 0 {
		return 0, 0
	}
	return peak, float64(total) / float64(last-first+1)
}

func statuses(m map[int]int64) string {
	var parts []string
	for _, s := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%d: %d", s, m[s]))
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// causes are the logged causes of grants, as "(expiring: 3, expired: 1)".
func causes(m map[string]int) string {
	var parts []string
	for _, c := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s: %d", c, m[c]))
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func kibibytes(n int64) string { return fmt.Sprintf("%d KiB", n>>10) }

func mebibytesFine(n int64) string { return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20)) }

func bytesPer(b float64) string { return fmt.Sprintf("%.0f B", b) }

func signedBytes(n int64) string {
	if n < 0 {
		return fmt.Sprintf("-%.1f KiB", float64(-n)/1024)
	}
	return fmt.Sprintf("+%.1f KiB", float64(n)/1024)
}
