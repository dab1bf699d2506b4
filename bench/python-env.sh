# Sourced by the benchmark scripts: makes sure the Python venv for the comparisons exists and
# holds pandas, celery, redis and packaging (from PyPI; kombu's Redis transport imports
# packaging without declaring it), then sets $PY to its interpreter. It starts nothing.
DAP_BENCH_VENV="${DAP_BENCH_VENV:-$HOME/.cache/dap-bench-venv}"
if [ ! -x "$DAP_BENCH_VENV/bin/python" ]; then
  echo "== creating the Python venv $DAP_BENCH_VENV" >&2
  python3 -m venv "$DAP_BENCH_VENV" >&2
fi
if ! "$DAP_BENCH_VENV/bin/python" -c 'import pandas, celery, redis, packaging' 2>/dev/null; then
  echo "== installing pandas, celery, redis and packaging into $DAP_BENCH_VENV" >&2
  "$DAP_BENCH_VENV/bin/pip" install -q pandas celery redis packaging >&2
fi
PY="$DAP_BENCH_VENV/bin/python"
