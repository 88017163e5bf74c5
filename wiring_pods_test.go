package main

import (
	"flag"
	"io"
	"testing"

	"go.klusters.dev/credential-webhook/pods"
)

// The Pod token flags (issue 17): defaults as the EKS webhook's, values checked at parse time so
// a bad one stops the server before it injects anything.
func TestPodTokenFlags(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		want     pods.Config // Audience, MountPath and ExpirationJitter compared
		wantFail bool
	}{
		{"defaults", nil, pods.Config{ExpirationJitter: pods.DefaultExpirationJitter}, false},
		{"set", []string{"--aws-token-audience=minio", "--aws-token-mount-path=/var/run/secrets/irsa", "--aws-token-expiration-jitter=0"},
			pods.Config{Audience: "minio", MountPath: "/var/run/secrets/irsa"}, false},
		{"jitter too large", []string{"--aws-token-expiration-jitter=0.9"}, pods.Config{}, true},
		{"relative mount path", []string{"--aws-token-mount-path=secrets"}, pods.Config{}, true},
		{"two audiences", []string{"--aws-token-audience=a,b"}, pods.Config{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("serve", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			var p providerConfig
			p.register(fs)
			err := parseFlags(fs, tt.args)
			if (err != nil) != tt.wantFail {
				t.Fatalf("parse %v: %v, want failure %v", tt.args, err, tt.wantFail)
			}
			if tt.wantFail {
				return
			}
			got := p.pods
			if got.Audience != tt.want.Audience || got.MountPath != tt.want.MountPath || got.ExpirationJitter != tt.want.ExpirationJitter {
				t.Errorf("pods config %+v, want %+v", got, tt.want)
			}
		})
	}
}
