#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kubectl at a pinned version from the Go module
# k8s.io/kubernetes, and provides etcd, into a cache folder outside the repository keyed by version.
# A warm cache makes this a no-op. Prints the folder holding the binaries on its last line.
#
# Why build: no download of prebuilt binaries is possible here, but the Go module proxy is reachable.
# k8s.io/kubernetes' go.mod points every k8s.io/* staging module at ./staging, which a module
# consumer cannot see, so a separate tools module re-points each of them at the published v0.x tag.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
CACHE_ROOT="${CREDENTIAL_WEBHOOK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/credential-webhook}"
OUT="$CACHE_ROOT/k8s/$K8S_VERSION"
BINS=(kube-apiserver kube-controller-manager kubectl etcd)

log() { printf '[k8s-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

have_all() {
  for b in "${BINS[@]}"; do [ -x "$OUT/$b" ] || return 1; done
}

if have_all; then
  log "cache hit: $OUT"
  echo "$OUT"
  exit 0
fi

mkdir -p "$OUT"

# One build at a time per version (two test packages, or `make e2e` next to a plain `go test`):
# whoever waits for the lock finds a warm cache afterwards.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$OUT.lock"
  if ! flock -n 9; then
    log "another build of $K8S_VERSION is running; waiting for it"
    flock 9
  fi
  if have_all; then
    log "cache hit: $OUT"
    echo "$OUT"
    exit 0
  fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

log "building Kubernetes $K8S_VERSION (staging modules $STAGING_VERSION) into $OUT"
log "a cold build takes about 10 minutes and 2.5 GB of memory; progress follows"

cd "$work"
modfile="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
[ -f "$modfile" ] || { log "could not download k8s.io/kubernetes@$K8S_VERSION go.mod"; exit 1; }
goversion="$(sed -n 's/^go \(.*\)/\1/p' "$modfile" | head -1)"

{
  echo "module credential-webhook/k8s-tools"
  echo
  echo "go $goversion"
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  echo "replace ("
  grep -E '^\s+k8s\.io/[a-z0-9-]+ => \./staging/' "$modfile" | awk -v v="$STAGING_VERSION" '{print "\t" $1 " => " $1 " " v}'
  echo ")"
} > go.mod

cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "go.etcd.io/etcd/server/v3"
)
GO

log "resolving modules (go mod tidy)"
GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
GOFLAGS=-mod=mod go mod download

# Version stamping so /version reports the real version instead of v0.0.0-master.
pkg="k8s.io/component-base/version"
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

for b in kube-apiserver kube-controller-manager kubectl; do
  if [ -x "$OUT/$b" ]; then log "$b: cached"; continue; fi
  log "building $b (this is the slow part)"
  start=$SECONDS
  ( while sleep 30; do log "  still building $b ($((SECONDS - start)) s)"; done ) &
  ticker=$!
  GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$OUT/$b.tmp" "k8s.io/kubernetes/cmd/$b" || { kill $ticker; exit 1; }
  kill $ticker 2>/dev/null || true
  mv "$OUT/$b.tmp" "$OUT/$b"
  log "$b built in $((SECONDS - start)) s"
done

# etcd: the server version k8s.io/kubernetes itself depends on (v3.7 for 1.37), built from the same
# module graph. Debian's etcd-server is 3.4, older than this apiserver supports.
if [ ! -x "$OUT/etcd" ]; then
  log "building etcd (go.etcd.io/etcd/server/v3)"
  start=$SECONDS
  GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$OUT/etcd.tmp" "$OUT/etcd"
  log "etcd built in $((SECONDS - start)) s"
fi

have_all || { log "missing binaries in $OUT"; exit 1; }
log "done: $OUT"
echo "$OUT"
