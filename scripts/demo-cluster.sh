#!/usr/bin/env bash
# make demo-cluster: the whole KubeStash flow on a real control plane (etcd, kube-apiserver,
# kube-controller-manager, moto behind the IAM proxy) with the real credential-webhook binary:
# a session ServiceAccount gets its derived role, its backup Job is held until STS accepts the
# ServiceAccount's token, then released, and its Pod carries the injected IRSA credentials.
# About a minute on a warm cache; the first run builds Kubernetes (e2e/tools/k8s-binaries.sh).
# E2E_KEEP=1 keeps every component's log; DEMO_PROPAGATION=15s changes the trust propagation delay.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export AWS_EC2_METADATA_DISABLED=true
if [ -z "${KUBE_BINARIES:-}" ]; then
  KUBE_BINARIES="$(bash "$ROOT/e2e/tools/k8s-binaries.sh" | tail -n1)"
  export KUBE_BINARIES
fi
cd "$ROOT/e2e"
exec go run ./cmd/democluster "$@"
