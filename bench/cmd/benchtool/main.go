// Command benchtool is the Go side of `make bench` (bench/run.sh): it runs the load generator
// against the real binary and reads the server's CPU time, measures IAM calls per assignment
// against moto, computes packing density, and writes docs/benchmarks.md from the raw outputs.
// Test tooling only: it is never part of the product binary.
//
//	benchtool meta     -root DIR -out meta.json [-kube TEXT] [-hey TEXT] [-eks TEXT] [-note TEXT]...
//	benchtool idle     -pid PID -d 5s -out idle-cpu.json
//	benchtool packing  -n 2000 -out packing.json
//	benchtool iamcalls -burst 1000 -replica-burst 200 -out iam-calls.json
//	benchtool load     -url URL -cacert F -pid PID -review F -name NAME [-rate R] -c 16 -d 10s -raw DIR [-iam-metrics=false]
//	benchtool sacreate -url URL -cacert F -pid PID -review F -n 500 -c 16 -out F
//	benchtool sim      -days 30 -leaks 0.001,0.01 -out sim.json
//	benchtool report   -raw DIR -out docs/benchmarks.md
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.klusters.dev/credential-webhook/bench"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchtool meta|packing|iamcalls|load|sacreate|sim|report [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cmds := map[string]func(context.Context, []string) error{
		"meta": runMeta, "idle": runIdle, "packing": runPacking, "iamcalls": runIAMCalls, "load": runLoad, "sacreate": runSACreate, "report": runReport, "sim": runSim,
	}
	f, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "benchtool: unknown subcommand %q\n", os.Args[1])
		os.Exit(2)
	}
	if err := f(ctx, os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "benchtool %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, "; ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func runMeta(_ context.Context, args []string) error {
	fs := flag.NewFlagSet("meta", flag.ContinueOnError)
	root := fs.String("root", ".", "repository root (for git)")
	out := fs.String("out", "", "output JSON file")
	kube := fs.String("kube", "", "what served ServiceAccounts to the Pod and Job routes")
	hey := fs.String("hey", "", "load generator version")
	eks := fs.String("eks", "", "the EKS pod-identity webhook compared against, or why it was not")
	loadAvg := fs.String("loadavg", "", "load average at the start of the run (default: now)")
	date := fs.String("date", "", "start of the run, RFC 3339 (default: now)")
	var notes multiFlag
	fs.Var(&notes, "note", "a note for the report (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	m := bench.CollectMeta(*root)
	m.Kube, m.Hey, m.EKS, m.Notes = *kube, *hey, *eks, notes
	if *loadAvg != "" {
		m.LoadAvg = *loadAvg
	}
	if *date != "" {
		m.Date = *date
	}
	return writeJSON(*out, m)
}

func runIdle(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
	pid := fs.Int("pid", 0, "server process id")
	d := fs.Duration("d", 5*time.Second, "how long to watch")
	out := fs.String("out", "", "output JSON file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c0, err := bench.ProcCPU(*pid)
	if err != nil {
		return err
	}
	t0 := time.Now()
	select {
	case <-time.After(*d):
	case <-ctx.Done():
		return ctx.Err()
	}
	c1, err := bench.ProcCPU(*pid)
	if err != nil {
		return err
	}
	idle := bench.IdleCPU{Duration: time.Since(t0), CPU: c1 - c0}
	fmt.Printf("server idle: %v CPU over %v (%v per second)\n", idle.CPU, idle.Duration.Round(time.Millisecond), idle.PerSecond())
	return writeJSON(*out, idle)
}

func runPacking(_ context.Context, args []string) error {
	fs := flag.NewFlagSet("packing", flag.ContinueOnError)
	n := fs.Int("n", 2000, "ServiceAccounts per subject set")
	out := fs.String("out", "", "output JSON file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var rows []bench.PackingResult
	for _, c := range bench.PackingCases(*n) {
		for _, q := range []int{2048, 4096, 8192} {
			r, err := bench.RunPacking(c, q)
			if err != nil {
				return fmt.Errorf("%s, quota %d: %w", c.Name, q, err)
			}
			fmt.Printf("%-48s quota %5d: %4d roles (bound %4d), %3d/%3d per full role, density %.3f, fill %.3f %s\n",
				r.Name, r.Quota, r.Roles, r.LowerBound, r.MinPerFullRole, r.TheoreticalMax, r.Density, r.MeanFill, r.Note)
			rows = append(rows, r)
		}
	}
	return writeJSON(*out, rows)
}

func runIAMCalls(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("iamcalls", flag.ContinueOnError)
	burst := fs.Int("burst", 1000, "assignments in the one-replica burst")
	replicaBurst := fs.Int("replica-burst", 200, "assignments in the two-replica burst (0 skips it)")
	quota := fs.Int("quota", awsp.DefaultQuota, "trust policy quota the proxy enforces and reports")
	out := fs.String("out", "", "output JSON file")
	logFile := fs.String("log", "", "moto's and the Assigner's log (default: discarded)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, kv := range [][2]string{{"AWS_EC2_METADATA_DISABLED", "true"}, {"AWS_ACCESS_KEY_ID", "test"}, {"AWS_SECRET_ACCESS_KEY", "test"}, {"AWS_REGION", moto.Region}} {
		os.Setenv(kv[0], kv[1])
	}
	logw := &discard{}
	var log *slog.Logger = slog.New(slog.DiscardHandler)
	if *logFile != "" {
		f, err := os.Create(*logFile)
		if err != nil {
			return err
		}
		defer f.Close()
		logw.w = f
		log = slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	sctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	srv, err := moto.StartProcess(sctx, logw)
	cancel()
	if err != nil {
		return err // says how to install moto when it is missing
	}
	defer srv.Stop()
	p, err := iamproxy.New(srv.Endpoint, iamproxy.Options{Quota: *quota})
	if err != nil {
		return err
	}
	if err := p.Listen("127.0.0.1:0"); err != nil {
		return err
	}
	defer p.Close()
	env := &bench.IAMEnv{Proxy: p, API: awsp.NewIAMClient(moto.ConfigFor(p.URL)), Direct: moto.ConfigFor(srv.Endpoint), Quota: *quota, Log: log}
	rows, err := bench.RunIAMScenarios(ctx, env, *burst, *replicaBurst)
	for _, s := range rows {
		fmt.Printf("%-32s %4d assignments: %6.2f calls each (%s), %d roles created, %s\n", s.Name, s.Assignments, s.PerAssignment(), bench.FormatCalls(s.Calls), s.Created, s.Wall.Round(time.Millisecond))
	}
	if err != nil {
		return err
	}
	return writeJSON(*out, rows)
}

type discard struct{ w *os.File }

func (d *discard) Write(p []byte) (int, error) {
	if d.w == nil {
		return len(p), nil
	}
	return d.w.Write(p)
}

func runLoad(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	url := fs.String("url", "", "server base URL, https://127.0.0.1:PORT")
	route := fs.String("route", "", "route path, e.g. /mutate/pods")
	cacert := fs.String("cacert", "", "CA of the serving certificate (for the probe request)")
	pid := fs.Int("pid", 0, "server process id (CPU time from /proc)")
	review := fs.String("review", "", "AdmissionReview file to send")
	label := fs.String("label", "", "what the review is, for the report")
	name := fs.String("name", "", "run name (file names and report)")
	rate := fs.Float64("rate", 0, "fixed total rate in requests/s; 0 saturates")
	c := fs.Int("c", 16, "hey workers")
	d := fs.Duration("d", 10*time.Second, "duration")
	raw := fs.String("raw", "", "raw output directory")
	hey := fs.String("hey", "hey", "hey binary")
	// Another server (the EKS pod-identity webhook) has no IAM counters on its serving port.
	iamMetrics := fs.Bool("iam-metrics", true, "read IAM call counters from the server's /metrics around the run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *url == "" || *route == "" || *pid == 0 || *review == "" || *name == "" || *raw == "" {
		return errors.New("-url, -route, -pid, -review, -name and -raw are required")
	}
	body, err := os.ReadFile(*review)
	if err != nil {
		return err
	}
	client, err := bench.Client(*cacert, 1)
	if err != nil {
		return err
	}
	target := *url + *route + "?timeout=10s"
	answer, _, err := bench.Post(ctx, client, target, body)
	if err != nil {
		return fmt.Errorf("probe %s: %w", *route, err)
	}
	mode := "saturation"
	if *rate > 0 {
		mode = "rate"
	}
	run := bench.LoadRun{Name: *name, Review: *label, Route: *route, Mode: mode, Concurrency: *c, Rate: *rate, Answer: answer}
	var before map[string]float64
	if *iamMetrics {
		if before, err = bench.ServerIAMCalls(ctx, client, *url); err != nil {
			return err
		}
	}
	run, out, err := bench.RunHey(ctx, *hey, *pid, run, target, *review, *d)
	if err == nil && *iamMetrics {
		var after map[string]float64
		if after, err = bench.ServerIAMCalls(ctx, client, *url); err == nil {
			run.IAMCalls = bench.Diff(before, after)
		}
	}
	if werr := os.WriteFile(filepath.Join(*raw, "hey-"+*name+".txt"), []byte("# "+run.Command+"\n"+out), 0o644); werr != nil && err == nil {
		err = werr
	}
	if err != nil {
		return err
	}
	fmt.Printf("%-22s %6d requests (%d ok, %d errors)  %7.0f/s  p50 %-8v p99 %-8v server CPU %v/review\n",
		run.Name, run.Requests, run.OK, run.Errors, run.RPS, run.P50, run.P99, run.CPUPerReview())
	return writeJSON(filepath.Join(*raw, "load-"+*name+".json"), run)
}

func runSACreate(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("sacreate", flag.ContinueOnError)
	url := fs.String("url", "", "server base URL")
	cacert := fs.String("cacert", "", "CA of the serving certificate")
	pid := fs.Int("pid", 0, "server process id")
	review := fs.String("review", "", "ServiceAccount CREATE review used as the template")
	n := fs.Int("n", 500, "reviews, each a new ServiceAccount")
	c := fs.Int("c", 16, "concurrent clients")
	locker := fs.String("locker", "", "which per-seed lock the server uses, for the report")
	out := fs.String("out", "", "output JSON file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	tmpl, err := os.ReadFile(*review)
	if err != nil {
		return err
	}
	client, err := bench.Client(*cacert, *c)
	if err != nil {
		return err
	}
	run, err := bench.RunSACreate(ctx, client, *url, tmpl, *pid, *n, *c)
	if err != nil {
		return err
	}
	run.Locker = *locker
	fmt.Printf("sa-create-distinct     %6d requests (%d assigned, %d pending, %d failed)  %7.0f/s  p50 %v p99 %v  IAM %v\n",
		run.Requests, run.Assigned, run.Pending, run.Failed, run.RPS, run.P50, run.P99, run.IAMCalls)
	return writeJSON(*out, run)
}

func runReport(_ context.Context, args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	raw := fs.String("raw", "", "raw output directory")
	out := fs.String("out", "", "Markdown file to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	r, err := bench.LoadReport(*raw)
	if err != nil {
		return err
	}
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	if err := r.Render(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
