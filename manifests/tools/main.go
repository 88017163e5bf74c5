// Command tools renders, lints and checks the credential-webhook Helm chart (manifests/chart)
// with the Helm SDK, so neither the helm CLI nor a cluster is needed. It is its own Go module, so
// the SDK's dependencies never enter the server's go.mod.
//
//	go run . static [-chart ../chart] [-out ..] [-values static-values.yaml] [-check]
//	go run . template [-chart ../chart] [-name N] [-namespace NS] [-f values.yaml]... [-notes]
//	go run . lint [-chart ../chart] [-f values.yaml]...
//
// static writes the kustomize base manifests/*.yaml and manifests/iam-policy.json (scripts/
// manifests.sh runs it); with -check it writes nothing and fails when the checked-in files
// differ from a fresh render. template prints what `helm template` would. Timings go to stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "manifests:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: tools static|template|lint [flags] (see -h of each)")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	chartDir := fs.String("chart", "../chart", "the chart folder")
	var valueFiles []string
	switch args[0] {
	case "static":
		out := fs.String("out", "..", "the folder of the static manifests (manifests/)")
		valuesFile := fs.String("values", "static-values.yaml", "values of the static render, over the chart's defaults")
		check := fs.Bool("check", false, "write nothing; fail when the files in -out differ from a fresh render")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return runStatic(ctx, *chartDir, *out, *valuesFile, *check, stdout, stderr)
	case "template", "lint":
		fs.Func("f", "a values file (repeatable; later files win)", func(s string) error {
			valueFiles = append(valueFiles, s)
			return nil
		})
		name := fs.String("name", DefaultRelease.Name, "release name")
		namespace := fs.String("namespace", DefaultRelease.Namespace, "release namespace")
		notes := fs.Bool("notes", false, "template: print NOTES.txt after the manifest")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		vals, err := ReadValues(valueFiles...)
		if err != nil {
			return err
		}
		start := time.Now()
		if args[0] == "lint" {
			if err := Lint(*chartDir, *namespace, vals); err != nil {
				return err
			}
			fmt.Fprintf(stderr, "lint: %s passed in %s\n", *chartDir, time.Since(start).Round(time.Millisecond))
			return nil
		}
		ch, err := LoadChart(*chartDir)
		if err != nil {
			return err
		}
		r, err := Render(ctx, ch, Release{Name: *name, Namespace: *namespace}, vals)
		if err != nil {
			return err
		}
		fmt.Fprint(stdout, r.Manifest)
		if *notes {
			fmt.Fprintf(stdout, "\nNOTES:\n%s\n", r.Notes)
		}
		fmt.Fprintf(stderr, "template: rendered in %s\n", time.Since(start).Round(time.Millisecond))
		return nil
	default:
		return fmt.Errorf("unknown command %q (static, template, lint)", args[0])
	}
}

func runStatic(ctx context.Context, chartDir, out, valuesFile string, check bool, stdout, stderr io.Writer) error {
	start := time.Now()
	vals, err := ReadValues(valuesFile)
	if err != nil {
		return err
	}
	ch, err := LoadChart(chartDir)
	if err != nil {
		return err
	}
	r, err := Render(ctx, ch, DefaultRelease, vals)
	if err != nil {
		return err
	}
	files, err := StaticFiles(r)
	if err != nil {
		return err
	}
	rendered := time.Since(start)
	if abs, err := filepath.Abs(out); err == nil {
		out = abs
	}
	if check {
		changed, stale, err := Diff(out, files)
		if err != nil {
			return err
		}
		if len(changed)+len(stale) > 0 {
			var msg []string
			if len(changed) > 0 {
				msg = append(msg, "differ from the chart: "+strings.Join(changed, ", "))
			}
			if len(stale) > 0 {
				msg = append(msg, "no longer rendered: "+strings.Join(stale, ", "))
			}
			return fmt.Errorf("static manifests in %s are out of date (%s); run `make manifests`", out, strings.Join(msg, "; "))
		}
		fmt.Fprintf(stderr, "static: %d files in %s match the chart (rendered in %s)\n", len(files), out, rendered.Round(time.Millisecond))
		return nil
	}
	if err := Write(out, files); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "static: wrote %d files to %s (rendered in %s)\n", len(files), out, rendered.Round(time.Millisecond))
	return nil
}
