package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	awsp "go.klusters.dev/credential-webhook/providers/aws"
)

// Meta describes the machine and the run.
type Meta struct {
	Date      string `json:"date"`
	Commit    string `json:"commit"`
	Dirty     bool   `json:"dirty"`
	GoVersion string `json:"goVersion"`
	Nproc     int    `json:"nproc"`
	CPUModel  string `json:"cpuModel"`
	MemTotal  string `json:"memTotal"`
	Kernel    string `json:"kernel"`
	LoadAvg   string `json:"loadAvg"`
	// CPUPressure is /proc/pressure/cpu "some avg60" at the start: the share of time some task
	// waited for a CPU (a busy neighbour shows here).
	CPUPressure string `json:"cpuPressure"`
	Hey         string `json:"hey"`
	Kube        string `json:"kube"` // what served the ServiceAccounts the Pod and Job routes read
	// EKS is the EKS pod-identity webhook the throughput targets compare against (binary,
	// version, flags), or why this run did not measure it.
	EKS   string   `json:"eks,omitempty"`
	Notes []string `json:"notes,omitempty"`
}

// CollectMeta reads the machine description from /proc and git (in dir).
func CollectMeta(dir string) Meta {
	m := Meta{Date: time.Now().UTC().Format(time.RFC3339), GoVersion: runtime.Version(), Nproc: runtime.NumCPU(), LoadAvg: LoadAvg(), CPUPressure: CPUPressure()}
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	if kb, err := strconv.Atoi(strings.TrimSuffix(procField("/proc/meminfo", "MemTotal"), " kB")); err == nil {
		m.MemTotal = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	git := func(args ...string) string {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(out))
	}
	m.Commit = git("rev-parse", "HEAD")
	// docs/ is left out: the run itself rewrites docs/bench-raw and docs/benchmarks.md, so every
	// report said "with uncommitted changes", and nothing there is built or measured.
	m.Dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs") != ""
	return m
}

func procField(file, key string) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Report is everything docs/benchmarks.md shows, read back from the raw directory.
type Report struct {
	Meta     Meta
	GoBench  []BenchSummary
	GoFailed []string // packages whose benchmarks failed to run
	Load     []LoadRun
	SACreate *SACreateRun
	IAM      []IAMScenario
	Packing  []PackingResult
	Sim      []SimResult       // the thirty-day simulation: the healthy month, then each leak rate
	Profiles map[string]string // name -> pprof -top text
	Idle     *IdleCPU
	Commands string
	RawFiles []string
}

// IdleCPU is the server's CPU time while no review arrives (informers, sweeper, GC, timers).
type IdleCPU struct {
	Duration time.Duration `json:"durationNs"`
	CPU      time.Duration `json:"cpuNs"`
}

// PerSecond is the idle CPU time per second of wall time.
func (i IdleCPU) PerSecond() time.Duration {
	if i.Duration <= 0 {
		return 0
	}
	return time.Duration(float64(i.CPU) / i.Duration.Seconds())
}

// Raw file names in the raw directory.
const (
	MetaFile     = "meta.json"
	GoBenchFile  = "go-bench.txt"
	GoFailFile   = "go-bench-failed.txt"
	IAMFile      = "iam-calls.json"
	PackingFile  = "packing.json"
	SimFile      = "sim.json"
	SACreateFile = "load-sa-create-distinct.json"
	CommandsFile = "commands.txt"
	IdleFile     = "idle-cpu.json"
)

// LoadReport reads a raw directory. Missing parts are left empty (the report says so).
func LoadReport(dir string) (*Report, error) {
	r := &Report{Profiles: map[string]string{}}
	readJSON := func(name string, v any) error {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, v); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	}
	if err := readJSON(MetaFile, &r.Meta); err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(filepath.Join(dir, GoBenchFile)); err == nil {
		lines, err := ParseGoBench(string(b))
		if err != nil {
			return nil, err
		}
		r.GoBench = Summarize(lines)
	}
	if b, err := os.ReadFile(filepath.Join(dir, GoFailFile)); err == nil {
		r.GoFailed = strings.Fields(string(b))
	}
	if err := readJSON(IAMFile, &r.IAM); err != nil {
		return nil, err
	}
	if err := readJSON(PackingFile, &r.Packing); err != nil {
		return nil, err
	}
	if err := readJSON(SimFile, &r.Sim); err != nil {
		return nil, err
	}
	var sa SACreateRun
	if _, err := os.Stat(filepath.Join(dir, SACreateFile)); err == nil {
		if err := readJSON(SACreateFile, &sa); err != nil {
			return nil, err
		}
		r.SACreate = &sa
	}
	if _, err := os.Stat(filepath.Join(dir, IdleFile)); err == nil {
		r.Idle = &IdleCPU{}
		if err := readJSON(IdleFile, r.Idle); err != nil {
			return nil, err
		}
	}
	loads, _ := filepath.Glob(filepath.Join(dir, "load-*.json"))
	for _, f := range loads {
		if filepath.Base(f) == SACreateFile {
			continue
		}
		var run LoadRun
		if err := readJSON(filepath.Base(f), &run); err != nil {
			return nil, err
		}
		r.Load = append(r.Load, run)
	}
	slices.SortStableFunc(r.Load, func(a, b LoadRun) int { return loadOrder(a) - loadOrder(b) })
	profiles, _ := filepath.Glob(filepath.Join(dir, "profile-*.txt"))
	for _, f := range profiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		r.Profiles[strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), "profile-"), ".txt")] = string(b)
	}
	if b, err := os.ReadFile(filepath.Join(dir, CommandsFile)); err == nil {
		r.Commands = string(b)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		r.RawFiles = append(r.RawFiles, e.Name())
	}
	return r, nil
}

// reviewOrder: the EKS webhook's Pod run right after ours, the two rows the ratio compares.
var reviewOrder = []string{"pod", "eks-pod", "job", "sa-update", "sa-create"}

func loadOrder(r LoadRun) int {
	i := slices.IndexFunc(reviewOrder, func(p string) bool { return strings.HasPrefix(r.Name, p+"-") })
	if i < 0 {
		i = len(reviewOrder)
	}
	o := 10 * i
	if r.Mode == "saturation" {
		o++
	}
	return o
}

// Targets from issue 18. Throughput is relative: our saturation reviews/s over the EKS
// pod-identity webhook's, measured on the same machine in the same run (bench/run.sh,
// BENCH_COMPARE_EKS), never against a figure from another machine.
const (
	TargetCPUPerReview = 100 * time.Microsecond
	TargetRatioToEKS   = 2.0
	TargetDensity      = 0.99
)

// EKSRunName is the load run of the EKS pod-identity webhook with our Pod review.
const EKSRunName = "eks-pod-saturation"

// Verdict is one line of the targets table.
type Verdict struct {
	Target, Measured, Source string
	Met                      bool
	Known                    bool // false: not measured in this run
}

// Verdicts compares the run with DESIGN.md's targets.
func (r *Report) Verdicts() []Verdict {
	var out []Verdict
	find := func(name string) (LoadRun, bool) {
		i := slices.IndexFunc(r.Load, func(l LoadRun) bool { return l.Name == name })
		if i < 0 {
			return LoadRun{}, false
		}
		return r.Load[i], true
	}
	slower, scaleNote := r.machineFactor()
	for _, k := range []struct{ name, label string }{{"pod", "Pod"}, {"job", "Job"}} {
		v := Verdict{Target: fmt.Sprintf("≤ %s server CPU per %s review", us(TargetCPUPerReview), k.label)}
		if run, ok := find(k.name + "-saturation"); ok && run.Requests > 0 {
			v.Known, v.Met = true, run.CPUPerReview() <= TargetCPUPerReview
			v.Measured = us(run.CPUPerReview()) + " (real binary, hey -c 16, /proc utime+stime ÷ reviews)"
			if slower > 0 {
				v.Measured += fmt.Sprintf("; ≈ %s on the issue's machine (%s)", us(time.Duration(float64(run.CPUPerReview())/slower)), scaleNote)
			}
			v.Source = "load `" + run.Name + "`"
		}
		out = append(out, v)
	}
	// Issue 18 asks Pod and Job reviews for twice the EKS webhook's saturation throughput; that
	// webhook serves Pods only, so both compare with its Pod run.
	eks, eksOK := find(EKSRunName)
	for _, k := range []struct{ name, label string }{{"pod", "Pod"}, {"job", "Job"}} {
		v := Verdict{Target: fmt.Sprintf("%s reviews/s ≥ %.0f × the EKS pod-identity webhook's with the Pod review (saturation, same machine and run, keep-alive TLS)", k.label, TargetRatioToEKS)}
		run, ok := find(k.name + "-saturation")
		ours := "ours not measured"
		if ok && run.RPS > 0 {
			ours = fmt.Sprintf("ours %.0f reviews/s", run.RPS)
		}
		switch {
		case !eksOK || eks.RPS <= 0:
			v.Measured = ours + "; EKS webhook not measured in this run"
		case eks.OK == 0 || eks.Answer.PatchOps == 0:
			// A webhook that answers without injecting does less work: no comparison.
			v.Measured = fmt.Sprintf("%s; EKS webhook %.0f reviews/s but it did not inject (%s): not comparable", ours, eks.RPS, describeAnswer(eks.Answer))
		case !ok || run.RPS <= 0:
			v.Measured = fmt.Sprintf("%s; EKS webhook %.0f reviews/s", ours, eks.RPS)
		default:
			ratio := run.RPS / eks.RPS
			v.Known, v.Met = true, ratio >= TargetRatioToEKS
			hey := fmt.Sprintf("hey -c %d each", run.Concurrency)
			if eks.Concurrency != run.Concurrency {
				hey = fmt.Sprintf("hey -c %d, the EKS webhook's -c %d", run.Concurrency, eks.Concurrency)
			}
			v.Measured = fmt.Sprintf("%.2f × (%s ÷ EKS webhook %.0f reviews/s, %s)", ratio, ours, eks.RPS, hey)
			v.Source = "load `" + run.Name + "` ÷ `" + eks.Name + "`"
		}
		out = append(out, v)
	}
	v := Verdict{Target: "1 IAM call per assignment in steady state"}
	if i := slices.IndexFunc(r.IAM, func(s IAMScenario) bool { return s.Name == "steady state" }); i >= 0 {
		s := r.IAM[i]
		v.Known, v.Met = true, s.PerAssignment() == 1
		v.Measured = fmt.Sprintf("%.2f (%s over %d assignments)", s.PerAssignment(), FormatCalls(s.Calls), s.Assignments)
		v.Source = "IAM calls, moto + iamproxy"
	}
	out = append(out, v)
	v = Verdict{Target: "≥ 99 % of the theoretical subjects per derived role"}
	worst := -1.0
	for _, p := range r.Packing {
		if p.MinLen == p.MaxLen && (worst < 0 || p.Density < worst) {
			worst = p.Density
		}
	}
	if worst >= 0 {
		v.Known, v.Met = true, worst >= TargetDensity
		v.Measured = fmt.Sprintf("%.1f %% (worst equal-length set, every full role vs TheoreticalMax)", 100*worst)
		v.Source = "packing"
	}
	out = append(out, v)
	v = Verdict{Target: fmt.Sprintf("thirty days: derived roles in use within %.0f %% of ⌈live ServiceAccounts ÷ capacity⌉, nothing refused", 100*(TargetSimRolesRatio-1))}
	if i := slices.IndexFunc(r.Sim, func(s SimResult) bool { return s.Config.Leak == 0 }); i >= 0 {
		s := r.Sim[i]
		w := s.Worst()
		v.Known, v.Met = true, w.RolesRatio <= TargetSimRolesRatio && w.Refused == 0 && w.Failed == 0
		v.Measured = fmt.Sprintf("worst %.3f × over %d days (peak %d roles in use for %d live), %d refused, %d failed", w.RolesRatio, len(s.Days), w.PeakRolesInUse, w.PeakLive, w.Refused, w.Failed)
		v.Source = "simulation"
	}
	out = append(out, v)
	v = Verdict{Target: fmt.Sprintf("thirty days simulated in ≤ %v (wall)", TargetSimWall)}
	if i := slices.IndexFunc(r.Sim, func(s SimResult) bool { return s.Config.Leak == 0 }); i >= 0 && r.Sim[i].Simulated >= 30*24*time.Hour && r.Sim[i].Wall > 0 {
		s := r.Sim[i]
		v.Known, v.Met = true, s.Wall <= TargetSimWall
		v.Measured = fmt.Sprintf("%v for %.0f days", s.Wall.Round(100*time.Millisecond), s.Simulated.Hours()/24)
		if others := len(r.Sim) - 1; others > 0 && s.Parallel {
			v.Measured += fmt.Sprintf(", beside %d leak run(s) on the machine's %d cores", others, r.Meta.Nproc)
		}
		if slower > 0 {
			v.Measured += fmt.Sprintf("; ≈ %v on the issue's machine (%s)", time.Duration(float64(s.Wall)/slower).Round(100*time.Millisecond), scaleNote)
		}
		v.Source = "simulation"
	}
	return append(out, v)
}

// TargetSimWall: thirty simulated days in a minute (issue 18).
const TargetSimWall = time.Minute

// IssueEKSCPUPerReview is the EKS pod-identity webhook's server CPU per Pod review on the machine
// issue 18 measured it on, side by side with this server, when it set the absolute targets (CPU
// per review, thirty days in a minute). Those depend on the machine, and machines of one class
// differ by up to 2× here; the EKS webhook is the same code in every run, so its CPU per review
// in a run over this figure is how much slower that run's machine is. The verdicts stay on the
// figures as measured; the scaled figure beside them tells a slow machine from slow code.
const IssueEKSCPUPerReview = 324 * time.Microsecond

// machineFactor is how many times slower than the issue's this run's machine is by the EKS
// webhook's CPU per review (0 when the run did not measure it), and a note saying so.
func (r *Report) machineFactor() (float64, string) {
	i := slices.IndexFunc(r.Load, func(l LoadRun) bool { return l.Name == EKSRunName })
	if i < 0 || r.Load[i].Requests == 0 || r.Load[i].ServerCPU <= 0 || r.Load[i].Answer.PatchOps == 0 {
		return 0, ""
	}
	eks := r.Load[i].CPUPerReview()
	f := float64(eks) / float64(IssueEKSCPUPerReview)
	return f, fmt.Sprintf("÷ %.2f, the EKS webhook's CPU per review here, %s, over the issue's %s", f, us(eks), us(IssueEKSCPUPerReview))
}

// TargetSimRolesRatio: roles in use may exceed the ideal count by 5 % (issue 18).
const TargetSimRolesRatio = 1.05

func us(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Microsecond), 'f', 1, 64) + " µs"
}

// lat formats a latency hey reported; 0 means hey printed none.
func lat(d time.Duration) string {
	if d == 0 {
		return "n/a"
	}
	return ms(d)
}

func ms(d time.Duration) string {
	switch {
	case d == 0:
		return "0 ms"
	case d < 10*time.Millisecond:
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64) + " ms"
	case d < 10*time.Second:
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 0, 64) + " ms"
	}
	return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + " s"
}

// Render writes the Markdown report.
func (r *Report) Render(w io.Writer) error {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := r.Meta
	p("# Benchmarks\n\n")
	p("Generated by `make bench` (bench/run.sh, about 17 minutes); do not edit by hand. Raw outputs are in\n")
	p("[`bench-raw/`](bench-raw/) (Go benchmark output there is benchstat-comparable: `benchstat old.txt bench-raw/go-bench.txt`).\n\n")
	p("| | |\n|---|---|\n")
	p("| date | %s |\n", m.Date)
	dirty := ""
	if m.Dirty {
		dirty = " (with uncommitted changes)"
	}
	p("| commit | `%s`%s |\n", m.Commit, dirty)
	p("| machine | %d cores, %s, %s memory, Linux %s |\n", m.Nproc, m.CPUModel, m.MemTotal, m.Kernel)
	p("| Go | %s |\n", m.GoVersion)
	p("| load generator | %s |\n", m.Hey)
	p("| ServiceAccounts for Pod and Job routes | %s |\n", m.Kube)
	eksDesc := m.EKS
	if eksDesc == "" {
		eksDesc = "not measured in this run"
	}
	p("| EKS pod-identity webhook (throughput comparison) | %s |\n", eksDesc)
	p("| load average at start | %s (CPU pressure, some avg60: %s %%) |\n", m.LoadAvg, m.CPUPressure)
	p("\n")
	for _, n := range m.Notes {
		p("- %s\n", n)
	}
	if len(m.Notes) > 0 {
		p("\n")
	}

	p("## Targets (issue 18)\n\n| target | measured | verdict | from |\n|---|---|---|---|\n")
	for _, v := range r.Verdicts() {
		verdict := "not measured"
		if v.Known {
			verdict = "**missed**"
			if v.Met {
				verdict = "met"
			}
		}
		p("| %s | %s | %s | %s |\n", v.Target, v.Measured, verdict, v.Source)
	}
	p("\n")

	r.renderLoad(p)
	r.renderGoBench(p)
	r.renderProfiles(p)
	r.renderIAM(p)
	r.renderPacking(p)
	r.renderSim(p)

	if r.Commands != "" {
		p("## Commands run\n\n```\n%s```\n\n", r.Commands)
	}
	p("## Raw files\n\n")
	for _, f := range r.RawFiles {
		p("- [`%s`](bench-raw/%s)\n", f, f)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *Report) renderLoad(p func(string, ...any)) {
	p("## Load on the real binary (TLS on 127.0.0.1)\n\n")
	if len(r.Load) == 0 {
		p("Not measured in this run.\n\n")
		return
	}
	p("`credential-webhook serve` built from this commit, dev certificates from `credential-webhook certs`, one JSON log\n")
	p("line per review written to a file (info level, as in production). hey 0.1.4: HTTP/1.1 keep-alive over TLS\n")
	p("(hey does not verify the certificate), 16 workers; a fixed-rate run paces each worker at rate/16.\n")
	p("**hey and the server share the machine's %d cores**, so saturation figures are a floor for the server alone.\n", r.Meta.Nproc)
	p("hey prints latencies with 0.1 ms resolution. Server CPU is the server process's utime+stime from\n")
	p("`/proc/PID/stat` (10 ms ticks) before and after the run, divided by the reviews answered.")
	if r.Idle != nil {
		p(" It includes what\nthe server burns while idle (informers, sweeper, timers, GC): %s of CPU per second, measured over %s\nbefore the runs, i.e. %s per review at %.0f reviews/s.",
			ms(r.Idle.PerSecond()), ms(r.Idle.Duration), us(r.Idle.PerSecond()/time.Duration(1000)), 1000.0)
	}
	p("\n\n")
	if slices.ContainsFunc(r.Load, func(l LoadRun) bool { return l.Name == EKSRunName }) {
		p("The `%s` row is the EKS pod-identity webhook (see the table at the top) served the same Pod review\n", EKSRunName)
		p("file right after our Pod saturation run, with the same hey concurrency, duration and warm-up, its CPU read from its\n")
		p("own `/proc/PID/stat` the same way. It serves Pods only; the throughput targets divide our saturation reviews/s by its.\n\n")
	}
	p("| review | route | mode | requests | 200s | reviews/s | p50 | p90 | p99 | server CPU / review | hey CPU / review | IAM calls / review | the route answered |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, l := range r.Load {
		mode := fmt.Sprintf("saturation (-c %d)", l.Concurrency)
		if l.Rate > 0 {
			mode = fmt.Sprintf("%.0f/s fixed (-c %d)", l.Rate, l.Concurrency)
			if l.RPS < 0.9*l.Rate {
				mode += " — **rate not reached**"
			}
		}
		client := time.Duration(0)
		if l.Requests > 0 {
			client = l.ClientCPU / time.Duration(l.Requests)
		}
		p("| %s | `%s` | %s | %d | %d | %.0f | %s | %s | %s | %s | %s | %s | %s |\n", l.Review, l.Route, mode, l.Requests, l.OK,
			l.RPS, lat(l.P50), lat(l.P90), lat(l.P99), us(l.CPUPerReview()), us(client), iamPerReview(l.IAMCalls, l.Requests), describeAnswer(l.Answer))
	}
	p("\nCommands, in the order run (the load average before each includes the previous run's tail):\n\n```\n")
	for _, l := range r.Load {
		p("%s    # load %s\n", l.Command, l.LoadAvg)
	}
	p("```\n\n")
	if s := r.SACreate; s != nil {
		p("### New ServiceAccounts: the admission plan\n\n")
		p("hey repeats one body, so the ServiceAccount CREATE rows above re-admit a ServiceAccount that is already\n")
		p("listed. Here `benchtool sacreate` sends %d CREATE reviews of distinct per-session ServiceAccounts\n", s.Requests)
		p("from %d keep-alive TLS clients to the same binary (IAM: moto; per-seed lock: %s). Admission only\n", s.Concurrency, s.Locker)
		p("plans: IAM is written once the apiserver has persisted the ServiceAccount, which a review sent by hand never\n")
		p("makes it do, so every answer is `pending` and no IAM call is made. This row measures the plan; the whole\n")
		p("path through the apiserver to the trust policy is the e2e burst benchmark (`BenchmarkFlowCreationToTrust`).\n")
		p("Latency has µs resolution here.\n\n")
		p("| requests | assigned | pending | failed | wall | reviews/s | p50 | p90 | p99 | max | server CPU / review | IAM calls (server's /metrics) | calls / review |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		total := 0.0
		calls := map[string]int{}
		for k, v := range s.IAMCalls {
			total += v
			calls[k] = int(v)
		}
		p("| %d | %d | %d | %d | %s | %.0f | %s | %s | %s | %s | %s | %s | %.2f |\n\n", s.Requests, s.Assigned, s.Pending, s.Failed,
			ms(s.Wall), s.RPS, ms(s.P50), ms(s.P90), ms(s.P99), ms(s.Max), us(s.ServerCPU/time.Duration(max(s.Requests, 1))),
			FormatCalls(calls), total/float64(max(s.Requests, 1)))
	}
}

func iamPerReview(calls map[string]float64, requests int) string {
	if calls == nil { // not read: a server without our /metrics (the EKS webhook)
		return "n/a"
	}
	total := 0.0
	for _, v := range calls {
		total += v
	}
	if requests == 0 {
		return ""
	}
	return strconv.FormatFloat(total/float64(requests), 'f', 2, 64)
}

func describeAnswer(a Answer) string {
	if a.Status == 0 {
		return ""
	}
	if a.Status != 200 || !a.Allowed {
		return fmt.Sprintf("HTTP %d, allowed=%v %s", a.Status, a.Allowed, a.Denial)
	}
	w := fmt.Sprintf("%d warning(s)", len(a.Warnings))
	if a.PatchOps == 0 {
		return "allowed, no patch, " + w
	}
	return fmt.Sprintf("%d patch ops (%s), %s", a.PatchOps, SummarizePaths(a.Paths), w)
}

// SummarizePaths counts patch paths by what they address: "/spec/containers/0/env/5" counts as
// env, "/metadata/annotations/a~1b" as annotation a/b.
func SummarizePaths(paths []string) string {
	var order []string
	count := map[string]int{}
	for _, path := range paths {
		segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
		for len(segs) > 1 {
			if _, err := strconv.Atoi(segs[len(segs)-1]); err != nil {
				break
			}
			segs = segs[:len(segs)-1]
		}
		what := segs[len(segs)-1]
		if len(segs) >= 2 && (segs[len(segs)-2] == "annotations" || segs[len(segs)-2] == "labels") {
			what = strings.TrimSuffix(segs[len(segs)-2], "s") + " " + strings.ReplaceAll(strings.ReplaceAll(what, "~1", "/"), "~0", "~")
		}
		if count[what] == 0 {
			order = append(order, what)
		}
		count[what]++
	}
	parts := make([]string, len(order))
	for i, w := range order {
		parts[i] = w
		if count[w] > 1 {
			parts[i] = fmt.Sprintf("%s ×%d", w, count[w])
		}
	}
	return strings.Join(parts, ", ")
}

func (r *Report) renderGoBench(p func(string, ...any)) {
	p("## Go benchmarks\n\n")
	if len(r.GoBench) == 0 {
		p("Not run.\n\n")
	}
	if len(r.GoFailed) > 0 {
		p("**Benchmarks failed to run in:** %s (see `go-bench-failed.txt` and the log).\n\n", strings.Join(r.GoFailed, ", "))
	}
	if len(r.GoBench) == 0 {
		return
	}
	p("`go test -run '^$' -bench . -benchmem -count 6` per package; medians of the runs. cpu-ns/op is the process's\n")
	p("user+system CPU per operation (GC included; for the TLS benchmarks client and server together). Spread is\n")
	p("(max−min)/median of ns/op: the machine is shared, so above ~10 %% treat the figure as noisy.\n\n")
	p("| package | benchmark | runs | ns/op | cpu-ns/op | B/op | allocs/op | other | spread |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range r.GoBench {
		var other []string
		for unit, v := range s.Median {
			switch unit {
			case "ns/op", "cpu-ns/op", "B/op", "allocs/op", "MB/s":
			default:
				other = append(other, fmt.Sprintf("%s %s", fmtNum(v), unit))
			}
		}
		slices.Sort(other)
		p("| %s | %s | %d | %s | %s | %s | %s | %s | %.0f %% |\n", strings.TrimPrefix(s.Pkg, "go.klusters.dev/credential-webhook/"),
			strings.TrimPrefix(s.Name, "Benchmark"), s.Runs, fmtNum(s.Median["ns/op"]), fmtOpt(s.Median, "cpu-ns/op"),
			fmtInt(s.Median, "B/op"), fmtInt(s.Median, "allocs/op"), strings.Join(other, ", "), 100*s.Spread)
	}
	p("\n")
}

func fmtOpt(m map[string]float64, unit string) string {
	if v, ok := m[unit]; ok {
		return fmtNum(v)
	}
	return ""
}

func fmtInt(m map[string]float64, unit string) string {
	if v, ok := m[unit]; ok {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return ""
}

func fmtNum(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 1:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

// profileParts are the functions the profile tables pick out, by a unique part of their name.
var profileParts = []struct{ label, fn string }{
	{"server connection goroutine: TLS, HTTP, handler", "net/http.(*conn).serve"},
	{"TLS reads (decrypt)", "crypto/tls.(*Conn).Read"},
	{"TLS writes (encrypt)", "crypto/tls.(*Conn).Write"},
	{"review handler", "admission.NewHandler.(*server).review.func"},
	{"decode the AdmissionReview (admission.decodeReview)", "admission.decodeReview"},
	{"own-annotations guard (decodes the object's metadata again)", "admission.OwnAnnotationsGuard.Admit"},
	{"Pod plugin: decode Pod, ServiceAccount lookup, inject (pods.(*Plugin).Admit)", "pods.(*Plugin).Admit"},
	{"Job plugin: decode Job, ServiceAccount lookup, decide (jobs.(*Plugin).Admit)", "jobs.(*Plugin).Admit"},
	{"encode patch and response (encoding/json.Marshal)", "encoding/json.Marshal"},
	{"… of which jsonpatch.Operation.MarshalJSON", "jsonpatch/v2.(*Operation).MarshalJSON"},
	{"JSON log lines (slog Logger.log)", "log/slog.(*Logger).log"},
	{"per-request loggers (slog Logger.With)", "log/slog.(*Logger).With"},
	{"Prometheus label lookups", "prometheus.(*MetricVec).GetMetricWithLabelValues"},
	{"system calls", "syscall.Syscall"},
	{"allocation (runtime.mallocgc)", "runtime.mallocgc"},
	{"garbage collection, background marking", "runtime.gcBgMarkWorker"},
}

func (r *Report) renderProfiles(p func(string, ...any)) {
	if len(r.Profiles) == 0 {
		return
	}
	p("## CPU profiles of the review paths\n\n")
	p("`go test -bench <one case> -benchtime 2s -cpuprofile` on the bench/ benchmarks (commands below). *pod* and\n")
	p("*job* profile `BenchmarkReview` (the handler alone, so the whole process is the server plus the benchmark\n")
	p("loop); *pod-tls* profiles `BenchmarkReviewTLS`, focused on `net/http.(*conn).serve`, the\n")
	p("server's connection goroutine (TLS, HTTP, handler; GC is not in a focused view). *Share* is a row's\n")
	p("cumulative time over the first row's (rows overlap: a caller includes its callees). Full profiles:\n")
	p("`go tool pprof -http : docs/bench-raw/profile-pod.pprof`.\n\n")
	names := slices.SortedFunc(func(yield func(string) bool) {
		for k := range r.Profiles {
			if !yield(k) {
				return
			}
		}
	}, func(a, b string) int { // pod before job, the handler before its TLS view
		if pa, pb := strings.HasPrefix(a, "pod"), strings.HasPrefix(b, "pod"); pa != pb {
			if pa {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	for _, n := range names {
		rows := ParsePprofTop(r.Profiles[n])
		p("### %s\n\n| function | cumulative | share |\n|---|---|---|\n", n)
		base := 0.0
		for _, part := range profileParts {
			i := slices.IndexFunc(rows, func(row PprofRow) bool { return strings.Contains(row.Func, part.fn) })
			if i < 0 {
				continue
			}
			if base == 0 {
				base = rows[i].Cum
			}
			p("| %s | %.2f s | %.0f %% |\n", part.label, rows[i].Cum, 100*rows[i].Cum/base)
		}
		lines := strings.Split(strings.TrimRight(r.Profiles[n], "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[:40]
		}
		p("\n<details><summary>pprof -top -cum</summary>\n\n```\n%s\n```\n</details>\n\n", strings.Join(lines, "\n"))
	}
}

func (r *Report) renderIAM(p func(string, ...any)) {
	p("## IAM calls per assignment\n\n")
	if len(r.IAM) == 0 {
		p("Not measured in this run.\n\n")
		return
	}
	p("`providers/aws.Assigner` against moto 5.2.1 through `testenv/iamproxy` (quota 2,048 enforced, every call\n")
	p("counted by action), KubeStash session subjects, in-process `LocalLocker` (the generation protocol is the\n")
	p("same as with the Lease locker; Lease reads and writes are Kubernetes calls and not counted here). Wall\n")
	p("times are moto's (a single-threaded Python emulator), not AWS's.\n\n")
	p("| scenario | conditions | assignments | IAM calls by action | calls / assignment | roles created | wall | p50 / p99 per assignment |\n|---|---|---|---|---|---|---|---|\n")
	for _, s := range r.IAM {
		lat := ""
		if s.P50 > 0 {
			lat = ms(s.P50) + " / " + ms(s.P99)
		}
		p("| %s | %s | %d | %s | %.2f | %d | %s | %s |\n", s.Name, s.What, s.Assignments, FormatCalls(s.Calls), s.PerAssignment(), s.Created, ms(s.Wall), lat)
	}
	p("\n")
}

func (r *Report) renderPacking(p func(string, ...any)) {
	p("## Packing density (pure, no cloud)\n\n")
	if len(r.Packing) == 0 {
		p("Not measured in this run.\n\n")
		return
	}
	p("Subjects placed in arrival order by the Assigner's own placement (`Place`: first fit, new role via `DeriveTrustPolicy`),\n")
	p("sizes measured on the compact JSON IAM receives. Seed: a KubeStash IRSA trust policy (one OIDC statement\n")
	p("per cluster with the `:aud` condition). *Theoretical max* is `TheoreticalMax` over the set (shortest names\n")
	p("first): exact for equal-length names. *Lower bound* is the larger of the fluid bound (total subject\n")
	p("characters ÷ per-role budget) and ⌈subjects ÷ theoretical max⌉: no placement can use fewer roles.\n")
	p("*Density*: equal-length sets, the smallest full role ÷ theoretical max; mixed sets, lower bound ÷ roles.\n\n")
	p("| subject set | OIDC statements | quota | subjects | name length | roles | lower bound | theoretical max / role | per full role (min / mean) | density | mean fill of full roles | note |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, x := range r.Packing {
		length := strconv.Itoa(x.MinLen)
		if x.MaxLen != x.MinLen {
			length = fmt.Sprintf("%d–%d", x.MinLen, x.MaxLen)
		}
		p("| %s | %d | %d | %d | %s | %d | %d | %d | %d / %.1f | %.1f %% | %.1f %% | %s |\n", x.Name, x.Statements, x.Quota, x.Subjects,
			length, x.Roles, x.LowerBound, x.TheoreticalMax, x.MinPerFullRole, x.MeanPerFullRole, 100*x.Density, 100*x.MeanFill, x.Note)
	}
	p("\nThe default `--role-creation-limit` is %d derived roles per seed.\n\n", awsp.DefaultRoleCreationLimit)
}

func jsonIndent(v any) ([]byte, error) { return json.MarshalIndent(v, "", "  ") }

func (r *Report) renderSim(p func(string, ...any)) {
	p("## Thirty days in a minute (simulation)\n\n")
	if len(r.Sim) == 0 {
		p("Not run.\n\n")
		return
	}
	p("`benchtool sim`: KubeStash BackupConfigurations on one schedule, one ServiceAccount per session, deleted when the\n")
	p("session ends, through the production `Assigner` (placement, lock sessions, trust writes) and the production garbage\n")
	p("collection (`Collector.CollectScope` on deletions within its token bucket, `MaintainScope` every `--gc-interval`:\n")
	p("drift sync and empty-role expiry) on a simulated clock, against `bench/iammodel`, an in-memory IAM checked against\n")
	p("moto by `go test ./bench/iammodel ./bench` (same end state, same calls per action). *Ideal*: ⌈live ÷ capacity⌉.\n")
	p("A leak run deletes no ServiceAccount for that share of sessions and stops when the first one is refused. Each run has\n")
	p("its own model; they run one after the other unless `-parallel` (then each run's wall time includes the others' load).\n")
	p("Runtime settings, unless the environment sets them: GC percent 1600 (a few MiB live, gigabytes allocated a day) and,\n")
	p("without `-parallel`, one P (GOMAXPROCS=1: a run's goroutines hand work to each other step after step, and across two\n")
	p("threads every hand-off was a wake-up; bench/cmd/benchtool/sim.go has the figures).\n\n")
	p("| run | days | wall | sessions | peak live | peak roles in use | worst ÷ ideal | peak roles existing | longest listed after deletion | refused | IAM calls / day | ceiling hit after |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range r.Sim {
		w := s.Worst()
		calls, _ := s.IAMCallsPerDay()
		name := fmt.Sprintf("%d BackupConfigurations every %v, sessions %v–%v", s.Config.BackupConfigs, s.Config.Schedule, s.Config.SessionMin, s.Config.SessionMax)
		if s.Config.Leak > 0 {
			name = fmt.Sprintf("leak %.1f %%", 100*s.Config.Leak)
		}
		hit := "never"
		if s.LimitHitAt > 0 {
			hit = fmt.Sprintf("%.2f days (%d roles, %d subjects)", s.LimitHitAt.Hours()/24, s.FinalRoles, s.FinalListed)
		}
		p("| %s | %d | %v | %d | %d | %d | %.3f | %d | %v | %d | %.0f | %s |\n", name, len(s.Days), s.Wall.Round(time.Second), w.Sessions, w.PeakLive,
			w.PeakRolesInUse, w.RolesRatio, w.PeakRoles, w.MaxGCLag, w.Refused, calls, hit)
	}
	if i := slices.IndexFunc(r.Sim, func(s SimResult) bool { return s.Config.Leak == 0 }); i >= 0 {
		s := r.Sim[i]
		_, by := s.IAMCallsPerDay()
		perDay := map[string]int{}
		for k, v := range by {
			perDay[k] = int(math.Round(v))
		}
		p("\nIAM calls per day in the healthy month, by action: %s. Capacity %d subjects per role, `--role-creation-limit` %d,\n", FormatCalls(perDay), s.Capacity, s.Config.RoleCreationLimit)
		p("so the seed's ceiling is %d subjects. Per day (healthy month):\n\n", s.Capacity*s.Config.RoleCreationLimit)
		p("| day | sessions | peak live | peak listed | peak roles in use | worst ÷ ideal | roles existing | collections | longest listed after deletion | roles deleted | IAM calls |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, d := range s.Days {
			n := 0
			for _, v := range d.IAMCalls {
				n += v
			}
			p("| %d | %d | %d | %d | %d | %.3f | %d | %d | %v | %d | %d |\n", d.Day, d.Sessions, d.PeakLive, d.PeakListed, d.PeakRolesInUse, d.WorstRolesRatio, d.PeakRoles, d.Collections, d.MaxGCLag, d.RolesDeleted, n)
		}
	}
	p("\n")
}
