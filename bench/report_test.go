package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestVerdicts(t *testing.T) {
	r := &Report{
		Load: []LoadRun{
			{Name: "pod-saturation", Requests: 1000, ServerCPU: 90 * time.Millisecond, RPS: 8000},
			{Name: "job-saturation", Requests: 1000, ServerCPU: 150 * time.Millisecond, RPS: 5000},
			// The EKS webhook on the same machine in the same run: Pod 8000/3500 met, Job 5000/3500 missed.
			// Its CPU per review, 648 µs, is twice the 324 µs: this machine is twice as slow.
			{Name: EKSRunName, Requests: 1000, OK: 1000, RPS: 3500, ServerCPU: 648 * time.Millisecond, Answer: Answer{Status: 200, Allowed: true, PatchOps: 6}},
		},
		IAM: []IAMScenario{{Name: "steady state", Assignments: 10, Total: 10, Calls: map[string]int{"iam:UpdateAssumeRolePolicy": 10}}},
		Packing: []PackingResult{
			{MinLen: 71, MaxLen: 71, Density: 1},
			{MinLen: 88, MaxLen: 88, Density: 0.98},
			{MinLen: 50, MaxLen: 111, Density: 0.5}, // mixed sets do not count against the target
		},
	}
	r.Sim = []SimResult{
		{Config: SimConfig{Leak: 0.01}, LimitHitAt: time.Hour}, // a leak run is no verdict
		{Config: SimConfig{BackupConfigs: 1000}, Simulated: 30 * 24 * time.Hour, Wall: 70 * time.Second, Parallel: true,
			Days: []SimDay{{Day: 1, WorstRolesRatio: 1.04, PeakLive: 1000, PeakRolesInUse: 45}}},
	}
	r.Meta.Nproc = 2
	v := r.Verdicts()
	want := []struct{ known, met bool }{{true, true}, {true, false}, {true, true}, {true, false}, {true, true}, {true, false}, {true, true}, {true, false}}
	if len(v) != len(want) {
		t.Fatalf("%d verdicts, want %d", len(v), len(want))
	}
	for i, w := range want {
		if v[i].Known != w.known || v[i].Met != w.met {
			t.Errorf("verdict %d (%s): known %v met %v, want %v %v (%s)", i, v[i].Target, v[i].Known, v[i].Met, w.known, w.met, v[i].Measured)
		}
	}
	if got, want := v[2].Measured, "2.29 × (ours 8000 reviews/s ÷ EKS webhook 3500 reviews/s"; !strings.HasPrefix(got, want) {
		t.Errorf("Pod throughput verdict %q, want it to start with %q", got, want)
	}
	// Absolute figures are shown scaled by the machine's speed against the (the EKS
	// webhook's CPU per review), the verdict staying on the figure as measured.
	if got, want := v[0].Measured, "90.0 µs (real binary, hey -c 16, /proc utime+stime ÷ reviews); ≈ 45.0 µs on the issue's machine (÷ 2.00, the EKS webhook's CPU per review here, 648.0 µs, over the issue's 324.0 µs)"; got != want {
		t.Errorf("Pod CPU verdict %q, want %q", got, want)
	}
	if got, want := v[7].Measured, "1m10s for 30 days, beside 1 leak run(s) on the machine's 2 cores; ≈ 35s on the issue's machine"; !strings.HasPrefix(got, want) {
		t.Errorf("month verdict %q, want it to start with %q", got, want)
	}
	r.Sim[1].Wall = 59 * time.Second
	if v := r.Verdicts(); !v[7].Met {
		t.Errorf("thirty days in 59 s missed the minute: %s", v[7].Measured)
	}
	r.Sim[1].Simulated = 24 * time.Hour
	if v := r.Verdicts(); v[7].Known {
		t.Errorf("a one-day run gave a verdict on thirty days: %s", v[7].Measured)
	}
	r.Sim[1].Simulated, r.Sim[1].Wall = 30*24*time.Hour, 70*time.Second
	// Without the EKS webhook's CPU there is nothing to scale by, and no scaled figure.
	eksCPU := r.Load[2].ServerCPU
	r.Load[2].ServerCPU = 0
	if v := r.Verdicts(); strings.Contains(v[0].Measured, "issue's machine") || strings.Contains(v[7].Measured, "issue's machine") {
		t.Errorf("scaled without the EKS webhook's CPU: %q, %q", v[0].Measured, v[7].Measured)
	}
	r.Load[2].ServerCPU = eksCPU
	if empty := (&Report{}).Verdicts(); empty[0].Known || empty[2].Known || empty[3].Known || empty[5].Known || empty[6].Known || empty[7].Known {
		t.Error("with nothing measured every verdict must say so")
	}

	// Without the EKS run there is no throughput verdict, and no figure from elsewhere stands in.
	withEKS := r.Load
	r.Load = r.Load[:2]
	v = r.Verdicts()
	for _, i := range []int{2, 3} {
		if v[i].Known || !strings.Contains(v[i].Measured, "EKS webhook not measured in this run") {
			t.Errorf("verdict %d without the EKS run: known %v, %q", i, v[i].Known, v[i].Measured)
		}
	}
	if !strings.Contains(v[2].Measured, "ours 8000 reviews/s") {
		t.Errorf("Pod throughput without the EKS run should still show ours: %q", v[2].Measured)
	}
	// An EKS webhook that answered without injecting did less work than ours: no verdict either.
	r.Load = append(r.Load[:2:2], LoadRun{Name: EKSRunName, Requests: 1000, OK: 1000, RPS: 9000, Answer: Answer{Status: 200, Allowed: true}})
	if v := r.Verdicts(); v[2].Known || !strings.Contains(v[2].Measured, "not comparable") {
		t.Errorf("EKS webhook without a patch: known %v, %q", v[2].Known, v[2].Measured)
	}
	r.Load = withEKS

	r.Sim[1].Days[0].Refused = 1
	if v := r.Verdicts(); v[6].Met {
		t.Errorf("a healthy month with a refused ServiceAccount met the target: %s", v[6].Measured)
	}
	r.Sim[1].Days[0].Refused, r.Sim[1].Days[0].WorstRolesRatio = 0, 1.06
	if v := r.Verdicts(); v[6].Met {
		t.Errorf("roles 6 %% over the ideal met the target: %s", v[6].Measured)
	}
}

// A raw directory round-trips into a report that shows every part and names the machine.
func TestLoadReportAndRender(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, v any) {
		t.Helper()
		if s, ok := v.(string); ok {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		b, err := jsonIndent(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(MetaFile, Meta{Date: "2026-01-02T03:04:05Z", Commit: "abc123", Nproc: 2, CPUModel: "Test CPU", MemTotal: "1.0 GiB", Hey: "hey x", EKS: "amazon-eks-pod-identity-webhook v0.6.17"})
	write(GoBenchFile, "pkg: go.klusters.dev/credential-webhook/bench\nBenchmarkReview/pod-irsa-2 \t 100\t 250000 ns/op\t 240000 cpu-ns/op\t 36000 B/op\t 219 allocs/op\n")
	write("load-pod-saturation.json", LoadRun{Name: "pod-saturation", Review: "Pod", Route: "/mutate/pods", Mode: "saturation", Concurrency: 16, Requests: 100, OK: 100, RPS: 3000,
		ServerCPU: 30 * time.Millisecond, P50: 3 * time.Millisecond, Answer: Answer{Status: 200, Allowed: true, PatchOps: 1, Paths: []string{"/spec/volumes/3"}}})
	write("load-eks-pod-saturation.json", LoadRun{Name: EKSRunName, Review: "Pod → amazon-eks-pod-identity-webhook v0.6.17", Route: "/mutate", Mode: "saturation", Concurrency: 16,
		Requests: 100, OK: 100, RPS: 1200, ServerCPU: 50 * time.Millisecond, Answer: Answer{Status: 200, Allowed: true, PatchOps: 2, Paths: []string{"/spec/volumes/0", "/spec/containers"}}})
	write("load-pod-rate.json", LoadRun{Name: "pod-rate", Review: "Pod", Route: "/mutate/pods", Mode: "rate", Rate: 1000, Requests: 100, RPS: 1000})
	write("load-job-rate.json", LoadRun{Name: "job-rate", Review: "Job", Route: "/mutate/jobs", Mode: "rate", Rate: 1000, Concurrency: 16, Requests: 100, RPS: 120})
	write(IAMFile, []IAMScenario{{Name: "steady state", What: "warm", Assignments: 10, Total: 10, Calls: map[string]int{"iam:UpdateAssumeRolePolicy": 10}}})
	write(PackingFile, []PackingResult{{Name: "backup sessions (equal length)", Quota: 2048, Statements: 1, Subjects: 2000, MinLen: 71, MaxLen: 71, Roles: 96, LowerBound: 96, TheoreticalMax: 21, MinPerFullRole: 21, MeanPerFullRole: 21, Density: 1, MeanFill: 0.98}})
	write(SimFile, []SimResult{
		{Config: SimConfig{BackupConfigs: 1000, Schedule: 5 * time.Minute, SessionMin: time.Minute, SessionMax: 4 * time.Minute, RoleCreationLimit: 100}, Capacity: 23, Simulated: 24 * time.Hour, Wall: 9 * time.Second,
			Days: []SimDay{{Day: 1, Sessions: 288000, PeakLive: 1000, PeakListed: 1010, PeakRolesInUse: 45, WorstRolesRatio: 1.023, PeakRoles: 45, Collections: 2900, MaxGCLag: 80 * time.Second, IAMCalls: map[string]int{"UpdateAssumeRolePolicy": 100000, "GetRole": 14000}}}},
		{Config: SimConfig{BackupConfigs: 1000, Leak: 0.001, RoleCreationLimit: 100}, Capacity: 23, Simulated: 108 * time.Hour, LimitHitAt: 108 * time.Hour, FinalRoles: 100, FinalListed: 2300},
	})
	write(IdleFile, IdleCPU{Duration: 5 * time.Second, CPU: 50 * time.Millisecond})
	write("profile-pod.txt", "      flat  flat%   sum%        cum   cum%\n         0     0%     0%      3.45s 78.41%  go.klusters.dev/credential-webhook/admission.NewHandler.(*server).review.func4\n         0     0%     0%      1.05s 23.86%  go.klusters.dev/credential-webhook/admission.OwnAnnotationsGuard.Admit\n")
	write(CommandsFile, "go test -bench . ./bench/\n")

	r, err := LoadReport(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Load) != 4 || r.Load[0].Name != "pod-rate" || r.Load[2].Name != EKSRunName || r.Load[3].Name != "job-rate" {
		t.Fatalf("load runs %+v: want Pod before Job, the fixed-rate run first, the EKS webhook's right after our Pod saturation run", r.Load)
	}
	var b strings.Builder
	if err := r.Render(&b); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"| commit | `abc123` |", "2 cores, Test CPU, 1.0 GiB",
		"| ≤ 100.0 µs server CPU per Pod review | 300.0 µs", "**missed**", // 30 ms / 100 reviews
		"| Pod reviews/s ≥ 2 × the EKS pod-identity webhook's", "| 2.50 × (ours 3000 reviews/s ÷ EKS webhook 1200 reviews/s, hey -c 16 each) | met |",
		"| EKS pod-identity webhook (throughput comparison) | amazon-eks-pod-identity-webhook v0.6.17 |",
		"| Pod → amazon-eks-pod-identity-webhook v0.6.17 | `/mutate` | saturation (-c 16) | 100 | 100 | 1200 | n/a | n/a | n/a | 500.0 µs | 0.0 µs | n/a | 2 patch ops (volumes, containers), 0 warning(s) |",
		"| ours not measured; EKS webhook 1200 reviews/s | not measured |", // the Job has no saturation run here
		"| 1 IAM call per assignment in steady state | 1.00", "| met |",
		"| bench | Review/pod-irsa | 1 | 250000 | 240000 | 36000 | 219 |",
		"1 patch ops (volumes)", "10 ms of CPU per second",
		"| backup sessions (equal length) | 1 | 2048 | 2000 | 71 | 96 | 96 | 21 | 21 / 21.0 | 100.0 % | 98.0 % |",
		"| own-annotations guard (decodes the object's metadata again) | 1.05 s | 30 % |",
		"go test -bench . ./bench/",
		"1000/s fixed (-c 16) — **rate not reached**", // the Job run got 120/s
		"| thirty days: derived roles in use within 5 % of ⌈live ServiceAccounts ÷ capacity⌉, nothing refused | worst 1.023 × over 1 days",
		"| leak 0.1 % |", "| 4.50 days (100 roles, 2300 subjects) |",
		"by action: UpdateAssumeRolePolicy 100000, GetRole 14000.", "so the seed's ceiling is 2300 subjects",
		"| 1 | 288000 | 1000 | 1010 | 45 | 1.023 | 45 | 2900 | 1m20s | 0 | 114000 |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if strings.Count(md, "rate not reached") != 1 {
		t.Errorf("only the Job run missed its rate:\n%s", md)
	}
	if t.Failed() {
		t.Log(md)
	}

	// The same directory without the EKS run: the throughput verdict says so, and no constant stands in.
	if err := os.Remove(filepath.Join(dir, "load-eks-pod-saturation.json")); err != nil {
		t.Fatal(err)
	}
	write(MetaFile, Meta{Date: "2026-01-02T03:04:05Z", Commit: "abc123", Nproc: 2})
	if r, err = LoadReport(dir); err != nil {
		t.Fatal(err)
	}
	b.Reset()
	if err := r.Render(&b); err != nil {
		t.Fatal(err)
	}
	md = b.String()
	for _, want := range []string{
		"| ours 3000 reviews/s; EKS webhook not measured in this run | not measured |",
		"| EKS pod-identity webhook (throughput comparison) | not measured in this run |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report without the EKS run lacks %q", want)
		}
	}
	if strings.Contains(md, "7800") || strings.Contains(md, "3900") {
		t.Errorf("report without the EKS run quotes a fixed EKS figure:\n%s", md)
	}
}
