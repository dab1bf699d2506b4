#!/usr/bin/env python3
"""Golden values for the runner's operations 200 (filter) and 300 (models), from pandas and
scikit-learn on real public datasets that scikit-learn ships.

Writes, relative to the repository root:
  runner/tests/golden/data/{iris,iris_gaps,diabetes,wine,breast_cancer}.csv
  runner/tests/golden/expected.json
which runner/tests/golden.rs compares the runner's results with. Run by hand (see README.md in
this directory), never in CI: the committed outputs are what the tests read.

The datasets
  iris, diabetes, wine, breast_cancer: scikit-learn's bundled copies (sklearn.datasets.load_*),
  columns renamed to snake_case, the class as a name (iris: `species`) or an integer, plus an
  `is_test` column (1 = test row, 0 = training row) from train_test_split, which the runner reads
  through op 300's `split_column` so both sides train and test on the same rows.
  Float columns whose every value is integral (wine's magnesium and proline, diabetes' target)
  are written as integers, which is what they are.
  iris_gaps: iris with some cells blanked on a fixed pattern (petal_width where row % 7 == 3,
  species where row % 11 == 5), since none of the shipped sets has missing values and op 200's
  null semantics (is_null, not_null, null group keys, aggregations over nulls) need some.

Filter semantics reproduced with pandas (op 200's documented rules):
  a null cell never satisfies eq/ne/lt/le/gt/ge/in/contains/between (so `ne` keeps no nulls);
  contains is a plain case-sensitive substring test; sorting is stable, nulls last in either
  direction; grouped output is sorted by its keys ascending (null keys last) before `sort`;
  count(column) counts non-null cells, count() counts rows, sum of no values is 0, mean/min/
  max/median of no values are null, std is the sample std (ddof=1), null below two values.
  Steps run in the order where -> group_by -> select -> sort -> limit.

Model settings that correspond to linfa 0.8's (as op 300 calls it):
  linear_regression   sklearn LinearRegression() (ordinary least squares with intercept;
                      linfa-linear's LinearRegression solves the same problem).
  logistic_regression linfa-logistic minimises  sum_i logloss_i + alpha/2 * ||w||^2  with the
                      intercept unpenalised, alpha = 1 in op 300 (multinomial: the same with the
                      softmax loss and ||W||_F^2). scikit-learn minimises
                      C * sum_i logloss_i + 1/2 * ||w||^2, the same optimum for C = 1/alpha = 1.
                      lbfgs in both; max_iter as given to op 300 (max_iterations) so both get
                      to the optimum on unscaled features; sklearn's tol is tightened (its
                      gradient criterion is on the mean loss, linfa's on the sum).
  decision_tree       op 300 uses its own CART (runner/src/operations/cart.rs), not linfa's:
                      criterion="gini", the same max_depth, min_samples_split=2,
                      min_samples_leaf=1, min_impurity_decrease=0, thresholds at midpoints.
                      Ties: when several splits are equally good (common in small nodes, where
                      many features cut the rows the same way), sklearn takes the first in a
                      random feature order drawn from random_state, op 300 the lowest feature
                      index. Test accuracy then depends on the draw: on wine with max_depth 4,
                      sklearn's own accuracy ranges over 80-98 % across random_state 0..99. So
                      each tree case records sklearn's accuracy for random_state 0 and its range
                      over random_state 0..99; where the range is one value the "within 2 points"
                      comparison is meaningful, and where every seed grows the same tree
                      (tie_free) its feature importances are recorded to compare exactly too.
  kmeans              Lloyd's algorithm, n_init=1, started from the same centroids (sklearn's
                      k-means++ with random_state=0, passed to op 300 as init_centroids),
                      max_iter 300, tol 1e-4. inertia_ = sum of squared distances of the rows
                      to their nearest centroid, as op 300 reports it.
"""

import json
import math
import pathlib
import platform
import sys

import numpy as np
import pandas as pd
import sklearn
from sklearn import datasets
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "runner" / "tests" / "golden"
DATA = OUT / "data"

SPLIT_SEED = 0
TEST_SIZE = 0.3


def snake(name):
    return name.replace(" (cm)", "").replace(" ", "_")


def integral_to_int(df):
    for c in df.columns:
        if df[c].dtype.kind == "f" and df[c].notna().all() and (df[c] == df[c].round()).all():
            df[c] = df[c].astype("int64")
    return df


def with_split(df, y, stratify):
    idx = np.arange(len(df))
    _, test = train_test_split(
        idx, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y if stratify else None
    )
    mark = np.zeros(len(df), dtype="int64")
    mark[test] = 1
    df["is_test"] = mark
    return df


def build_datasets():
    out = {}
    iris = datasets.load_iris(as_frame=True)
    df = iris.data.rename(columns=snake)
    df["species"] = [iris.target_names[t] for t in iris.target]
    out["iris"] = with_split(df, iris.target, True)

    gaps = out["iris"].drop(columns=["is_test"]).copy()
    rows = np.arange(len(gaps))
    gaps["petal_width"] = gaps["petal_width"].astype("float64")
    gaps.loc[rows % 7 == 3, "petal_width"] = np.nan
    gaps["species"] = gaps["species"].astype(object)
    gaps.loc[rows % 11 == 5, "species"] = None
    out["iris_gaps"] = gaps

    d = datasets.load_diabetes(as_frame=True, scaled=True)
    df = d.data.copy()
    df["progression"] = d.target
    out["diabetes"] = with_split(integral_to_int(df), None, False)

    w = datasets.load_wine(as_frame=True)
    df = w.data.rename(columns=snake)
    df["class"] = w.target.astype("int64")
    out["wine"] = with_split(integral_to_int(df), w.target, True)

    b = datasets.load_breast_cancer(as_frame=True)
    df = b.data.rename(columns=snake)
    df["diagnosis"] = b.target.astype("int64")  # 0 = malignant, 1 = benign
    out["breast_cancer"] = with_split(df, b.target, True)
    return out


def write_and_reload(frames):
    """Write each CSV, read it back the way the runner's polars will see it (floats parsed
    exactly, empty fields as missing) and return the reloaded frames."""
    DATA.mkdir(parents=True, exist_ok=True)
    loaded = {}
    for name, df in frames.items():
        path = DATA / f"{name}.csv"
        df.to_csv(path, index=False, lineterminator="\n")
        back = pd.read_csv(path)  # pandas 3 parses floats exactly; checked below
        for c in df.columns:
            a, b = df[c], back[c]
            same = (a.isna() == b.isna()).all() and (a[a.notna()].to_numpy() == b[b.notna()].to_numpy()).all()
            if not same:
                sys.exit(f"{name}.csv: column {c} does not read back as written")
        loaded[name] = back
    return loaded


# --- op 200 -------------------------------------------------------------------------------

def predicate(df, p):
    if "all" in p or "any" in p:
        parts = [predicate(df, c) for c in p.get("all", p.get("any"))]
        out = parts[0]
        for m in parts[1:]:
            out = (out & m) if "all" in p else (out | m)
        return out
    s, op, v = df[p["column"]], p["op"], p.get("value")
    present = s.notna()
    if op == "is_null":
        return ~present
    if op == "not_null":
        return present
    vals = s[present]
    if op == "eq":
        m = vals == v
    elif op == "ne":
        m = vals != v
    elif op == "lt":
        m = vals < v
    elif op == "le":
        m = vals <= v
    elif op == "gt":
        m = vals > v
    elif op == "ge":
        m = vals >= v
    elif op == "in":
        m = vals.isin(v)
    elif op == "contains":
        m = vals.astype(str).str.contains(v, regex=False)
    elif op == "between":
        m = (vals >= v[0]) & (vals <= v[1])
    else:
        raise ValueError(op)
    return m.reindex(df.index, fill_value=False).astype(bool)


AGG = {"sum": "sum", "mean": "mean", "min": "min", "max": "max", "median": "median"}


def group(df, g):
    by = g["by"]
    grouped = df.groupby(by, dropna=False, sort=False)
    parts = []
    for a in g["aggregations"]:
        col, fn = a.get("column"), a["fn"]
        name = a.get("as") or (f"{col}_{fn}" if col else "count")
        if fn == "count" and col is None:
            s = grouped.size()
        elif fn == "count":
            s = grouped[col].count()
        elif fn == "std":
            s = grouped[col].std(ddof=1)
        else:
            s = getattr(grouped[col], AGG[fn])()
        parts.append(s.rename(name))
    out = pd.concat(parts, axis=1).reset_index()
    return out.sort_values(by, ascending=True, na_position="last", kind="stable").reset_index(drop=True)


def run_filter(df, params):
    out = df
    if "where" in params:
        out = out[predicate(out, params["where"])]
    if "group_by" in params:
        out = group(out, params["group_by"])
    if "sort" in params:
        keys = [k if isinstance(k, dict) else {"column": k} for k in params["sort"]]
        out = out.sort_values(
            [k["column"] for k in keys],
            ascending=[not k.get("descending", False) for k in keys],
            na_position="last",
            kind="stable",
        )
    if "select" in params:
        out = out[params["select"]]
    if "limit" in params:
        out = out.head(params["limit"])
    return out


def cell(v):
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    if isinstance(v, (np.integer, int)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v)
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    return str(v)


def as_json(df):
    rows = [[cell(v) for v in row] for row in df.itertuples(index=False, name=None)]
    return {"columns": list(map(str, df.columns)), "rows": rows}


FILTERS = [
    ("eq_string", {"dataset": "iris", "where": {"column": "species", "op": "eq", "value": "setosa"},
                   "select": ["sepal_length", "species"]}),
    ("eq_int", {"dataset": "wine", "where": {"column": "magnesium", "op": "eq", "value": 101}}),
    ("ne_string_with_nulls", {"dataset": "iris_gaps", "where": {"column": "species", "op": "ne", "value": "virginica"}}),
    ("ne_float_with_nulls", {"dataset": "iris_gaps", "where": {"column": "petal_width", "op": "ne", "value": 0.2}}),
    ("lt_float", {"dataset": "iris", "where": {"column": "petal_length", "op": "lt", "value": 1.5}}),
    ("le_int", {"dataset": "wine", "where": {"column": "magnesium", "op": "le", "value": 90},
                "select": ["magnesium", "alcohol", "class"]}),
    ("gt_int", {"dataset": "wine", "where": {"column": "proline", "op": "gt", "value": 1000}}),
    ("ge_float", {"dataset": "wine", "where": {"column": "alcohol", "op": "ge", "value": 13.5}}),
    ("lt_string_lexicographic", {"dataset": "iris_gaps", "where": {"column": "species", "op": "lt", "value": "versicolor"},
                                 "select": ["species", "petal_width"]}),
    ("in_string", {"dataset": "iris", "where": {"column": "species", "op": "in", "value": ["setosa", "virginica"]},
                   "select": ["species", "sepal_width"]}),
    ("in_int", {"dataset": "wine", "where": {"column": "class", "op": "in", "value": [0, 2]},
                "select": ["class", "proline"]}),
    ("in_float_with_nulls", {"dataset": "iris_gaps", "where": {"column": "petal_width", "op": "in", "value": [0.2, 1.3, 2.3]}}),
    ("contains", {"dataset": "iris_gaps", "where": {"column": "species", "op": "contains", "value": "si"}}),
    ("between_float", {"dataset": "diabetes", "where": {"column": "bmi", "op": "between", "value": [-0.01, 0.02]}}),
    ("between_int", {"dataset": "wine", "where": {"column": "magnesium", "op": "between", "value": [100, 110]}}),
    ("is_null", {"dataset": "iris_gaps", "where": {"column": "petal_width", "op": "is_null"}}),
    ("not_null", {"dataset": "iris_gaps", "where": {"column": "species", "op": "not_null"},
                  "select": ["species", "petal_width"]}),
    ("all_any_nested", {"dataset": "wine", "where": {"all": [
        {"any": [{"column": "class", "op": "eq", "value": 0},
                 {"column": "color_intensity", "op": "gt", "value": 7.5}]},
        {"column": "alcohol", "op": "ge", "value": 12.5},
        {"any": [{"all": [{"column": "magnesium", "op": "lt", "value": 100},
                          {"column": "hue", "op": "between", "value": [0.7, 1.1]}]},
                 {"column": "proline", "op": "ge", "value": 1200}]}]},
        "select": ["class", "alcohol", "color_intensity", "magnesium", "hue", "proline"]}),
    ("any_all_nested_with_nulls", {"dataset": "iris_gaps", "where": {"any": [
        {"all": [{"column": "species", "op": "is_null"}, {"column": "sepal_length", "op": "gt", "value": 5.5}]},
        {"all": [{"column": "petal_width", "op": "is_null"}, {"column": "species", "op": "ne", "value": "setosa"}]},
        {"column": "sepal_width", "op": "ge", "value": 4.0}]}}),
    ("sort_multi_mixed", {"dataset": "iris", "sort": [
        "species", {"column": "petal_length", "descending": True}, {"column": "sepal_width", "descending": False}]}),
    ("sort_desc_nulls_last_limit", {"dataset": "iris_gaps", "sort": [
        {"column": "species", "descending": True}, {"column": "petal_width", "descending": True}],
        "limit": 60}),
    ("sort_by_unselected_column", {"dataset": "diabetes", "select": ["age", "sex", "progression"],
                                   "sort": [{"column": "bmi", "descending": True}], "limit": 40}),
    ("limit_without_sort", {"dataset": "breast_cancer", "where": {"column": "diagnosis", "op": "eq", "value": 0},
                            "select": ["mean_radius", "mean_texture", "diagnosis"], "limit": 17}),
    ("group_by_every_aggregation", {"dataset": "iris", "group_by": {"by": ["species"], "aggregations": [
        {"fn": "count"},
        {"column": "sepal_length", "fn": "count"},
        {"column": "sepal_length", "fn": "sum"},
        {"column": "sepal_width", "fn": "mean"},
        {"column": "petal_length", "fn": "min"},
        {"column": "petal_length", "fn": "max"},
        {"column": "petal_width", "fn": "median"},
        {"column": "sepal_width", "fn": "std"}]}}),
    ("group_by_nulls", {"dataset": "iris_gaps", "group_by": {"by": ["species"], "aggregations": [
        {"fn": "count", "as": "rows"},
        {"column": "petal_width", "fn": "count"},
        {"column": "petal_width", "fn": "sum"},
        {"column": "petal_width", "fn": "mean"},
        {"column": "petal_width", "fn": "min"},
        {"column": "petal_width", "fn": "max"},
        {"column": "petal_width", "fn": "median"},
        {"column": "petal_width", "fn": "std"}]}}),
    ("group_by_int_columns", {"dataset": "wine", "where": {"column": "alcohol", "op": "gt", "value": 12.0},
                              "group_by": {"by": ["class"], "aggregations": [
        {"fn": "count"},
        {"column": "magnesium", "fn": "sum"},
        {"column": "magnesium", "fn": "mean"},
        {"column": "proline", "fn": "min"},
        {"column": "proline", "fn": "max"},
        {"column": "proline", "fn": "median"},
        {"column": "magnesium", "fn": "std"}]}}),
    ("group_by_sorted_selected_limited", {"dataset": "wine", "group_by": {"by": ["class"], "aggregations": [
        {"column": "alcohol", "fn": "mean", "as": "mean_alcohol"},
        {"column": "flavanoids", "fn": "std"},
        {"fn": "count", "as": "n"}]},
        "select": ["class", "mean_alcohol", "n"],
        "sort": [{"column": "mean_alcohol", "descending": True}], "limit": 2}),
    ("group_by_two_keys", {"dataset": "diabetes", "where": {"column": "age", "op": "gt", "value": 0.0},
                           "group_by": {"by": ["sex", "is_test"], "aggregations": [
        {"fn": "count"},
        {"column": "progression", "fn": "sum"},
        {"column": "progression", "fn": "mean"},
        {"column": "bmi", "fn": "median"},
        {"column": "bp", "fn": "std"}]},
        "sort": [{"column": "count", "descending": True}]}),
]


def filters(frames):
    out = []
    for name, params in FILTERS:
        params = dict(params, preview_limit=10000)
        got = run_filter(frames[params["dataset"]], params)
        out.append({"name": name, "params": params, **as_json(got)})
    return out


# --- op 300 -------------------------------------------------------------------------------

def split(df, features, target):
    train, test = df[df.is_test == 0], df[df.is_test == 1]
    return train[features].to_numpy(), train[target].to_numpy(), test[features].to_numpy(), test[target].to_numpy()


def features_of(df, *exclude):
    return [c for c in df.columns if c not in exclude + ("is_test",)]


def linear(frames):
    df = frames["diabetes"]
    features = features_of(df, "progression")
    xtr, ytr, xte, yte = split(df, features, "progression")
    m = LinearRegression().fit(xtr, ytr)
    pred = m.predict(xte)
    return {
        "params": {"dataset": "diabetes", "model": "linear_regression", "features": features,
                   "target": "progression", "split_column": "is_test"},
        "n_train": len(ytr), "n_test": len(yte),
        "coefficients": dict(zip(features, map(float, m.coef_))),
        "intercept": float(m.intercept_),
        "r2": float(r2_score(yte, pred)),
        "rmse": float(math.sqrt(mean_squared_error(yte, pred))),
        "mae": float(mean_absolute_error(yte, pred)),
    }


def classifier_case(frames, dataset, target, model, extra):
    df = frames[dataset]
    features = features_of(df, target)
    xtr, ytr, xte, yte = split(df, features, target)
    case = {
        "params": {"dataset": dataset, "model": model, "features": features, "target": target,
                   "split_column": "is_test", **extra},
        "n_train": len(ytr), "n_test": len(yte),
    }
    if model == "logistic_regression":
        est = LogisticRegression(C=1.0, solver="lbfgs", max_iter=extra["max_iterations"], tol=1e-8)
        est.fit(xtr, ytr)
        case["accuracy"] = float(accuracy_score(yte, est.predict(xte)))
        return case

    def tree(seed):
        return DecisionTreeClassifier(criterion="gini", max_depth=extra["max_depth"], min_samples_split=2,
                                      min_samples_leaf=1, min_impurity_decrease=0.0,
                                      random_state=seed).fit(xtr, ytr)

    trees = [tree(seed) for seed in range(100)]
    accuracies = [float(accuracy_score(yte, t.predict(xte))) for t in trees]
    importances = {tuple(np.round(t.feature_importances_, 12)) for t in trees}
    case["accuracy"] = accuracies[0]
    case["accuracy_range"] = [min(accuracies), max(accuracies)]
    case["tie_free"] = len(importances) == 1
    if case["tie_free"]:
        case["feature_importances"] = dict(zip(features, map(float, trees[0].feature_importances_)))
    return case


def kmeans(frames):
    df = frames["iris"]
    features = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    x = df[features].to_numpy()
    init, _ = kmeans_plusplus(x, n_clusters=3, random_state=0)
    m = KMeans(n_clusters=3, init=init, n_init=1, algorithm="lloyd", max_iter=300, tol=1e-4).fit(x)
    return {
        "params": {"dataset": "iris", "model": "kmeans", "features": features, "k": 3,
                   "init_centroids": init.tolist()},
        "inertia": float(m.inertia_),
        "centroids": m.cluster_centers_.tolist(),
        "iterations": int(m.n_iter_),
    }


def main():
    frames = write_and_reload(build_datasets())
    expected = {
        "generated_with": {"python": platform.python_version(), "numpy": np.__version__,
                           "pandas": pd.__version__, "scikit-learn": sklearn.__version__},
        "filter": filters(frames),
        "linear_regression": linear(frames),
        "classifiers": [
            classifier_case(frames, "breast_cancer", "diagnosis", "logistic_regression", {"max_iterations": 10000}),
            classifier_case(frames, "iris", "species", "logistic_regression", {"max_iterations": 10000}),
            classifier_case(frames, "wine", "class", "logistic_regression", {"max_iterations": 10000}),
            classifier_case(frames, "iris", "species", "decision_tree", {"max_depth": 3}),
            classifier_case(frames, "wine", "class", "decision_tree", {"max_depth": 2}),
            classifier_case(frames, "breast_cancer", "diagnosis", "decision_tree", {"max_depth": 2}),
            classifier_case(frames, "wine", "class", "decision_tree", {"max_depth": 4}),
        ],
        "kmeans": kmeans(frames),
    }
    with open(OUT / "expected.json", "w") as f:
        json.dump(expected, f, indent=1, allow_nan=False)
        f.write("\n")
    print(f"wrote {OUT / 'expected.json'} and {len(frames)} datasets")


if __name__ == "__main__":
    main()
