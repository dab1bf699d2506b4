#!/usr/bin/env python3
"""The op-200 benchmark query done with pandas, for `dap-bench filter-vs-pandas`.

Reads the CSV with pandas' defaults (C engine, every column, types inferred), keeps the rows
where every predicate holds, groups by the key columns (missing keys form their own group, like
DAP) and computes the aggregations. Each run is timed from before read_csv to after the groupby
(read + compute). Prints one JSON document on stdout:

    {"runs_ms": [...], "peak_rss_bytes": n, "input_rows": n, "columns": [...], "rows": [[...]]}

Peak RSS is this process's ru_maxrss (interpreter and pandas included, like the runner's VmHWM).
The query is a JSON object:

    {"where": [{"column", "op": "gt"|"ge"|"lt"|"le"|"eq"|"in", "value"}],   # all must hold
     "by": [columns], "aggregations": [{"column"?, "fn": "sum"|"mean"|"count", "as"}]}

`count` without a column counts rows (pandas' size), with one its non-null cells.
It does not check results: dap-bench compares them with DAP's.
"""

import argparse
import json
import math
import resource
import sys
import time

import pandas as pd


def mask(df, predicates):
    keep = pd.Series(True, index=df.index)
    for p in predicates:
        c, op, v = df[p["column"]], p["op"], p.get("value")
        if op == "gt":
            keep &= c > v
        elif op == "ge":
            keep &= c >= v
        elif op == "lt":
            keep &= c < v
        elif op == "le":
            keep &= c <= v
        elif op == "eq":
            keep &= c == v
        elif op == "in":
            keep &= c.isin(v)
        else:
            raise SystemExit(f"pandas_filter.py: unsupported op {op!r}")
    return keep


def aggregate(matching, by, aggregations):
    named = {}
    for a in aggregations:
        fn, column = a["fn"], a.get("column")
        if fn == "count" and column is None:
            named[a["as"]] = (by[0], "size")
        elif fn in ("sum", "mean", "count"):
            named[a["as"]] = (column, fn)
        else:
            raise SystemExit(f"pandas_filter.py: unsupported aggregation {fn!r}")
    return matching.groupby(by, dropna=False, sort=True).agg(**named).reset_index()


def cell(v):
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):  # numpy scalar
        v = v.item()
        if isinstance(v, float) and math.isnan(v):
            return None
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", required=True)
    ap.add_argument("--query", required=True, help="the query as JSON (see above)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    q = json.loads(args.query)

    runs_ms, out, input_rows = [], None, 0
    for _ in range(args.runs):
        t0 = time.perf_counter()
        df = pd.read_csv(args.csv)
        out = aggregate(df[mask(df, q["where"])], q["by"], q["aggregations"])
        runs_ms.append((time.perf_counter() - t0) * 1000.0)
        input_rows = len(df)
        del df

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    json.dump(
        {
            "runs_ms": runs_ms,
            "peak_rss_bytes": peak,
            "input_rows": input_rows,
            "pandas_version": pd.__version__,
            "columns": list(out.columns),
            "rows": [[cell(v) for v in row] for row in out.itertuples(index=False, name=None)],
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
