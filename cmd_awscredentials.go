package main

import (
	"context"
	"io"
	"os"

	"go.klusters.dev/credential-webhook/stscreds"
)

// runAWSCredentials is the restic sidecar: it keeps an AWS shared-credentials file fresh from the
// Pod's web-identity token (configured by the environment the Pod webhook injects), or, with
// --check, is the sidecar's startup probe.
func runAWSCredentials(ctx context.Context, args []string, _ io.Writer, stderr io.Writer) error {
	log, err := newLogger(stderr, "info")
	if err != nil {
		return err
	}
	return stscreds.Command(ctx, args, os.Getenv, log)
}
