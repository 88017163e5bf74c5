package bench

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// HeyResult is what hey's summary reports about one run.
type HeyResult struct {
	Total       time.Duration
	RPS         float64
	Average     time.Duration
	Fastest     time.Duration
	Slowest     time.Duration
	Percentiles map[int]time.Duration // 10, 25, 50, 75, 90, 95, 99
	Statuses    map[int]int           // HTTP status -> responses
	Errors      int                   // requests that got no HTTP response
}

// Requests is the number of requests answered with any HTTP status.
func (h HeyResult) Requests() int {
	n := 0
	for _, c := range h.Statuses {
		n += c
	}
	return n
}

// OK is the number of 200 responses.
func (h HeyResult) OK() int { return h.Statuses[200] }

var (
	heySecs    = regexp.MustCompile(`^\s*(Total|Slowest|Fastest|Average):\s+([0-9.]+) secs`)
	heyRPS     = regexp.MustCompile(`^\s*Requests/sec:\s+([0-9.]+)`)
	heyPct     = regexp.MustCompile(`^\s*([0-9]+)%+ in ([0-9.]+) secs`)
	heyStatus  = regexp.MustCompile(`^\s*\[([0-9]+)\]\s+([0-9]+) responses`)
	heyErrLine = regexp.MustCompile(`^\s*\[([0-9]+)\]\s+(.+)$`)
)

// ParseHey reads hey's default summary output (hey 0.1.4). Latencies are printed with four
// decimals of a second, so they resolve 0.1 ms and no finer.
func ParseHey(out string) (HeyResult, error) {
	r := HeyResult{Percentiles: map[int]time.Duration{}, Statuses: map[int]int{}}
	section := ""
	sawSummary := false
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		trim := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trim, "Summary:"):
			section, sawSummary = "summary", true
			continue
		case strings.HasPrefix(trim, "Status code distribution:"):
			section = "status"
			continue
		case strings.HasPrefix(trim, "Error distribution:"):
			section = "errors"
			continue
		case strings.HasPrefix(trim, "Latency distribution:"):
			section = "latency"
			continue
		case strings.HasPrefix(trim, "Response time histogram:"), strings.HasPrefix(trim, "Details"):
			section = "other"
			continue
		}
		if m := heySecs.FindStringSubmatch(line); m != nil && section == "summary" {
			d := secs(m[2])
			switch m[1] {
			case "Total":
				r.Total = d
			case "Slowest":
				r.Slowest = d
			case "Fastest":
				r.Fastest = d
			case "Average":
				r.Average = d
			}
			continue
		}
		if m := heyRPS.FindStringSubmatch(line); m != nil {
			r.RPS, _ = strconv.ParseFloat(m[1], 64)
			continue
		}
		switch section {
		case "latency":
			if m := heyPct.FindStringSubmatch(line); m != nil {
				p, _ := strconv.Atoi(m[1])
				r.Percentiles[p] = secs(m[2])
			}
		case "status":
			if m := heyStatus.FindStringSubmatch(line); m != nil {
				code, _ := strconv.Atoi(m[1])
				n, _ := strconv.Atoi(m[2])
				r.Statuses[code] += n
			}
		case "errors":
			if m := heyErrLine.FindStringSubmatch(line); m != nil {
				n, _ := strconv.Atoi(m[1])
				r.Errors += n
			}
		}
	}
	if err := sc.Err(); err != nil {
		return r, err
	}
	if !sawSummary || r.RPS == 0 {
		return r, errors.New("not a hey summary (no Summary or Requests/sec)")
	}
	return r, nil
}

func secs(s string) time.Duration {
	f, _ := strconv.ParseFloat(s, 64)
	return time.Duration(math.Round(f * float64(time.Second)))
}

// ClockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat: 100 on every Linux
// architecture Go supports (the kernel converts for userspace).
const ClockTicks = 100

// ParseProcStat returns a process's user and system CPU time from the content of /proc/PID/stat.
// The command name (field 2) may contain spaces and parentheses, so fields are counted from the
// last ')'.
func ParseProcStat(stat string) (user, system time.Duration, err error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, 0, errors.New("/proc stat: no ')' after the command name")
	}
	f := strings.Fields(stat[i+1:])
	// After ')': state(3) ppid(4) ... utime(14) stime(15); f[0] is field 3.
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc stat: %d fields after the command name, want at least 13", len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("/proc stat utime/stime: %w", err)
	}
	tick := time.Second / ClockTicks
	return time.Duration(ut) * tick, time.Duration(st) * tick, nil
}

// BenchLine is one result line of `go test -bench`.
type BenchLine struct {
	Pkg     string
	Name    string // without the -GOMAXPROCS suffix
	Procs   int
	N       int64
	Metrics map[string]float64 // unit -> value: "ns/op", "B/op", "allocs/op", "cpu-ns/op", ...
}

var benchProcs = regexp.MustCompile(`^(Benchmark\S+?)(?:-([0-9]+))?$`)

// ParseGoBench reads `go test -bench` output (several packages may be concatenated, as
// benchstat accepts) and returns its result lines in order.
func ParseGoBench(out string) ([]BenchLine, error) {
	var lines []BenchLine
	pkg := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || len(f)%2 != 0 {
			continue // a benchmark's log output, or a name printed before a failure
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		m := benchProcs.FindStringSubmatch(f[0])
		bl := BenchLine{Pkg: pkg, Name: m[1], N: n, Metrics: map[string]float64{}}
		bl.Procs, _ = strconv.Atoi(m[2])
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("benchmark line %q: value %q: %w", line, f[i], err)
			}
			bl.Metrics[f[i+1]] = v
		}
		lines = append(lines, bl)
	}
	return lines, sc.Err()
}

// BenchSummary is the median of each metric over the runs (-count) of one benchmark.
type BenchSummary struct {
	Pkg, Name string
	Runs      int
	Median    map[string]float64
	// Spread is (max-min)/median of ns/op over the runs, the noise indicator.
	Spread float64
}

// Summarize groups lines by package and name, in first-seen order, and takes medians.
func Summarize(lines []BenchLine) []BenchSummary {
	type key struct{ pkg, name string }
	var order []key
	vals := map[key]map[string][]float64{}
	for _, l := range lines {
		k := key{l.Pkg, l.Name}
		if _, ok := vals[k]; !ok {
			order = append(order, k)
			vals[k] = map[string][]float64{}
		}
		for unit, v := range l.Metrics {
			vals[k][unit] = append(vals[k][unit], v)
		}
	}
	out := make([]BenchSummary, 0, len(order))
	for _, k := range order {
		s := BenchSummary{Pkg: k.pkg, Name: k.name, Median: map[string]float64{}}
		for unit, vs := range vals[k] {
			s.Median[unit] = Median(vs)
			if unit == "ns/op" {
				s.Runs = len(vs)
				if med := s.Median[unit]; med > 0 {
					s.Spread = (slices.Max(vs) - slices.Min(vs)) / med
				}
			}
		}
		out = append(out, s)
	}
	return out
}

// Median of vs (the mean of the two middle values for an even count); 0 for none.
func Median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(vs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Percentile of sorted durations by the nearest-rank method (p in (0,100]); 0 for none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

var promLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)`)
var promLabel = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// IAMCallsFromMetrics sums credential_webhook_iam_calls_total from a Prometheus text exposition
// by action (all results together), e.g. {"UpdateAssumeRolePolicy": 12}.
func IAMCallsFromMetrics(text string) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		m := promLine.FindStringSubmatch(sc.Text())
		if m == nil || m[1] != "credential_webhook_iam_calls_total" {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			return nil, fmt.Errorf("metric line %q: %w", sc.Text(), err)
		}
		action := ""
		for _, l := range promLabel.FindAllStringSubmatch(m[2], -1) {
			if l[1] == "action" {
				action = l[2]
			}
		}
		out[action] += v
	}
	return out, sc.Err()
}

// Diff returns after-before per key, keeping only non-zero differences.
func Diff[V int | float64](before, after map[string]V) map[string]V {
	out := map[string]V{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// PprofRow is one line of `go tool pprof -top` output.
type PprofRow struct {
	Flat, FlatPct, Cum, CumPct float64 // seconds and percent of all samples
	Func                       string
}

var pprofRow = regexp.MustCompile(`^\s*([0-9.]+)(s|ms|us|ns)?\s+([0-9.]+)%\s+[0-9.]+%\s+([0-9.]+)(s|ms|us|ns)?\s+([0-9.]+)%\s+(.+?)\s*$`)

// ParsePprofTop reads the rows of `go tool pprof -top [-cum]` text output.
func ParsePprofTop(text string) []PprofRow {
	var rows []PprofRow
	for _, line := range strings.Split(text, "\n") {
		m := pprofRow.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		f := func(s string) float64 { v, _ := strconv.ParseFloat(s, 64); return v }
		rows = append(rows, PprofRow{
			Flat: f(m[1]) * unitSeconds(m[2]), FlatPct: f(m[3]),
			Cum: f(m[4]) * unitSeconds(m[5]), CumPct: f(m[6]),
			Func: strings.TrimSuffix(m[7], " (inline)"),
		})
	}
	return rows
}

func unitSeconds(u string) float64 {
	switch u {
	case "ms":
		return 1e-3
	case "us":
		return 1e-6
	case "ns":
		return 1e-9
	}
	return 1
}
