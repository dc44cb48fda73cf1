#!/usr/bin/env bash
# Curl a running stack, as the original template's `make test` did: exits non-zero on the first failure.
set -euo pipefail
URL="${GATEWAY_URL:-http://127.0.0.1:8080}"
# The key of a gateway with access control on: $API_KEY, else $MY_KEY (the README's and the launcher's
# name for it), else the one `make up` wrote into .env.
API_KEY="${API_KEY:-${MY_KEY:-$(sed -n 's/^API_KEY=//p' .env 2>/dev/null || true)}}"
AUTH=()
if [[ -n "$API_KEY" ]]; then AUTH=(-H "Authorization: Bearer $API_KEY"); fi

check() {  # check NAME EXPECTED_STATUS curl-args...
    local name=$1 expected=$2; shift 2
    local body status
    body=$(curl -sS -w '\n%{http_code}' ${AUTH[@]+"${AUTH[@]}"} "$@")
    status=${body##*$'\n'}
    body=${body%$'\n'*}
    if [[ "$status" != "$expected" ]]; then
        echo "FAIL $name: HTTP $status (expected $expected): $body" >&2
        exit 1
    fi
    echo "ok   $name: $body" | cut -c1-160
}

check "gateway health" 200 "$URL/gateway/health"
check "gateway info" 200 "$URL/gateway/info"
check "worker health" 200 "$URL/health"
check "model metadata" 200 "$URL/metadata"
# The served model's own example row, whatever the model is.
example=$(curl -sS ${AUTH[@]+"${AUTH[@]}"} "$URL/metadata" | "${PYTHON:-python3}" -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["example"]))')
check "predict" 200 -X POST "$URL/predict" -H 'Content-Type: application/json' -d "$example"
check "batch_predict" 200 -X POST "$URL/batch_predict" -H 'Content-Type: application/json' -d "[$example, $example]"
check "wrong shape is 422" 422 -X POST "$URL/predict" -H 'Content-Type: application/json' -d '{"input_data": []}'
echo "smoke test passed against $URL"
