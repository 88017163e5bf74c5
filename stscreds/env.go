package stscreds

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// The command line and environment contract between the admission webhook, which builds the
// sidecar container (package pods), and this engine. Both sides use these names so they cannot
// drift apart.
const (
	// Subcommand is the binary's subcommand that runs Run.
	Subcommand = "aws-credentials"
	// CheckFlag makes the subcommand exit 0 only when the credentials file is complete (Check):
	// the sidecar's startupProbe, so later containers start only once the first file exists.
	CheckFlag = "--check"

	EnvRoleARN         = "AWS_ROLE_ARN"
	EnvTokenFile       = "AWS_WEB_IDENTITY_TOKEN_FILE"
	EnvCredentialsFile = "AWS_SHARED_CREDENTIALS_FILE"
	// EnvSessionName is the AWS SDKs' own override of the role session name.
	EnvSessionName = "AWS_ROLE_SESSION_NAME"
	// EnvPodName is filled by the downward API (metadata.name) so CloudTrail shows which Pod
	// assumed the role.
	EnvPodName = "POD_NAME"
)

// ConfigFromEnv builds a Config from the sidecar's environment. getenv is os.Getenv in
// production; a parameter so the mapping can be tested without touching the process env.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	cfg := Config{
		RoleARN:         getenv(EnvRoleARN),
		TokenFile:       getenv(EnvTokenFile),
		CredentialsFile: getenv(EnvCredentialsFile),
		SessionName:     getenv(EnvSessionName),
	}
	if cfg.SessionName == "" {
		cfg.SessionName = getenv(EnvPodName)
	}
	var missing []string
	for _, kv := range [][2]string{
		{EnvRoleARN, cfg.RoleARN}, {EnvTokenFile, cfg.TokenFile}, {EnvCredentialsFile, cfg.CredentialsFile},
	} {
		if kv[1] == "" {
			missing = append(missing, kv[0])
		}
	}
	if len(missing) > 0 {
		return Config{}, fmt.Errorf("stscreds: environment variables not set: %s", strings.Join(missing, ", "))
	}
	return cfg, nil
}

// maxSessionName is STS's limit on RoleSessionName.
const maxSessionName = 64

// SessionName turns a Pod name into a valid STS role session name ([\w+=,.@-]{2,64}): other
// characters become '-', long names keep their tail (the generated suffix of a Job's Pod is what
// tells two Pods apart). An empty or too short result is replaced by a random name.
func SessionName(podName string) string {
	var sb strings.Builder
	for _, r := range podName {
		if (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') || strings.ContainsRune("_+=,.@-", r) {
			sb.WriteRune(r)
		} else {
			sb.WriteByte('-')
		}
	}
	s := sb.String()
	if len(s) > maxSessionName {
		s = s[len(s)-maxSessionName:]
	}
	if len(s) < 2 {
		var b [8]byte
		_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
		s = "credential-webhook-" + hex.EncodeToString(b[:])
	}
	return s
}

// Check reports whether path holds a complete credentials file of ours: the sidecar's startup
// probe. It never prints the values.
func Check(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("stscreds: check credentials file: %w", err)
	}
	found := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok && strings.TrimSpace(v) != "" {
			found[strings.TrimSpace(k)] = true
		}
	}
	for _, k := range []string{keyAccessKeyID, keySecretAccessKey, keySessionToken} {
		if !found[k] {
			return fmt.Errorf("stscreds: check credentials file %s: %w: %s", path, errIncomplete, k)
		}
	}
	return nil
}

var errIncomplete = errors.New("incomplete credentials file, missing")

// Command is the whole `aws-credentials` subcommand, so main only has to route to it: with
// CheckFlag it checks the file named by AWS_SHARED_CREDENTIALS_FILE (the startup probe, which
// execs in the container and so sees its env); without arguments it runs Run with
// ConfigFromEnv(getenv) until ctx ends.
func Command(ctx context.Context, args []string, getenv func(string) string, log *slog.Logger) error {
	switch {
	case len(args) == 1 && args[0] == CheckFlag:
		path := getenv(EnvCredentialsFile)
		if path == "" {
			return fmt.Errorf("stscreds: %s not set", EnvCredentialsFile)
		}
		return Check(path)
	case len(args) > 0:
		return fmt.Errorf("stscreds: usage: %s [%s]; configured by %s, %s, %s and %s", Subcommand, CheckFlag,
			EnvRoleARN, EnvTokenFile, EnvCredentialsFile, EnvPodName)
	}
	cfg, err := ConfigFromEnv(getenv)
	if err != nil {
		return err
	}
	cfg.Log = log
	return Run(ctx, cfg)
}
