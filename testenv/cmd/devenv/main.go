// Command devenv starts moto on a free 127.0.0.1 port for the demo and the curl fixture script,
// creates the seed role the fixtures name, and (with --azure, the default) starts the local ARM
// and managed-identity token endpoints of testenv/arm holding the fixtures' managed identity
// (arm.Demo(), fixed IDs). It prints shell assignments on stdout (AWS_ENDPOINT_URL and static
// test credentials; IDENTITY_ENDPOINT, IDENTITY_HEADER, SSL_CERT_FILE and AZURE_* for the binary;
// AZURE_ARM_ENDPOINT for --azure-arm-endpoint) and keeps everything running until it receives
// SIGTERM or SIGINT. Test tooling only: it is never part of the product binary.
//
// SSL_CERT_FILE names only the local ARM server's CA: a shell that evaluates the exports trusts
// nothing else over TLS (run go commands that need the network before, not after).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"go.klusters.dev/credential-webhook/testenv/arm"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

func main() {
	seeds := flag.String("seeds", "kubestash-selfhost", "comma-separated seed role names to create (path /)")
	issuer := flag.String("issuer", "https://oidc.demo.example/id/DEMO", "OIDC issuer the seed roles trust")
	withAzure := flag.Bool("azure", true, "also start the local ARM and managed-identity endpoints with the demo identity "+
		arm.DemoIdentityName+" (subscription "+arm.DemoSubscriptionID+", resource group "+arm.DemoResourceGroup+", client ID "+arm.DemoClientID+")")
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
	if *withAzure {
		az, err := arm.StartProcess(ctx)
		if err != nil {
			fmt.Fprintln(os.Stderr, "devenv:", err)
			os.Exit(1)
		}
		defer az.Stop()
		az.PutIdentity(arm.Demo())
		for _, kv := range az.Env() {
			fmt.Printf("export %s\n", kv)
		}
		fmt.Printf("export AZURE_ARM_ENDPOINT=%s\n", az.URL)
		fmt.Printf("AZURE_DEMO_CLIENT_ID=%s\nAZURE_DEMO_TENANT_ID=%s\n", arm.DemoClientID, arm.DemoTenantID)
	}
	fmt.Println("DEVENV_READY=1")
	<-ctx.Done()
}
