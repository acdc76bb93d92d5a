package bench

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Targets of the comparison, as BENCHMARKS.md states them.
const (
	targetRatioGET    = 0.95
	targetRatioPOST1M = 0.90
	targetAddedP99    = 100 * time.Microsecond
	targetPeakRSS     = 256 << 20
)

// Report is everything one run measured.
type Report struct {
	Started     time.Time
	Elapsed     time.Duration
	Machine     string
	Options     Options
	Comparisons []*Comparison
	Storms      []*StormResult
	Uploads     []*UploadResult
	Bodies      []*BodiesResult
	Scale       *ScaleResult
	Herds       []*HerdResult
	Replicas    *HerdResult
	Notes       []string
}

// WriteMarkdown writes the report as the tables BENCHMARKS.md quotes.
func (rep *Report) WriteMarkdown(w io.Writer) {
	fmt.Fprintf(w, "Run %s, %s, on %s.\n\n", rep.Started.UTC().Format(time.RFC3339), rep.Elapsed.Round(time.Second), rep.Machine)
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "Note: %s\n\n", n)
	}
	rep.writeTargets(w)
	if len(rep.Comparisons) > 0 {
		rep.writeThroughput(w)
	}
	if len(rep.Storms) > 0 {
		rep.writeStorms(w)
	}
	if len(rep.Uploads) > 0 {
		rep.writeUploads(w)
	}
	if len(rep.Bodies) > 0 {
		rep.writeBodies(w)
	}
	rep.writeScaleParts(w)
}

func (rep *Report) writeThroughput(w io.Writer) {
	fmt.Fprintf(w, "### Throughput and latency (median of %d rounds of %s per server, run side by side)\n\n",
		rep.Options.Rounds, rep.Options.RoundDuration)
	fmt.Fprintln(w, "| scenario | conns | server | req/s | ratio vs bare (min-max) | p50 | p99 | added p50 | added p99 | server CPU/req (vs bare) | failed |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|")
	for _, c := range rep.Comparisons {
		for i, s := range c.Summary() {
			ratio, added50, added99, cpu, failed := s.cells(i == 0)
			fmt.Fprintf(w, "| %s | %d | %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n",
				c.Scenario.Name, c.Scenario.Conns, s.Name, s.RPS, ratio, micros(s.P50), micros(s.P99), added50, added99, cpu, failed)
		}
	}
	fmt.Fprintln(w)
}

func (rep *Report) writeStorms(w io.Writer) {
	fmt.Fprintf(w, "### Refresh storm (%d requests at once, token endpoint answering in %s)\n\n",
		rep.Options.StormRequests, rep.Options.StormLatency)
	fmt.Fprintln(w, "| refresh | stale token | grants | refused grants | failed | slowest | p50 | upstream 401s (replayed) |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, s := range rep.Storms {
		stale := "expiry just passed"
		if s.Rejected {
			stale = "no expiry known; upstream answers 401"
		}
		fmt.Fprintf(w, "| %s | %s | %d | %d | %d | %s | %s | %d |\n", s.Refresh, stale, s.Grants, s.Refused, s.Failed(),
			millis(s.Burst.Slowest), millis(s.Burst.Percentile(0.5)), s.UpstreamRejected)
	}
	fmt.Fprintln(w)
}

func (rep *Report) writeUploads(w io.Writer) {
	fmt.Fprintf(w, "### Uploads (%d at once, %d MiB each, generated; a fresh Caddy each)\n\n", rep.Options.Uploads, rep.Options.UploadSize>>20)
	fmt.Fprintln(w, "| through | framing | failed | elapsed | MiB/s | peak RSS (VmHWM) | RSS peak before |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, u := range rep.Uploads {
		through, framing := "bare reverse_proxy", "Content-Length"
		if u.OAuth2 {
			through = "oauth2_upstream + reverse_proxy"
		}
		if u.Chunked {
			framing = "chunked"
		}
		mibs := float64(u.Burst.OK) * float64(u.Size) / (1 << 20) / u.Burst.Elapsed.Seconds()
		fmt.Fprintf(w, "| %s | %s | %d | %s | %.0f | %s | %s |\n", through, framing, u.Burst.Failed,
			u.Burst.Elapsed.Round(time.Millisecond), mibs, mebibytes(u.PeakRSS), mebibytes(u.StartRSS))
	}
	fmt.Fprintln(w)
}

// writeTargets compares the measurements with the targets.
func (rep *Report) writeTargets(w io.Writer) {
	fmt.Fprintln(w, "### Targets")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | measured | met |")
	fmt.Fprintln(w, "|---|---|---|")
	for _, c := range rep.Comparisons {
		i := slices.Index(c.Targets, SidecarName)
		if i < 0 {
			continue
		}
		sidecar := c.Summary()[i]
		name := fmt.Sprintf("%s, %d conns", c.Scenario.Name, c.Scenario.Conns)
		switch {
		case c.Scenario.Request.Method == "GET" && c.Scenario.Conns > 1:
			target(w, fmt.Sprintf("req/s ratio oauth2/bare >= %.2f (%s)", targetRatioGET, name),
				fmt.Sprintf("%.3f", sidecar.RatioRPS), sidecar.RatioRPS >= targetRatioGET)
		case c.Scenario.Request.BodySize == 1<<20:
			target(w, fmt.Sprintf("req/s ratio oauth2/bare >= %.2f (%s)", targetRatioPOST1M, name),
				fmt.Sprintf("%.3f", sidecar.RatioRPS), sidecar.RatioRPS >= targetRatioPOST1M)
		}
		target(w, fmt.Sprintf("added p99 <= %s (%s)", micros(targetAddedP99), name),
			signedMicros(sidecar.AddedP99), sidecar.AddedP99 <= targetAddedP99)
		fmt.Fprintf(w, "| server CPU per request oauth2/bare (%s) | %.2fx | (no target) |\n", name, sidecar.CPURatio)
	}
	for _, s := range rep.Storms {
		name := "storm, refresh " + s.Refresh
		if s.Rejected {
			name += ", upstream 401"
		}
		target(w, name+": exactly 1 grant, 0 failed",
			fmt.Sprintf("%d grant(s), %d failed", s.Grants, s.Failed()), s.Grants == 1 && s.Failed() == 0)
	}
	for _, u := range rep.Uploads {
		if !u.OAuth2 {
			continue
		}
		framing := "Content-Length"
		if u.Chunked {
			framing = "chunked"
		}
		target(w, fmt.Sprintf("uploads (%s) peak RSS <= %s, 0 failed", framing, mebibytes(targetPeakRSS)),
			fmt.Sprintf("%s, %d failed", mebibytes(u.PeakRSS), u.Burst.Failed), u.PeakRSS <= targetPeakRSS && u.Burst.Failed == 0)
	}
	rep.writeBodiesTargets(w)
	rep.writeScaleTargets(w)
	fmt.Fprintln(w)
}

func target(w io.Writer, name, measured string, met bool) {
	verdict := "yes"
	if !met {
		verdict = "**no**"
	}
	fmt.Fprintf(w, "| %s | %s | %s |\n", name, measured, verdict)
}

// cells are a summary's table cells that compare it with the baseline
// (empty, or "(baseline)", for the baseline itself): the req/s ratio with
// its min-max, the added p50 and p99, the CPU per request with its ratio,
// and the failures with the first error.
func (s TargetSummary) cells(baseline bool) (ratio, added50, added99, cpu, failed string) {
	ratio = "(baseline)"
	if !baseline {
		ratio = fmt.Sprintf("%.3f (%.3f-%.3f)", s.RatioRPS, s.RatioMin, s.RatioMax)
		added50, added99 = signedMicros(s.AddedP50), signedMicros(s.AddedP99)
	}
	cpu = "n/a"
	if s.CPUPerRequest > 0 {
		cpu = micros(s.CPUPerRequest)
	}
	if !baseline && s.CPURatio > 0 {
		cpu += fmt.Sprintf(" (%.2fx)", s.CPURatio)
	}
	failed = fmt.Sprint(s.Failed)
	if s.FirstError != "" {
		failed += " (" + s.FirstError + ")"
	}
	return ratio, added50, added99, cpu, failed
}

func micros(d time.Duration) string {
	return fmt.Sprintf("%.0f us", float64(d)/float64(time.Microsecond))
}

func signedMicros(d time.Duration) string {
	return fmt.Sprintf("%+.0f us", float64(d)/float64(time.Microsecond))
}

func millis(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func mebibytes(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

// describeMachine names the CPU, cores, memory, kernel and Go version.
func describeMachine() string {
	model := cpuinfoField("/proc/cpuinfo", "model name")
	mem := cpuinfoField("/proc/meminfo", "MemTotal")
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%d cores (%s), %s memory, Linux %s, %s", runtime.NumCPU(), orUnknown(model), orUnknown(mem),
		orUnknown(strings.TrimSpace(string(kernel))), runtime.Version())
}

// cpuinfoField is the value of the first "<field>: value" line of path.
func cpuinfoField(path, field string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if ok && strings.TrimSpace(k) == field {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
