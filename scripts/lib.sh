# Shared shell helpers for scripts/: build the binary, write dev certs, start serve on a free
# 127.0.0.1 port and stop it on exit. Source it; it sets BIN, WORK, PORT, URL, CACERT.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d)"
BIN="$WORK/credential-webhook"
SERVER_PID=""

cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  for p in ${EXTRA_PIDS:-}; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1 || { echo "missing $1: $2" >&2; exit 1; }; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

build_and_certs() {
  (cd "$ROOT" && go build -o "$BIN" .)
  "$BIN" certs --dir "$WORK/certs" --hosts 127.0.0.1,localhost --client-name kube-apiserver >/dev/null
  CACERT="$WORK/certs/ca.crt"
}

# start_moto: moto on a free port with the fixtures' seed role; exports the AWS test environment.
start_moto() {
  (cd "$ROOT" && go build -o "$WORK/devenv" ./testenv/cmd/devenv)
  "$WORK/devenv" >"$WORK/devenv.out" 2>"$WORK/devenv.log" &
  EXTRA_PIDS="${EXTRA_PIDS:-} $!"
  for _ in $(seq 1 150); do
    grep -q DEVENV_READY "$WORK/devenv.out" 2>/dev/null && break
    sleep 0.1
  done
  grep -q DEVENV_READY "$WORK/devenv.out" || { cat "$WORK/devenv.log" >&2; echo "moto did not start" >&2; exit 1; }
  eval "$(grep '^export ' "$WORK/devenv.out")"
  SEED_ROLE_ARN="$(sed -n 's/^SEED_ROLE_ARN=//p' "$WORK/devenv.out" | head -1)"
  FIXTURE_FLAGS+=(--azure-arm-endpoint "$AZURE_ARM_ENDPOINT")
}

# Flags matching fixtureProviderConfig in fixtures_test.go.
FIXTURE_FLAGS=(--allowed-namespaces '*' --allowed-requesters system:serviceaccount:kubestash:kubestash-kubestash-operator
  --aws-seed-roles 'arn:aws:iam::123456789012:role/kubestash-*'
  --azure-allowed-scopes /subscriptions/00000000-0000-0000-0000-0000000000aa)

# start_server [extra serve flags...]: starts serve, waits for /readyz. SERVER_GOMAXPROCS, when
# set, is the server's GOMAXPROCS (make bench: the chart's CPU limit; nothing else sets it).
start_server() {
  PORT="$(free_port)"
  URL="https://127.0.0.1:$PORT"
  local env=()
  [ -n "${SERVER_GOMAXPROCS:-}" ] && env=("GOMAXPROCS=$SERVER_GOMAXPROCS")
  env "${env[@]}" "$BIN" serve --listen "127.0.0.1:$PORT" --tls-cert-file "$WORK/certs/tls.crt" --tls-key-file "$WORK/certs/tls.key" \
    --self-usernames system:serviceaccount:credential-webhook:credential-webhook "$@" 2>"$WORK/server.log" &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    if curl -fsS --cacert "$CACERT" "$URL/readyz" >/dev/null 2>&1; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; echo "server exited" >&2; exit 1; }
    sleep 0.1
  done
  cat "$WORK/server.log" >&2
  echo "server not ready after 10 s" >&2
  exit 1
}
