package bench

import (
	"fmt"
	"io"
	"slices"
	"time"
)

// Issue 26's targets for the bodies part.
const (
	targetBodiesPOST    = 0.97 // POST 1 MiB and 16 MiB, req/s oauth2/bare
	targetBodiesCPU     = 1.03 // their server CPU per request, oauth2/bare
	targetBodiesUnread  = 0.95
	targetBodiesGET     = 0.98
	targetBodiesAdded50 = 30 * time.Microsecond // GET at 1 connection
	targetBodiesAdded99 = 100 * time.Microsecond
)

func (rep *Report) writeBodies(w io.Writer) {
	fmt.Fprintf(w, "### Bodies (median of %d rounds of %s per server, side by side; fresh servers per scenario)\n\n",
		rep.Options.Rounds, rep.Options.RoundDuration)
	fmt.Fprintf(w, "`%s`: zero_copy_min default; `%s`: zero_copy_min off (every body kept, as before); `%s`: bare reverse_proxy sending every upload upstream with `Expect: 100-continue` (header_up), the 100 Continue exchange without the handler. ",
		bodiesZeroCopy, bodiesKept, bodiesBareExpect)
	fmt.Fprintln(w, "Revoked: each token serves one request, so every request through a sidecar is rejected, refreshed and replayed, and the upstream compares every byte with what was sent.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| scenario | conns | server | req/s | ratio vs bare (min-max) | p50 | p99 | added p50 | added p99 | server CPU/req (vs bare) | peak RSS | grants | failed |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, b := range rep.Bodies {
		for i, s := range b.Comparison.Summary() {
			ratio, added50, added99, cpu, failed := s.cells(i == 0)
			fmt.Fprintf(w, "| %s | %d | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %d | %s |\n",
				b.Scenario.Name, b.Scenario.Conns, s.Name, s.RPS, ratio, micros(s.P50), micros(s.P99), added50, added99,
				cpu, mebibytes(b.PeakRSS[i]), b.Grants[i], failed)
		}
	}
	fmt.Fprintln(w)
}

// writeExpectControl writes, beside a scenario's targets, the price of the
// 100 Continue exchange alone (bare with Expect against bare) and the
// zero-copy path's against that control: what the handler adds to the
// exchange.
func (b *BodiesResult) writeExpectControl(w io.Writer, zeroCopy int, name string) {
	ctl := slices.Index(b.Comparison.Targets, bodiesBareExpect)
	if ctl < 0 {
		return
	}
	exchange := b.Comparison.Summary()[ctl]
	handler := b.Comparison.SummaryAgainst(ctl)[zeroCopy]
	fmt.Fprintf(w, "| (control) %s / bare: the exchange alone (%s) | %.3f (%.3f-%.3f), CPU %.2fx | (no target) |\n",
		bodiesBareExpect, name, exchange.RatioRPS, exchange.RatioMin, exchange.RatioMax, exchange.CPURatio)
	fmt.Fprintf(w, "| (control) %s / %s: the handler beside the same exchange (%s) | %.3f (%.3f-%.3f), CPU %.2fx | (no target) |\n",
		bodiesZeroCopy, bodiesBareExpect, name, handler.RatioRPS, handler.RatioMin, handler.RatioMax, handler.CPURatio)
}

// writeBodiesTargets compares the bodies part with issue 26's targets.
func (rep *Report) writeBodiesTargets(w io.Writer) {
	for _, b := range rep.Bodies {
		i := slices.Index(b.Comparison.Targets, bodiesZeroCopy)
		if i < 0 {
			continue
		}
		s := b.Comparison.Summary()[i]
		sc := b.Scenario
		name := fmt.Sprintf("%s, %d conns", sc.Name, sc.Conns)
		switch {
		case sc.Revoked:
			target(w, fmt.Sprintf("every upload replayed byte for byte, 0 failed (%s)", name),
				fmt.Sprintf("%d replayed, %d failed, peak RSS %s (kept: %s)", s.OK, s.Failed, mebibytes(b.PeakRSS[i]), mebibytes(b.PeakRSS[i+1])),
				s.Failed == 0 && s.OK > 0)
		case sc.Request.EarlyAnswer:
			target(w, fmt.Sprintf("req/s ratio >= %.2f (%s)", targetBodiesUnread, name), fmt.Sprintf("%.3f", s.RatioRPS), s.RatioRPS >= targetBodiesUnread)
			b.writeExpectControl(w, i, name)
		case sc.Request.BodySize >= 1<<20:
			target(w, fmt.Sprintf("req/s ratio >= %.2f (%s)", targetBodiesPOST, name), fmt.Sprintf("%.3f", s.RatioRPS), s.RatioRPS >= targetBodiesPOST)
			target(w, fmt.Sprintf("server CPU per request <= %.2fx (%s)", targetBodiesCPU, name), fmt.Sprintf("%.2fx", s.CPURatio), s.CPURatio <= targetBodiesCPU)
			b.writeExpectControl(w, i, name)
		case sc.Request.Method == "GET" && sc.Conns > 1:
			target(w, fmt.Sprintf("req/s ratio >= %.2f (%s)", targetBodiesGET, name), fmt.Sprintf("%.3f", s.RatioRPS), s.RatioRPS >= targetBodiesGET)
		case sc.Request.Method == "GET":
			target(w, fmt.Sprintf("added p50 <= %s, p99 <= %s (%s)", micros(targetBodiesAdded50), micros(targetBodiesAdded99), name),
				fmt.Sprintf("%s, %s", signedMicros(s.AddedP50), signedMicros(s.AddedP99)), s.AddedP50 <= targetBodiesAdded50 && s.AddedP99 <= targetBodiesAdded99)
		default:
			fmt.Fprintf(w, "| req/s ratio (%s) | %.3f | (no target) |\n", name, s.RatioRPS)
		}
	}
}
