#!/usr/bin/env python3
"""Celery + Redis doing what `dap-bench` measures for DAP, printed as `name: value unit` lines.

- celery_dispatch_latency_p50/p99: apply_async called -> the worker starts the task body
  (both sides read the same wall clock; sequential, one task in flight).
- celery_noop_round_trip_p50/p99: apply_async called -> the result is available to the caller
  (AsyncResult.get, Redis result backend).
- celery_throughput: --tasks no-ops sent back to back, completed tasks per second from the first
  send to the last result.

Needs a running worker for tasks.py (bench/celery/run.sh starts Redis and one).
"""

import argparse
import sys
import time

from celery.result import ResultSet

from tasks import app, noop


def pct(sorted_ms, p):
    return sorted_ms[round((len(sorted_ms) - 1) * p)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--ready-timeout", type=float, default=60.0)
    args = ap.parse_args()

    # Wait for the worker: the first task is answered once it is up.
    try:
        noop.delay().get(timeout=args.ready_timeout)
    except Exception as e:  # noqa: BLE001 - any failure here means no worker
        sys.exit(f"celery bench: the worker did not answer within {args.ready_timeout} s: {e}")

    warmup = args.iterations // 10
    dispatch, round_trip = [], []
    for i in range(args.iterations + warmup):
        t0 = time.time_ns()
        r = noop.apply_async()
        started = r.get(timeout=30)
        t1 = time.time_ns()
        r.forget()
        if i >= warmup:
            dispatch.append((started - t0) / 1e6)
            round_trip.append((t1 - t0) / 1e6)
    dispatch.sort()
    round_trip.sort()
    print(f"celery_dispatch_latency_p50: {pct(dispatch, 0.50):.3f} ms")
    print(f"celery_dispatch_latency_p99: {pct(dispatch, 0.99):.3f} ms")
    print(f"celery_noop_round_trip_p50: {pct(round_trip, 0.50):.3f} ms")
    print(f"celery_noop_round_trip_p99: {pct(round_trip, 0.99):.3f} ms")
    print(f"celery_latency_iterations: {len(dispatch)} count")
    sys.stdout.flush()

    t0 = time.perf_counter()
    results = ResultSet([noop.apply_async() for _ in range(args.tasks)])
    results.join_native(timeout=600, propagate=True) if results.supports_native_join else results.join(timeout=600)
    elapsed = time.perf_counter() - t0
    print(f"celery_throughput: {args.tasks / elapsed:.0f} tasks/s")
    print(f"celery_throughput_tasks: {args.tasks} count")


if __name__ == "__main__":
    main()
