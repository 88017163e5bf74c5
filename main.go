// Command credential-webhook is a Kubernetes admission webhook that hands cloud credentials to
// KubeStash backup jobs without static keys: it packs ServiceAccounts into derived IAM roles,
// binds them to Azure managed identities, holds Jobs until their credentials work, and injects
// IRSA credentials into Pods.
//
// Subcommands: serve, certs, roles (with roles adopt and roles adopt-azure), aws-credentials,
// version. Every flag can also be set from the
// environment as CREDENTIAL_WEBHOOK_<FLAG> (upper case, dashes as underscores); a flag given on
// the command line wins.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "serve admission reviews over TLS (and run the sweeper)", runServe},
		{"certs", "write a self-signed development CA and serving certificate", runCerts},
		{"roles", "print the derived IAM roles of a seed role and how full they are; 'roles adopt' and\n                   'roles adopt-azure' take over what the upstream KubeStash managers created", runRoles},
		{"aws-credentials", "keep an AWS shared-credentials file fresh from a web-identity token (restic sidecar)", runAWSCredentials},
		{"version", "print the version", runVersion},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(ctx, args[1:], stdout, stderr)
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp):
				return 0
			default:
				fmt.Fprintf(stderr, "credential-webhook %s: %v\n", c.name, err)
				return 1
			}
		}
	}
	fmt.Fprintf(stderr, "credential-webhook: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: credential-webhook <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-16s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'credential-webhook <command> --help' for its flags. Every flag can also be set as")
	fmt.Fprintln(w, "CREDENTIAL_WEBHOOK_<FLAG> in the environment (e.g. CREDENTIAL_WEBHOOK_TLS_CERT_FILE).")
}

// newFlagSet returns a flag set whose usage text explains the command and the environment.
func newFlagSet(name, summary string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: credential-webhook %s [flags]\n\n%s\n\nflags (also CREDENTIAL_WEBHOOK_<FLAG> in the environment):\n", name, summary)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags applies CREDENTIAL_WEBHOOK_* environment variables, then the command line.
func parseFlags(fs *flag.FlagSet, args []string) error {
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		key := "CREDENTIAL_WEBHOOK_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(key); ok && envErr == nil {
			if err := f.Value.Set(v); err != nil {
				envErr = fmt.Errorf("%s=%q: %w", key, v, err)
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	return nil
}

func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", "Print the version.", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok && v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	fmt.Fprintf(stdout, "credential-webhook %s\n", v)
	return nil
}
