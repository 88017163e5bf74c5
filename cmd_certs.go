package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"go.klusters.dev/credential-webhook/certs"
)

func runCerts(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("certs", "Write a self-signed development CA (ca.crt, ca.key) and a serving pair (tls.crt, tls.key)\nsigned by it into --dir. For development and tests; in a cluster cert-manager issues the pair.", stderr)
	dir := fs.String("dir", "", "folder to write into (required)")
	hosts := fs.String("hosts", "127.0.0.1,localhost", "comma-separated DNS names and IPs for the serving certificate")
	validity := fs.Duration("validity", 365*24*time.Hour, "validity of the certificates")
	client := fs.String("client-name", "", "also write a client pair (client.crt, client.key) with this common name, for --client-ca-file and --allowed-client-names")
	reuse := fs.Bool("reuse-ca", false, "sign a new serving pair with the existing ca.crt/ca.key in --dir (rotation)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("--dir is required")
	}
	if err := certs.WriteDev(certs.DevOptions{Dir: *dir, Hosts: certs.ParseHosts(*hosts), Validity: *validity, ReuseCA: *reuse, ClientName: *client}); err != nil {
		return err
	}
	files := []string{"ca.crt", "tls.crt", "tls.key"}
	if *client != "" {
		files = append(files, "client.crt", "client.key")
	}
	for _, f := range files {
		fmt.Fprintln(stdout, filepath.Join(*dir, f))
	}
	return nil
}
