#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests: initdb under a fresh temp dir, started on a free
# loopback port (TCP on 127.0.0.1 plus a socket in the temp dir), database `dap_test` created.
# The tests read DAP_TEST_POSTGRES_URL and create one database per test next to `dap_test`.
#
#   scripts/postgres-test.sh run -- CMD...   start, run CMD with DAP_TEST_POSTGRES_URL set, stop
#   eval "$(scripts/postgres-test.sh start)"  start; prints `export DAP_TEST_POSTGRES_URL=… DAP_TEST_POSTGRES_DIR=…`
#   scripts/postgres-test.sh stop [DIR]       stop the cluster in DIR (default $DAP_TEST_POSTGRES_DIR), delete DIR
#
# Durability is off (fsync, synchronous_commit): the cluster is deleted afterwards anyway and the
# tests never cut power. DAP_PG_DURABLE=1 keeps PostgreSQL's defaults (fsync and synchronous
# commit on), for the benchmarks' durable-throughput figures. Run as root, the server runs as the `postgres` user (initdb refuses
# root); otherwise as the current user. The server is stopped by its PID (pg_ctl reads it from
# postmaster.pid). Needs PostgreSQL's server binaries (Debian: `apt-get install postgresql`).
set -euo pipefail

# `return 0`, never a bare `return`: in the EXIT trap a bare one returns the status that fired it.
pg_bin() {
  local d
  if [[ -n "${PG_BIN:-}" ]]; then echo "$PG_BIN"; return 0; fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [[ -x "$d/initdb" ]] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  echo "error: PostgreSQL server binaries not found (apt-get install postgresql, or set PG_BIN)" >&2
  return 1
}

# Runs a command as the user that owns the cluster.
as_owner() {
  if [[ "$(id -u)" -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local bin dir port tries=0
  bin="$(pg_bin)"
  dir="$(mktemp -d /tmp/dap-pg.XXXXXX)"
  [[ "$(id -u)" -eq 0 ]] && chown postgres: "$dir"
  as_owner "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; rm -rf "$dir"; return 1; }
  local durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  [[ "${DAP_PG_DURABLE:-}" == 1 ]] && durability=""
  while :; do
    port=$((20000 + RANDOM % 40000))
    # Something already answering on the port: try another.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-k $dir -p $port -c listen_addresses=127.0.0.1 -c max_connections=300 $durability" \
        start >/dev/null; then
      break
    fi
    tries=$((tries + 1))
    if ((tries >= 5)); then cat "$dir/server.log" >&2; rm -rf "$dir"; return 1; fi
  done
  as_owner "$bin/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE dap_test" >/dev/null
  echo "export DAP_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$port/dap_test"
  echo "export DAP_TEST_POSTGRES_DIR=$dir"
}

stop() {
  local dir="${1:-${DAP_TEST_POSTGRES_DIR:-}}" bin
  [[ -n "$dir" && -d "$dir/data" ]] || { echo "error: no cluster dir given" >&2; return 1; }
  bin="$(pg_bin)"
  as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || {
    # pg_ctl could not stop it: end the postmaster by the PID it recorded.
    local pid
    pid="$(head -n1 "$dir/data/postmaster.pid" 2>/dev/null || true)"
    [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
  }
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) shift; stop "$@" ;;
  run)
    shift
    [[ "${1:-}" == "--" ]] && shift
    [[ $# -gt 0 ]] || { echo "usage: $0 run -- CMD..." >&2; exit 2; }
    eval "$(start)"
    trap 'stop "$DAP_TEST_POSTGRES_DIR"' EXIT INT TERM
    echo "PostgreSQL for the tests: $DAP_TEST_POSTGRES_URL" >&2
    "$@"
    ;;
  *) echo "usage: $0 start | stop [DIR] | run -- CMD..." >&2; exit 2 ;;
esac
