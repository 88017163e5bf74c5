package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"time"

	"go.klusters.dev/credential-webhook/bench"
)

// runSim is `benchtool sim`: the thirty-day simulation against the in-memory IAM model, once
// healthy and once per leak rate (sessions whose ServiceAccount is never deleted) until the seed
// hits its ceiling. sim_test.go checks the model against moto on a short run of the same code.
func runSim(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	def := bench.DefaultSimConfig()
	cfg := def
	fs.IntVar(&cfg.BackupConfigs, "backupconfigs", def.BackupConfigs, "BackupConfigurations")
	fs.DurationVar(&cfg.Schedule, "schedule", def.Schedule, "every BackupConfiguration's schedule")
	days := fs.Float64("days", 30, "simulated days")
	fs.DurationVar(&cfg.SessionMin, "session-min", def.SessionMin, "shortest session (its ServiceAccount is deleted at its end)")
	fs.DurationVar(&cfg.SessionMax, "session-max", def.SessionMax, "longest session")
	fs.IntVar(&cfg.RoleCreationLimit, "role-creation-limit", def.RoleCreationLimit, "serve's --role-creation-limit")
	fs.IntVar(&cfg.Quota, "quota", def.Quota, "trust policy quota (characters)")
	fs.DurationVar(&cfg.EmptyRoleGrace, "gc-empty-role-grace", def.EmptyRoleGrace, "serve's --gc-empty-role-grace")
	leaks := fs.String("leaks", "0.001,0.01", "comma-separated leak rates to run until the ceiling (empty: none)")
	leakDays := fs.Int("leak-days", 30, "longest a leak run may go")
	out := fs.String("out", "", "output JSON file")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the runs here")
	parallel := fs.Bool("parallel", false, "run the healthy month and the leak runs at the same time (shorter, but each run's wall time then includes the others' load on the cores)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Getenv("GOGC") == "" {
		// The simulation's live heap is a few MiB and it allocates a few GB a day: at the default
		// GOGC of 100 the collector and the scavenger cost a third of the month's CPU (a day:
		// 14.5 s at 100, 9.4 s at 400, measured at 9026342), for ~10 MiB more resident memory.
		// Once the rest got faster, 400 still cost 15 % of a day's CPU (gctrace: 440-520 ms a
		// day at 400, 236 ms at 800, 60-83 ms at 1600, for a peak heap of 24, 44 and 65-83 MiB).
		debug.SetGCPercent(1600)
	}
	if os.Getenv("GOMAXPROCS") == "" && !*parallel {
		// A run is a sequence of steps, each waiting for the last: the callers of a step, the
		// lock session and its writes hand work to each other through channels, and with two
		// Ps every hand-off woke the other thread (futex), stole work and took locks across
		// cores. One P runs the same goroutines with the same interleaving points (the gate,
		// channel operations), so placement and IAM calls are as before: 2 days took 7.7 to 8.0
		// s and 7.5 to 7.9 s of CPU against 9.4 to 9.8 s and 11.4 to 11.8 s with two (a 2-core
		// machine), 154,661 and 154,686 IAM calls a day against 155,193 and 155,316, the same
		// roles in use. -parallel runs several months at once and keeps every core.
		runtime.GOMAXPROCS(1)
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *days <= 0 {
		return errors.New("-days must be positive")
	}
	cfg.Duration = time.Duration(*days * float64(24*time.Hour))
	cfgs := []bench.SimConfig{cfg}
	for _, leak := range splitFloats(*leaks) {
		c := cfg
		c.Leak, c.StopAtLimit, c.Duration = leak, true, time.Duration(*leakDays)*24*time.Hour
		cfgs = append(cfgs, c)
	}
	runs, err := simulateAll(ctx, cfgs, *parallel, func(r bench.SimResult) { fmt.Println(bench.SimSummary(r)) })
	if err != nil {
		return err
	}
	if *out == "" {
		return nil
	}
	return writeJSON(*out, runs)
}

// simulateAll runs every configuration on its own model and returns the results in the order of
// cfgs, calling show with each in that order as soon as it and those before it are done. In
// parallel the sim phase lasts as long as its longest run rather than their sum (at 9026342:
// 4m45s + 1m1s + 6s), but the month is not alone on the cores: one simulated clock, yet its
// writers and callers use 1.2 of the 2 cores, and beside the leak runs its first five days took
// 25-27 s instead of 21.4 s (f91bbcc). The wall time of thirty days is a target, so make bench
// runs them one after the other (the default).
func simulateAll(ctx context.Context, cfgs []bench.SimConfig, parallel bool, show func(bench.SimResult)) ([]bench.SimResult, error) {
	runs := make([]bench.SimResult, len(cfgs))
	errs := make([]error, len(cfgs))
	done := make([]chan struct{}, len(cfgs))
	for i := range cfgs {
		done[i] = make(chan struct{})
	}
	run := func(i int) {
		defer close(done[i])
		runs[i], errs[i] = bench.SimulateOnModel(ctx, cfgs[i])
		runs[i].Parallel = parallel && len(cfgs) > 1
	}
	if parallel {
		for i := range cfgs {
			go run(i)
		}
	}
	for i := range cfgs {
		if !parallel {
			run(i)
		}
		<-done[i]
		if errs[i] != nil {
			// The others still run: wait for them, so none outlives the command's profile.
			for _, d := range done[i+1:] {
				<-d
			}
			return nil, fmt.Errorf("simulation %d of %d (leak %g): %w", i+1, len(cfgs), cfgs[i].Leak, errs[i])
		}
		show(runs[i])
	}
	return runs, nil
}

func splitFloats(s string) []float64 {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(f, &v); err == nil && v > 0 {
			out = append(out, v)
		}
	}
	return out
}
