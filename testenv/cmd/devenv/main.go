// Command devenv starts moto on a free 127.0.0.1 port for the demo and the curl fixture script,
// creates the seed role the fixtures name, prints shell assignments (AWS_ENDPOINT_URL and static
// test credentials) on stdout, and keeps moto running until it receives SIGTERM or SIGINT.
// Test tooling only: it is never part of the product binary.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"go.klusters.dev/credential-webhook/testenv/moto"
)

func main() {
	seeds := flag.String("seeds", "kubestash-selfhost", "comma-separated seed role names to create (path /)")
	issuer := flag.String("issuer", "https://oidc.demo.example/id/DEMO", "OIDC issuer the seed roles trust")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv, err := moto.StartProcess(ctx, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "devenv:", err)
		os.Exit(1)
	}
	defer srv.Stop()
	cfg, err := srv.AWSConfig(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "devenv:", err)
		os.Exit(1)
	}
	for _, name := range strings.Split(*seeds, ",") {
		arn, err := moto.CreateSeedRole(ctx, cfg, name, "/", *issuer)
		if err != nil {
			fmt.Fprintln(os.Stderr, "devenv: creating seed role:", err)
			os.Exit(1)
		}
		fmt.Printf("SEED_ROLE_ARN=%s\n", arn)
	}
	for _, kv := range srv.Env() {
		fmt.Printf("export %s\n", kv)
	}
	fmt.Println("DEVENV_READY=1")
	<-ctx.Done()
}
