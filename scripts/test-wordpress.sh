#!/usr/bin/env bash
# Tests the WordPress plugin (wordpress-plugin/) inside a REAL WordPress on a throwaway MariaDB.
#
# On a fresh Debian machine as root: installs the Debian packages it needs, starts MariaDB under a
# temp dir (no networking, socket only), installs WordPress into a temp copy with its own
# wp-config.php, copies the plugin in and activates it, starts a tiny PHP HTTP server that plays a
# misbehaving dap-server, runs PHPUnit (Debian's phpunit) and finally checks uninstall.php.
# Everything it started is stopped by PID and the temp dir removed on exit. Exit status: non-zero
# on any failure.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PLUGIN="$ROOT/wordpress-plugin"
START=$(date +%s)

# DAP_WP_SKIP_BROWSER=1 skips the headless-Chromium test (and the dap-server/dap-runner build).
# DAP_WP_BIN=<dir> takes dap-server and dap-runner from <dir> instead of building them.
BROWSER=1
[[ "${DAP_WP_SKIP_BROWSER:-0}" == 1 ]] && BROWSER=0
pkgs=(wordpress php-cli php-mysql mariadb-server phpunit curl)
((BROWSER)) && pkgs+=(chromium)
# Node may come from elsewhere than Debian (its own npm): only install Debian's when absent.
((BROWSER)) && ! command -v npm >/dev/null && pkgs+=(nodejs npm)
need=()
for pkg in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "== installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== lint"
while IFS= read -r -d '' f; do php -l "$f" >/dev/null || { php -l "$f"; exit 1; }; done \
  < <(find "$PLUGIN" -name '*.php' -not -path '*/node_modules/*' -print0)
if command -v node >/dev/null; then
  for f in "$PLUGIN"/assets/js/*.js "$PLUGIN"/tests/browser/*.cjs; do node --check "$f"; done
fi

T="$(mktemp -d /tmp/dap-wp.XXXXXX)"
DB_PID=""
PIDS=()   # processes we started, stopped by PID
PGIDS=() # `setsid php -S` with workers forks children: stopped by process group
cleanup() {
  local rc=$?
  set +e
  # Newest first: runners stop (handing back what they run) while the server still hears them.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null; done
  for pgid in "${PGIDS[@]}"; do kill -- "-$pgid" 2>/dev/null; done
  for pid in "${PIDS[@]}" "${PGIDS[@]}"; do wait "$pid" 2>/dev/null; done
  if [[ -n "$DB_PID" ]]; then
    kill "$DB_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$DB_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$DB_PID" 2>/dev/null || true
  fi
  rm -rf "$T"
  exit "$rc"
}
trap cleanup EXIT INT TERM

free_port() { php -r '$s=stream_socket_server("tcp://127.0.0.1:0");$n=stream_socket_get_name($s,false);echo substr($n,strrpos($n,":")+1);'; }

echo "== MariaDB in $T/db"
mysql_install_db --user=root --datadir="$T/db" --auth-root-authentication-method=socket >"$T/mysql_install_db.log" 2>&1
mariadbd --user=root --datadir="$T/db" --socket="$T/my.sock" --skip-networking \
  --pid-file="$T/my.pid" --log-error="$T/mariadb.err" --innodb-buffer-pool-size=64M >"$T/mariadb.out" 2>&1 &
DB_PID=$!
for _ in $(seq 1 300); do
  [[ -S "$T/my.sock" ]] && mariadb --socket="$T/my.sock" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break
  kill -0 "$DB_PID" 2>/dev/null || { cat "$T/mariadb.err"; exit 1; }
  sleep 0.1
done
mariadb --socket="$T/my.sock" -uroot <<SQL
CREATE DATABASE wordpress;
CREATE USER 'wp'@'localhost' IDENTIFIED BY 'wp-test';
GRANT ALL ON wordpress.* TO 'wp'@'localhost';
SQL

echo "== WordPress in $T/site"
cp -rL /usr/share/wordpress "$T/site"
rm -f "$T/site/wp-config.php"
rm -rf "$T/site/wp-content/plugins/distributed-data-analysis"
cp -r "$PLUGIN" "$T/site/wp-content/plugins/distributed-data-analysis"
WP_PORT=$(free_port)
cat >"$T/site/wp-config.php" <<PHP
<?php
define( 'DB_NAME', 'wordpress' );
define( 'DB_USER', 'wp' );
define( 'DB_PASSWORD', 'wp-test' );
define( 'DB_HOST', 'localhost:$T/my.sock' );
define( 'DB_CHARSET', 'utf8mb4' );
define( 'DB_COLLATE', '' );
define( 'AUTH_KEY', 'test-auth-key' );
define( 'SECURE_AUTH_KEY', 'test-secure-auth-key' );
define( 'LOGGED_IN_KEY', 'test-logged-in-key' );
define( 'NONCE_KEY', 'test-nonce-key' );
define( 'AUTH_SALT', 'test-auth-salt' );
define( 'SECURE_AUTH_SALT', 'test-secure-auth-salt' );
define( 'LOGGED_IN_SALT', 'test-logged-in-salt' );
define( 'NONCE_SALT', 'test-nonce-salt' );
define( 'WP_DEBUG', false ); // Debian's WordPress 6.1 is noisy under PHP 8.2; the bootstrap re-enables E_ALL & ~E_DEPRECATED.
define( 'WP_HTTP_BLOCK_EXTERNAL', true );
define( 'WP_ACCESSIBLE_HOSTS', '127.0.0.1,localhost' );
define( 'DISABLE_WP_CRON', true );
define( 'WP_CONTENT_DIR', __DIR__ . '/wp-content' );
\$table_prefix = 'wp_';
if ( ! defined( 'ABSPATH' ) ) {
	define( 'ABSPATH', __DIR__ . '/' );
}
require_once ABSPATH . 'wp-settings.php';
PHP
DAP_WP_DIR="$T/site" DAP_WP_URL="http://127.0.0.1:$WP_PORT" php "$PLUGIN/tests/tools/install-wordpress.php"

echo "== fake dap-server"
FAKE_PORT=$(free_port)
PHP_CLI_SERVER_WORKERS=4 setsid php -S "127.0.0.1:$FAKE_PORT" "$PLUGIN/tests/tools/fake-dap-server.php" >"$T/fake-server.log" 2>&1 &
PGIDS+=($!)
for _ in $(seq 1 100); do
  php -r 'exit(@file_get_contents($argv[1]) === "ok" ? 0 : 1);' "http://127.0.0.1:$FAKE_PORT/healthz" && break
  sleep 0.1
done
DEAD_PORT=$(free_port) # nothing listens there: connection refused

echo "== PHPUnit"
rc=0
DAP_WP_DIR="$T/site" DAP_FAKE_SERVER="http://127.0.0.1:$FAKE_PORT" DAP_DEAD_SERVER="http://127.0.0.1:$DEAD_PORT" \
  phpunit --configuration "$PLUGIN/tests/phpunit.xml.dist" "$@" || rc=$?
if ((rc != 0)); then
  echo "-- fake server log"; tail -n 50 "$T/fake-server.log"
  exit "$rc"
fi

if ((BROWSER)); then
  echo "== browser: headless Chromium, real dap-server + dap-runner"
  if [[ -n "${DAP_WP_BIN:-}" ]]; then
    BIN="$DAP_WP_BIN"
  else
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dap-target}"
    (cd "$ROOT" && cargo build -q -p dap-server -p dap-runner)
    BIN="$CARGO_TARGET_DIR/debug"
  fi
  # playwright-core drives /usr/bin/chromium; it is cached outside the clone (no browser download).
  NODE_CACHE="${DAP_WP_NODE_CACHE:-$HOME/.cache/dap-wp-browser}"
  if [[ ! -f "$NODE_CACHE/node_modules/playwright-core/package.json" ]]; then
    mkdir -p "$NODE_CACHE"
    [[ -f "$NODE_CACHE/package.json" ]] || echo '{"private":true}' >"$NODE_CACHE/package.json"
    (cd "$NODE_CACHE" && npm install --no-audit --no-fund --silent playwright-core@1.65.1)
  fi

  # A dataset large enough that counting its rows takes a moment, so the progress events of one
  # task are spread in time (a 200-row file finishes within one store batch).
  awk 'BEGIN { print "date,region,product,channel,units,unit_price,revenue";
    split("North,South,East,West", r, ",");
    for (i = 0; i < 400000; i++) { u = i % 9 + 1; p = 10 + i % 50;
      printf "2024-01-%02d,%s,Item %d,online,%d,%.2f,%.2f\n", i % 28 + 1, r[i % 4 + 1], i % 100, u, p, u * p } }' >"$T/sales.csv"

  DAP_PORT=$(free_port)
  DAP_URL="http://127.0.0.1:$DAP_PORT"
  WP_URL="http://127.0.0.1:$WP_PORT"
  KEY=$("$BIN/dap-server" apikey create --name wordpress --scope admin --data-dir "$T/dap")
  RUNNER_TOKEN=$("$BIN/dap-server" runner create --name laptop --data-dir "$T/dap")
  # A second 1-slot runner that the browser test keeps busy with a long task (busy refusal).
  SLOW_TOKEN=$("$BIN/dap-server" runner create --name slowpoke --data-dir "$T/dap")
  DAP_LOG=warn "$BIN/dap-server" serve --listen "127.0.0.1:$DAP_PORT" --data-dir "$T/dap" \
    --cors-origin "$WP_URL" >"$T/dap-server.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do curl -fs "$DAP_URL/healthz" >/dev/null && break; sleep 0.1; done
  # Throwaway runners: on SIGTERM hand running tasks back at once instead of finishing them.
  export DAP_RUNNER_ON_STOP=hand-back
  DAP_RUNNER_TOKEN="$RUNNER_TOKEN" "$BIN/dap-runner" --server "$DAP_URL" --name laptop --slots 1 \
    --dataset "sales=$T/sales.csv" >"$T/dap-runner.log" 2>&1 &
  PIDS+=($!)
  DAP_RUNNER_TOKEN="$SLOW_TOKEN" "$BIN/dap-runner" --server "$DAP_URL" --name slowpoke --slots 1 \
    --dataset "sales=$T/sales.csv" >"$T/dap-runner-slowpoke.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    (( $(curl -fs -H "Authorization: Bearer $KEY" "$DAP_URL/api/v1/runners" | grep -o '"state":"idle"' | wc -l) == 2 )) && break
    sleep 0.1
  done

  DAP_WP_DIR="$T/site" DAP_SERVER_URL="$DAP_URL" DAP_KEY="$KEY" php "$PLUGIN/tests/tools/configure.php"
  (cd "$T/site" && PHP_CLI_SERVER_WORKERS=4 exec setsid php -S "127.0.0.1:$WP_PORT" -t "$T/site") >"$T/wp-server.log" 2>&1 &
  PGIDS+=($!)
  for _ in $(seq 1 100); do curl -fs -o /dev/null "$WP_URL/wp-login.php" && break; sleep 0.1; done

  mkdir -p "$ROOT/target"
  brc=0
  WP_URL="$WP_URL" DAP_URL="$DAP_URL" DAP_KEY="$KEY" SCREENSHOT_DIR="$ROOT/target" \
    PLAYWRIGHT_CORE="$NODE_CACHE/node_modules/playwright-core" \
    timeout 300 node "$PLUGIN/tests/browser/live-progress.cjs" || brc=$?
  if ((brc != 0)); then
    echo "-- dap-server log"; tail -n 30 "$T/dap-server.log"
    echo "-- dap-runner log"; tail -n 30 "$T/dap-runner.log"
    echo "-- dap-runner (slowpoke) log"; tail -n 30 "$T/dap-runner-slowpoke.log"
    exit "$brc"
  fi
  echo "screenshots: target/wordpress-live-progress.png target/wordpress-result-view.png target/wordpress-model-metrics.png target/wordpress-report.png target/wordpress-runner-busy.png"
fi

echo "== uninstall"
DAP_WP_DIR="$T/site" php "$PLUGIN/tests/tools/check-uninstall.php"

echo "== WordPress plugin tests passed in $(( $(date +%s) - START )) s"
