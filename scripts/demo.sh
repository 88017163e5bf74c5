#!/usr/bin/env bash
# make demo: start the webhook with development certificates on 127.0.0.1 and show, with curl,
# reviews going in and patches coming out.
source "$(dirname "$0")/lib.sh"
need curl "apt-get install curl"
need jq "apt-get install jq"
build_and_certs
start_server
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
post /mutate/serviceaccounts sa-plain
post /mutate/serviceaccounts sa-forged-marker
post /mutate/jobs job-forged-hold-update

echo
echo "== server log (one JSON line per review)"
grep '"msg":"review"' "$WORK/server.log" | jq -c '{uid, kind, namespace, name, operation, decision, patchOps, duration}'
