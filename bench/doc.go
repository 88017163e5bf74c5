// Package bench measures credential-webhook: review latency, throughput and server CPU under
// load (hey against the real binary over TLS on 127.0.0.1), IAM calls per assignment (moto behind
// testenv/iamproxy's counters), trust-policy packing density (pure), and the in-process cost of
// whole review paths (Go benchmarks in this package, with CPU profiles), and thirty days of
// KubeStash sessions through the production Assigner and garbage collection on a simulated clock
// (sim.go, against the in-memory IAM of bench/iammodel).
//
// `make bench` runs bench/run.sh, which drives cmd/benchtool and writes docs/benchmarks.md from
// the raw outputs it keeps in docs/bench-raw/. This package is test tooling: it imports testenv/
// and is never linked into the product binary.
//
// The parsers (hey's summary, /proc/PID/stat, `go test -bench` output, Prometheus text) and the
// packing simulation are pure functions; everything that starts processes or talks to moto takes
// its dependencies as arguments.
package bench
