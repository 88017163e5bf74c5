package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"go.klusters.dev/credential-webhook/admission"
)

// deps are the shared things providers are built from.
type deps struct {
	log        *slog.Logger
	reg        prometheus.Registerer
	kube       kubernetes.Interface // nil in local mode
	restConfig *rest.Config
	self       map[string]bool
}

// wiring is what serve runs: the admission routes and background loops (informers, sweeper).
type wiring struct {
	routes     []admission.Route
	background []func(context.Context)
}

// providerConfig holds the flags of the providers (AWS, Azure, Pods, Jobs).
type providerConfig struct{}

func (p *providerConfig) register(fs flagRegistrar) {}

type flagRegistrar interface {
	StringVar(*string, string, string, string)
	BoolVar(*bool, string, bool, string)
	DurationVar(*time.Duration, string, time.Duration, string)
}

func (p *providerConfig) build(ctx context.Context, d deps) (*wiring, error) {
	guard := admission.OwnAnnotationsGuard{Self: d.self}
	w := &wiring{routes: []admission.Route{
		{Path: "/mutate/serviceaccounts", Name: "serviceaccounts", Group: "", Kind: "ServiceAccount", Plugins: []admission.Plugin{guard}},
		{Path: "/mutate/jobs", Name: "jobs", Group: "batch", Kind: "Job", Plugins: []admission.Plugin{guard}},
		{Path: "/mutate/pods", Name: "pods", Group: "", Kind: "Pod"},
	}}
	return w, nil
}
