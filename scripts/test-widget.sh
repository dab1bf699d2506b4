#!/usr/bin/env bash
# Tests the <dap-task> web widget (web-widget/):
#   1. checks that the committed dist/ matches `npm run build`,
#   2. unit tests (node --test, happy-dom, stubbed network),
#   3. an end-to-end test in headless Chromium against a real dap-server and dap-runner.
# Works on a fresh Debian machine as root (installs chromium, nodejs/npm and build tools if
# missing). Every process it starts is stopped on exit; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dap-target}"
START=$(date +%s)

missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "== installing ${missing[*]}"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
  || { echo "error: Node.js >= 20 is required (found $(node --version))" >&2; exit 1; }
command -v cargo >/dev/null 2>&1 || { echo "error: install Rust >= 1.85 (rustup) first" >&2; exit 1; }

echo "== npm ci (web-widget)"
(cd web-widget && npm ci --no-audit --no-fund --loglevel=error)

echo "== dist/ is up to date with src/"
(cd web-widget && node build.mjs --check)

echo "== unit tests"
(cd web-widget && node --test test/unit/)

echo "== building dap-server and dap-runner"
cargo build -q -p dap-server -p dap-runner
BIN="$CARGO_TARGET_DIR/debug"

TMP=$(mktemp -d)
pids=()
cleanup() {
  local rc=$?
  # The e2e test starts the runner; stop it here too in case the test process died first.
  [ -f "$TMP/runner.pid" ] && pids+=("$(cat "$TMP/runner.pid")")
  # Newest first: the runner stops while the server still hears it.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$rc" -ne 0 ]; then
    echo "== failed; logs:" >&2
    for f in "$TMP"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 40 "$f" >&2; }; done
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
DAP_PORT=$(free_port)
PAGE_PORT=$(free_port)
while [ "$PAGE_PORT" = "$DAP_PORT" ]; do PAGE_PORT=$(free_port); done
DAP="http://127.0.0.1:$DAP_PORT"

KEY=$("$BIN/dap-server" apikey create --name t --scope admin --data-dir "$TMP/data")
"$BIN/dap-server" serve --listen "127.0.0.1:$DAP_PORT" --data-dir "$TMP/data" \
  --cors-origin "http://127.0.0.1:$PAGE_PORT" >"$TMP/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -fs "$DAP/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$DAP/healthz" >/dev/null || { echo "dap-server did not start" >&2; exit 1; }

RUNNER_TOKEN=$(curl -fs -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d '{"name":"w"}' "$DAP/api/v1/runners" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).token))')

# A file whose row count takes a moment, so the live bar shows intermediate progress.
BIG_ROWS=1500000
awk -v n="$BIG_ROWS" 'BEGIN { print "id,region,amount"; for (i = 0; i < n; i++) printf "%d,r%d,%d.5\n", i, i % 17, i % 9973 }' >"$TMP/big.csv"

echo "== end-to-end test (headless Chromium, dap-server on :$DAP_PORT, page on :$PAGE_PORT)"
# The e2e test starts the host backend and the runner itself (it creates the task first, then
# brings the runner online, so the widget sees the task live) and stops them when it ends.
(cd web-widget && DAP_SERVER="$DAP" DAP_API_KEY="$KEY" PAGE_PORT="$PAGE_PORT" \
  DAP_RUNNER_BIN="$BIN/dap-runner" DAP_RUNNER_TOKEN="$RUNNER_TOKEN" \
  DAP_DATASET="$ROOT/runner/examples/data/sales.csv" DAP_BIG_DATASET="$TMP/big.csv" \
  DAP_BIG_ROWS="$BIG_ROWS" E2E_TMP="$TMP" DAP_RUNNER_ON_STOP=hand-back \
  SCREENSHOT="$ROOT/web-widget/target/widget.png" CHROMIUM="${CHROMIUM:-/usr/bin/chromium}" \
  node --test --test-timeout=120000 test/e2e/) &
pids+=($!)
wait "${pids[-1]}"

echo "== widget tests passed in $(( $(date +%s) - START )) s (screenshot: web-widget/target/widget.png)"
