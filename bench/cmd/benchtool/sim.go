package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
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
	if err := fs.Parse(args); err != nil {
		return err
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
	var runs []bench.SimResult
	run := func(c bench.SimConfig) error {
		r, err := bench.SimulateOnModel(ctx, c)
		if err != nil {
			return err
		}
		fmt.Println(bench.SimSummary(r))
		runs = append(runs, r)
		return nil
	}
	if err := run(cfg); err != nil {
		return err
	}
	for _, leak := range splitFloats(*leaks) {
		c := cfg
		c.Leak, c.StopAtLimit, c.Duration = leak, true, time.Duration(*leakDays)*24*time.Hour
		if err := run(c); err != nil {
			return err
		}
	}
	if *out == "" {
		return nil
	}
	return writeJSON(*out, runs)
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
