#!/usr/bin/env bash
# make demo: start the webhook with development certificates on 127.0.0.1 and show, with curl,
# reviews going in and patches coming out.
source "$(dirname "$0")/lib.sh"
need curl "apt-get install curl"
need jq "apt-get install jq"
build_and_certs
start_moto
start_server "${FIXTURE_FLAGS[@]}"
echo "== moto (IAM/STS emulator) on $AWS_ENDPOINT_URL, seed role $SEED_ROLE_ARN"
echo "== credential-webhook serving on $URL (dev CA: $CACERT)"

post() { # route fixture-folder
  echo
  echo "== POST $1  ($(jq -r '.request.kind.kind + " " + .request.operation + " " + .request.namespace + "/" + .request.name + " by " + .request.userInfo.username' "$ROOT/admission/testdata/$2/request.json"))"
  curl -sS --cacert "$CACERT" -H 'Content-Type: application/json' --data-binary @"$ROOT/admission/testdata/$2/request.json" "$URL$1?timeout=10s" >"$WORK/out"
  jq '{uid: .response.uid, allowed: .response.allowed, warnings: .response.warnings}' "$WORK/out"
  if [ "$(jq -r '.response.patch // empty' "$WORK/out")" != "" ]; then
    echo "patch:"; jq -r .response.patch "$WORK/out" | base64 -d | jq .
  else
    echo "patch: none"
  fi
}
echo
echo "== A review proves nothing about who sent it: admission only plans (role ARN + pending claim)."
echo "   In a cluster the write follows once the ServiceAccount is seen persisted in the API."
post /mutate/serviceaccounts aws-sa-create
post /mutate/serviceaccounts aws-sa-create-again
echo
echo "== IAM after those reviews: no derived role was created"
"$BIN" roles --seed "$SEED_ROLE_ARN"
post /mutate/serviceaccounts aws-sa-requester-not-allowed
post /mutate/serviceaccounts sa-forged-marker
post /mutate/jobs job-forged-hold-update

# The self-managed option: the apiserver presents a client certificate (AdmissionConfiguration),
# so a review is known to come from it and admission writes IAM at once.
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
start_server "${FIXTURE_FLAGS[@]}" --client-ca-file "$CACERT" --allowed-client-names kube-apiserver
CLIENT=(--cert "$WORK/certs/client.crt" --key "$WORK/certs/client.key")
echo
echo "== Restarted with --client-ca-file and --allowed-client-names kube-apiserver"
echo "   without the client certificate: $(curl -sS -o /dev/null -w 'HTTP %{http_code}' --cacert "$CACERT" -H 'Content-Type: application/json' --data-binary @"$ROOT/admission/testdata/aws-sa-create/request.json" "$URL/mutate/serviceaccounts")"

# 40 KubeStash session ServiceAccounts, authenticated: watch them spill from <seed>-0 into <seed>-1.
echo
echo "== 40 per-session ServiceAccounts from the KubeStash operator, sent with the apiserver's client certificate"
for i in $(seq 1 40); do
  ts=$((1778072138 + i * 3600))
  jq --arg n "sample-backup-daemon-demo-session-$ts" --arg u "demo-$i" \
    '.request.uid = $u | .request.name = $n | .request.object.metadata.name = $n' \
    "$ROOT/admission/testdata/aws-sa-create/request.json" >"$WORK/sa.json"
  curl -sS --cacert "$CACERT" "${CLIENT[@]}" -H 'Content-Type: application/json' --data-binary @"$WORK/sa.json" "$URL/mutate/serviceaccounts?timeout=10s" |
    jq -r '.response.patch' | base64 -d | jq -r '.[] | select(.path | endswith("role-arn")) | .value'
done | sort | uniq -c

echo
echo "== derived roles of $SEED_ROLE_ARN (credential-webhook roles)"
"$BIN" roles --seed "$SEED_ROLE_ARN"

echo
echo "== server log (one JSON line per review)"
grep "\"msg\":\"review\"" "$WORK/server.log" | tail -n 8 | jq -c "{uid, kind, namespace, name, operation, decision, patchOps, ms: (.duration / 1e6)}"
