# Two commands a newcomer needs: `make demo` and `make test`. Everything else is a piece of those.
SHELL := /usr/bin/env bash
GO ?= go
BIN := bin/credential-webhook
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: all build demo demo-cluster test unit curl-fixtures e2e k8s-binaries fmt vet bench fuzz clean manifests manifests-check

all: build

build:
	$(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(BIN) .

## demo: the webhook with dev certs and moto, reviews in and patches out with curl (seconds)
demo:
	bash scripts/demo.sh

## demo-cluster: the KubeStash flow on a real control plane with the real binary (~1 min warm)
demo-cluster:
	bash scripts/demo-cluster.sh

## bench: Go benchmarks, profiles, packing, the thirty-day simulation, IAM calls (moto), hey load on the real binary, memory and a burst of new ServiceAccounts (e2e harness); writes docs/benchmarks.md (~17 min)
bench:
	bash bench/run.sh

## fuzz: every fuzz target for FUZZTIME each (default 20s); plain `go test` runs the seed corpora
fuzz:
	bash scripts/fuzz.sh

## test: everything CI runs: unit and integration tests, the curl fixtures, the e2e harness
test: vet unit manifests-check curl-fixtures e2e

## manifests: render manifests/chart into the static manifests/ (Helm SDK, no cluster)
manifests:
	bash scripts/manifests.sh

## manifests-check: manifests/ matches a fresh render of the chart; chart lint, golden and schema tests
manifests-check:
	bash scripts/manifests.sh --test

## unit: the quick loop (root module; integration tests start moto themselves)
unit:
	AWS_EC2_METADATA_DISABLED=true $(GO) test -count=1 ./...

curl-fixtures:
	bash scripts/curl-fixtures.sh

k8s-binaries:
	bash e2e/tools/k8s-binaries.sh

## e2e: a real kube-apiserver, etcd, kube-controller-manager and moto (first run builds Kubernetes, ~15 min)
e2e:
	KUBE_BINARIES="$$(bash e2e/tools/k8s-binaries.sh | tail -n1)" && export KUBE_BINARIES && \
	cd e2e && AWS_EC2_METADATA_DISABLED=true $(GO) test -count=1 -timeout 40m ./...

fmt:
	gofmt -l -w $$(git ls-files '*.go')

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

clean:
	rm -rf bin
