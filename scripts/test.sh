#!/usr/bin/env bash
# Sets up what the test suite needs on a Debian machine and runs every test:
# formatting, clippy (warnings are errors) and `cargo test` for the whole workspace.
# Tests start real servers on 127.0.0.1:0, real runner processes and a real PostgreSQL;
# nothing is mocked.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dap-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# System packages (only what is missing; needs root or sudo on a fresh machine).
missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found. Install Rust >= 1.85 with rustup (https://rustup.rs), then re-run." >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
# PostgreSQL (the store's second backend): Debian's server binaries, and a throwaway cluster that
# scripts/postgres-test.sh starts around `cargo test` (DAP_TEST_POSTGRES_URL) and stops by PID.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
echo "== cargo test (store tests on SQLite and PostgreSQL)"
bash scripts/postgres-test.sh run -- cargo test --workspace
echo "== web widget (unit tests + headless Chromium against a real server and runner)"
bash scripts/test-widget.sh
echo "== WordPress plugin (PHPUnit in a real WordPress + MariaDB, headless Chromium)"
bash scripts/test-wordpress.sh
