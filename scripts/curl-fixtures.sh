#!/usr/bin/env bash
# Posts every admission/testdata fixture to the real binary over TLS with curl and checks each
# answer against expected.json: the same fixtures the Go table test uses, end to end.
source "$(dirname "$0")/lib.sh"
need curl "apt-get install curl"
need jq "apt-get install jq"
build_and_certs
start_moto
start_server "${FIXTURE_FLAGS[@]}"

pass=0 fail=0
check() { # name ok? message
  if [ "$2" = true ]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL $1: $3" >&2; fi
}

for dir in "$ROOT"/admission/testdata/*/; do
  name="$(basename "$dir")"
  exp="$dir/expected.json"
  [ -f "$exp" ] || continue
  route="$(jq -r .route "$exp")"
  ct="$(jq -r '.contentType // "application/json"' "$exp")"
  want_code="$(jq -r .code "$exp")"
  code="$(curl -sS --cacert "$CACERT" -o "$WORK/out" -w '%{http_code}' -H "Content-Type: $ct" \
    --data-binary @"$dir/request.json" "$URL$route?timeout=10s")"
  if [ "$code" != "$want_code" ]; then check "$name" false "HTTP $code, want $want_code: $(head -c 300 "$WORK/out")"; continue; fi
  if [ "$code" != 200 ]; then
    msg="$(jq -r .message "$exp")"
    grep -qF -- "$msg" "$WORK/out" && check "$name" true || check "$name" false "body lacks '$msg': $(cat "$WORK/out")"
    continue
  fi
  uid="$(jq -r .request.uid "$dir/request.json")"
  got_patch="$(jq -r '.response.patch // empty' "$WORK/out" | base64 -d 2>/dev/null | jq -cS . 2>/dev/null || true)"
  [ -n "$got_patch" ] || got_patch=null
  want_patch="$(jq -cS .patch "$exp")"
  ok=true why=""
  [ "$(jq -r .apiVersion "$WORK/out")" = admission.k8s.io/v1 ] || { ok=false; why="apiVersion"; }
  [ "$(jq -r .kind "$WORK/out")" = AdmissionReview ] || { ok=false; why="$why kind"; }
  [ "$(jq -r .response.uid "$WORK/out")" = "$uid" ] || { ok=false; why="$why uid"; }
  if jq -e 'has("allowed")' "$exp" >/dev/null; then
    [ "$(jq -r .response.allowed "$WORK/out")" = "$(jq -r .allowed "$exp")" ] || { ok=false; why="$why allowed"; }
  fi
  [ "$got_patch" = "$want_patch" ] || { ok=false; why="$why patch got $got_patch want $want_patch"; }
  if jq -e 'has("warnings")' "$exp" >/dev/null; then
    [ "$(jq -c '.response.warnings // []' "$WORK/out")" = "$(jq -c .warnings "$exp")" ] || { ok=false; why="$why warnings $(jq -c .response.warnings "$WORK/out")"; }
  fi
  check "$name" "$ok" "$why"
done

# Oversized body: 413 without reading it all into memory.
head -c $((8 << 20)) /dev/zero | tr '\0' ' ' >"$WORK/big"
code="$(curl -sS --cacert "$CACERT" -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' --data-binary @"$WORK/big" "$URL/mutate/pods")"
[ "$code" = 413 ] && check oversized true || check oversized false "HTTP $code, want 413"

# TLS below 1.2 is refused.
if curl -sS --cacert "$CACERT" --tlsv1.1 --tls-max 1.1 -o /dev/null "$URL/healthz" 2>/dev/null; then
  check tls11-refused false "TLS 1.1 accepted"
else
  check tls11-refused true ""
fi

# Metrics carry our prefix and counted the reviews.
curl -fsS --cacert "$CACERT" "$URL/metrics" >"$WORK/metrics"
grep -q '^credential_webhook_requests_total{' "$WORK/metrics" && check metrics true || check metrics false "no credential_webhook_requests_total"

# Graceful shutdown: SIGTERM exits 0.
kill -TERM "$SERVER_PID"; rc=0; wait "$SERVER_PID" || rc=$?; SERVER_PID=""
[ "$rc" = 0 ] && check sigterm true || check sigterm false "exit code $rc"
grep -q '"msg":"review"' "$WORK/server.log" && check review-log true || check review-log false "no review log line"

echo "curl-fixtures: $pass passed, $fail failed"
[ "$fail" = 0 ]
