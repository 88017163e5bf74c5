#!/usr/bin/env bash
# Renders the Helm chart manifests/chart into the static kustomize base manifests/*.yaml and
# manifests/iam-policy.json, with the Helm SDK (the Go module manifests/tools; no helm CLI, no
# cluster). The values are the chart's defaults plus manifests/tools/static-values.yaml.
#
#   scripts/manifests.sh           # write manifests/ (make manifests)
#   scripts/manifests.sh --check   # write nothing; fail when manifests/ differs from a fresh render
#   scripts/manifests.sh --test    # --check, plus the chart's lint, golden and schema tests
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/manifests/tools"

case "${1:-}" in
  "")
    go run . static -chart ../chart -out .. -values static-values.yaml ;;
  --check)
    go run . static -chart ../chart -out .. -values static-values.yaml -check ;;
  --test)
    go run . static -chart ../chart -out .. -values static-values.yaml -check
    go vet ./...
    go test -count=1 ./... ;;
  *)
    echo "usage: $0 [--check|--test]" >&2
    exit 2 ;;
esac
