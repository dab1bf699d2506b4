//! Operation 300, ML model analysis: fit a linfa model on numeric feature columns of a dataset
//! and report its parameters, its metrics on a held-out test split and its predictions.
//!
//! Models (`model`): `linear_regression` (ordinary least squares with intercept),
//! `logistic_regression` (binary, or multinomial for three or more classes; linfa's L-BFGS with
//! its default L2 penalty `alpha = 1`, i.e. scikit-learn's `C = 1`), `kmeans` (k-means++ init, 10
//! seeded runs, the one with the lowest inertia kept; or one run from `init_centroids`) and
//! `decision_tree` (Gini CART, our own [`super::cart`]: linfa-trees' is not deterministic).
//!
//! Steps: read the used columns (with each row's 0-based index in the dataset) → drop rows with
//! a null or non-finite value in any used column (counted in `dropped_rows`) → shuffle the row
//! indices with a xoshiro256++ generator seeded from `seed` and take the first
//! `ceil(n · test_fraction)` as the test split, the rest as training split (both then put back in
//! dataset order) → fit on the training split → evaluate on the test split. The same params on
//! the same file therefore give the same result byte for byte. With `split_column` instead, that
//! column decides: true/1 marks a test row, false/0 a training row, anything else in a usable row
//! (a null included) is a `data_error` naming the field and row; it is never a feature.
//!
//! Classification targets (integers, strings or booleans) are mapped to class ids in sorted
//! label order; labels keep their JSON type in the result. Metrics follow scikit-learn's
//! conventions: macro precision/recall/F1 average over the labels present in the test split's
//! actual or predicted values, a class with no predicted (or actual) rows scores 0 (not NaN); R²
//! is `null` when the test targets are constant. K-means inertia is the sum of squared distances
//! of the training rows to their nearest centroid (scikit-learn's `inertia_`); the silhouette is
//! computed here (linfa has none) on every row, or on a seeded sample of [`SILHOUETTE_SAMPLE`]
//! rows when there are more, and is `null` with fewer than two clusters present.
//!
//! A decision tree leaf predicts its most frequent training class, ties → the smallest class id.
//!
//! Params: `dataset`, `model`, `features` (numeric column names), `target` (required except for
//! k-means, where it is optional and only shown as `actual` in the predictions), `test_fraction`
//! (default 0.2 — 0 for k-means —, `0 < f < 1`, k-means also accepts 0) or `split_column` (a
//! boolean, numeric 0/1 or text true/false column; excludes `test_fraction`), `seed` (default
//! 42), `k` (k-means only, default 3), `init_centroids` (k-means only: `k` arrays of one finite
//! number per feature, in `features` order), `max_depth` (decision tree only), `max_iterations`
//! (logistic regression: default 100; k-means: per run, default 300).
//! Result: `{model, dataset, features, target, n_train, n_test, dropped_rows, test_fraction
//! (null with a split column), split_column, seed, parameters, metrics}` plus the artifact
//! `predictions.csv` (`row,actual,predicted`: the test rows, or every used row for k-means, in
//! dataset order). k-means parameters say how it started (`init`: `k-means++` or `precomputed`)
//! and how many `runs` it made.
//!
//! Exactly collinear features are not detected: linfa's QR least squares then returns one of
//! the many exact solutions (not scikit-learn's minimum-norm one); the predictions are right,
//! the individual coefficients are not meaningful.
//!
//! It does not scale features, tune hyper-parameters or persist the fitted model.

use std::collections::HashMap;
use std::io::Write as _;

use dap_protocol::{failure, DatasetFormat, TaskError};
use linfa::prelude::*;
use linfa::DatasetBase;
use linfa_clustering::{KMeans, KMeansInit};
use linfa_linear::LinearRegression;
use linfa_logistic::{LogisticRegression, MultiLogisticRegression};
use ndarray::{Array1, Array2, ArrayView1, Axis};
use polars::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::{Xoshiro256Plus, Xoshiro256PlusPlus};
use serde_json::{json, Map, Value};

use super::cart::{ClassificationTree, FitError};
use super::params::{invalid, shorten_json, Named, Params, SourceRef};
use super::{check_cancelled, Output};
use crate::artifacts::{LocalArtifact, Scratch};
use crate::catalog::Catalog;
use crate::outputs::OutputTable;
use crate::progress::ProgressReporter;

/// Name of the artifact holding the predictions.
pub const PREDICTIONS_ARTIFACT: &str = "predictions.csv";
pub const DEFAULT_TEST_FRACTION: f64 = 0.2;
pub const DEFAULT_SEED: u64 = 42;
pub const DEFAULT_K: u64 = 3;
pub const MAX_K: u64 = 1_000;
pub const MAX_FEATURES: usize = 1_000;
pub const MAX_TREE_DEPTH: u64 = 1_000;
pub const MAX_ITERATIONS: u64 = 1_000_000;
/// Most distinct classes a classification target may hold.
pub const MAX_CLASSES: usize = 1_000;
/// Most rows the silhouette is computed on (it is quadratic in them).
pub const SILHOUETTE_SAMPLE: usize = 2_000;
/// k-means restarts (each with its own seeded generator); the lowest inertia wins.
pub const KMEANS_RUNS: u64 = 10;
pub const DEFAULT_KMEANS_ITERATIONS: u64 = 300;
pub const DEFAULT_LOGISTIC_ITERATIONS: u64 = 100;

const PARAMS: [&str; 12] = [
    "dataset",
    "input",
    "model",
    "features",
    "target",
    "test_fraction",
    "split_column",
    "seed",
    "k",
    "init_centroids",
    "max_depth",
    "max_iterations",
];

/// Column name for the dataset row index while loading (made unique against the schema).
const ROW_INDEX: &str = "__dap_row_index";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    LinearRegression,
    LogisticRegression,
    KMeans,
    DecisionTree,
}

impl Named for ModelKind {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("linear_regression", ModelKind::LinearRegression),
        ("logistic_regression", ModelKind::LogisticRegression),
        ("kmeans", ModelKind::KMeans),
        ("decision_tree", ModelKind::DecisionTree),
    ];
}

impl ModelKind {
    fn is_classifier(self) -> bool {
        matches!(self, Self::LogisticRegression | Self::DecisionTree)
    }
}

/// Validated params, as far as they can be checked without the dataset's schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParams {
    pub dataset: SourceRef,
    pub model: ModelKind,
    pub features: Vec<String>,
    pub target: Option<String>,
    /// Share of rows held out for testing; 0 (unused) when `split_column` is given.
    pub test_fraction: f64,
    /// A column marking the test rows (true/1) and training rows (false/0), instead of a
    /// seeded random split by `test_fraction`.
    pub split_column: Option<String>,
    pub seed: u64,
    pub k: usize,
    /// k-means only: the starting centroids (`k × features`), one run from them instead of
    /// seeded k-means++ restarts.
    pub init_centroids: Option<Array2<f64>>,
    pub max_depth: Option<usize>,
    pub max_iterations: Option<u64>,
}

impl ModelParams {
    pub fn parse(value: &Value) -> Result<Self, TaskError> {
        let p = Params::new(value)?;
        p.deny_unknown(&PARAMS)?;
        let dataset = SourceRef::parse(&p)?;
        let model_name = p.required_str("model")?;
        let model = ModelKind::parse(model_name).ok_or_else(|| {
            invalid(format!(
                "params.model `{model_name}` is not a known model (expected: {})",
                ModelKind::names()
            ))
        })?;
        if p.value("features")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            return Err(invalid("params.features must list at least one column"));
        }
        let features = p
            .string_list("features")?
            .ok_or_else(|| invalid("params.features is required (numeric column names)"))?;
        if features.len() > MAX_FEATURES {
            return Err(invalid(format!(
                "params.features lists {} columns; at most {MAX_FEATURES} are accepted",
                features.len()
            )));
        }
        let target = p.optional_str("target")?.map(str::to_owned);
        if target.is_none() && model != ModelKind::KMeans {
            return Err(invalid(format!(
                "params.target is required for model {}",
                model.name()
            )));
        }
        if let Some(t) = &target {
            if features.contains(t) {
                return Err(invalid(format!(
                    "params.target `{t}` is also listed in params.features"
                )));
            }
        }
        let split_column = p.optional_str("split_column")?.map(str::to_owned);
        if let Some(s) = &split_column {
            if p.value("test_fraction").is_some() {
                return Err(invalid(
                    "params.split_column and params.test_fraction exclude each other; give one",
                ));
            }
            if features.contains(s) || target.as_ref() == Some(s) {
                return Err(invalid(format!(
                    "params.split_column `{s}` is also a feature or the target; it only marks test rows"
                )));
            }
        }
        let test_fraction = match p.value("test_fraction") {
            None if split_column.is_some() => 0.0,
            None if model == ModelKind::KMeans => 0.0,
            None => DEFAULT_TEST_FRACTION,
            Some(v) => {
                let f = v.as_f64().filter(|f| f.is_finite());
                let lower_ok = |f: f64| f > 0.0 || (model == ModelKind::KMeans && f == 0.0);
                match f {
                    Some(f) if lower_ok(f) && f < 1.0 => f,
                    _ => {
                        let range = if model == ModelKind::KMeans {
                            "0 ≤ f < 1"
                        } else {
                            "0 < f < 1"
                        };
                        return Err(invalid(format!(
                            "params.test_fraction must be a number with {range} (got {})",
                            shorten_json(v)
                        )));
                    }
                }
            }
        };
        let seed = p.u64_in("seed", DEFAULT_SEED, 0, u64::MAX)?;
        let only_for = |field: &str, kind: ModelKind| -> Result<(), TaskError> {
            if p.value(field).is_some() && model != kind {
                return Err(invalid(format!(
                    "params.{field} applies to model {} only, not {}",
                    kind.name(),
                    model.name()
                )));
            }
            Ok(())
        };
        only_for("k", ModelKind::KMeans)?;
        only_for("init_centroids", ModelKind::KMeans)?;
        only_for("max_depth", ModelKind::DecisionTree)?;
        if p.value("max_iterations").is_some()
            && !matches!(model, ModelKind::KMeans | ModelKind::LogisticRegression)
        {
            return Err(invalid(format!(
                "params.max_iterations applies to models logistic_regression and kmeans only, not {}",
                model.name()
            )));
        }
        // The bounds keep these far below usize::MAX on any target.
        let k = p.u64_in("k", DEFAULT_K, 1, MAX_K)? as usize;
        let max_depth = p
            .optional_u64_in("max_depth", 1, MAX_TREE_DEPTH)?
            .map(|d| d as usize);
        let max_iterations = p.optional_u64_in("max_iterations", 1, MAX_ITERATIONS)?;
        let init_centroids = p
            .value("init_centroids")
            .map(|v| parse_centroids(v, k, features.len()))
            .transpose()?;
        Ok(Self {
            dataset,
            model,
            features,
            target,
            test_fraction,
            split_column,
            seed,
            k,
            init_centroids,
            max_depth,
            max_iterations,
        })
    }
}

/// `params.init_centroids`: `k` rows of `n_features` finite numbers.
fn parse_centroids(value: &Value, k: usize, n_features: usize) -> Result<Array2<f64>, TaskError> {
    let rows = value.as_array().ok_or_else(|| {
        invalid(format!(
            "params.init_centroids must be an array of {k} centroids (params.k), each an array of {n_features} numbers (one per feature)"
        ))
    })?;
    if rows.len() != k {
        return Err(invalid(format!(
            "params.init_centroids holds {} centroids but params.k is {k}",
            rows.len()
        )));
    }
    let mut values = Vec::with_capacity(k * n_features);
    for (i, row) in rows.iter().enumerate() {
        let row = row.as_array().ok_or_else(|| {
            invalid(format!(
                "params.init_centroids[{i}] must be an array of {n_features} numbers (one per feature)"
            ))
        })?;
        if row.len() != n_features {
            return Err(invalid(format!(
                "params.init_centroids[{i}] holds {} numbers but params.features lists {n_features} columns",
                row.len()
            )));
        }
        for (j, v) in row.iter().enumerate() {
            let x = v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                invalid(format!(
                    "params.init_centroids[{i}][{j}] must be a finite number (got {})",
                    shorten_json(v)
                ))
            })?;
            values.push(x);
        }
    }
    Array2::from_shape_vec((k, n_features), values)
        .map_err(|e| internal(format!("building the initial centroids failed: {e}")))
}

/// What kind of values the target column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetKind {
    Numeric,
    Integer,
    Text,
    Boolean,
}

/// One class label, ordered the way class ids are assigned.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Label {
    Bool(bool),
    Int(i64),
    Text(String),
}

impl Label {
    fn to_json(&self) -> Value {
        match self {
            Label::Bool(b) => Value::Bool(*b),
            Label::Int(i) => Value::from(*i),
            Label::Text(s) => Value::String(s.clone()),
        }
    }

    fn text(&self) -> String {
        match self {
            Label::Bool(b) => b.to_string(),
            Label::Int(i) => i.to_string(),
            Label::Text(s) => s.clone(),
        }
    }
}

/// The target of the usable rows.
#[derive(Debug, Clone)]
enum Target {
    None,
    Values(Vec<f64>),
    Labels(Vec<Label>),
}

/// The usable rows: no null or non-finite value in any used column.
#[derive(Debug)]
struct Table {
    /// 0-based index of each row in the dataset.
    rows: Vec<u64>,
    /// Row-major features, `rows.len() × n_features`.
    x: Array2<f64>,
    target: Target,
    /// Per row, whether `params.split_column` marks it as a test row (`None`: no such column).
    is_test: Option<Vec<bool>>,
    dropped: usize,
}

fn data_error(message: impl Into<String>) -> TaskError {
    TaskError::new(failure::DATA_ERROR, message)
}

fn internal(message: impl Into<String>) -> TaskError {
    TaskError::new(failure::INTERNAL, message)
}

/// Check the used columns against the schema; returns the target's kind.
fn check_columns(
    p: &ModelParams,
    schema: &Schema,
    dataset: &str,
) -> Result<Option<TargetKind>, TaskError> {
    for (i, f) in p.features.iter().enumerate() {
        let dtype = schema.get(f).ok_or_else(|| {
            invalid(format!(
                "params.features[{i}]: column `{f}` is not in dataset `{dataset}`"
            ))
        })?;
        if !dtype.is_primitive_numeric() {
            return Err(invalid(format!(
                "params.features[{i}]: column `{f}` is {dtype}, not numeric"
            )));
        }
    }
    if let Some(s) = &p.split_column {
        split_column_kind(s, schema, dataset)?;
    }
    let Some(t) = &p.target else {
        return Ok(None);
    };
    let dtype = schema.get(t).ok_or_else(|| {
        invalid(format!(
            "params.target: column `{t}` is not in dataset `{dataset}`"
        ))
    })?;
    let kind = if p.model == ModelKind::LinearRegression {
        if !dtype.is_primitive_numeric() {
            return Err(invalid(format!(
                "params.target: column `{t}` is {dtype}, not numeric (linear regression predicts a number)"
            )));
        }
        TargetKind::Numeric
    } else if dtype.is_integer() {
        TargetKind::Integer
    } else if dtype.is_string() {
        TargetKind::Text
    } else if dtype.is_bool() {
        TargetKind::Boolean
    } else {
        return Err(invalid(format!(
            "params.target: column `{t}` is {dtype}; a class column must hold integers, strings or booleans"
        )));
    };
    Ok(Some(kind))
}

/// Read the used columns and keep the usable rows.
fn load(
    p: &ModelParams,
    lf: LazyFrame,
    schema: &Schema,
    target_kind: Option<TargetKind>,
    failed: &dyn Fn(PolarsError) -> TaskError,
) -> Result<Table, TaskError> {
    let mut index_name = ROW_INDEX.to_owned();
    while schema.contains(&index_name) {
        index_name.push('_');
    }
    let mut exprs = vec![col(index_name.as_str()).cast(DataType::UInt64)];
    exprs.extend(
        p.features
            .iter()
            .map(|f| col(f.as_str()).cast(DataType::Float64)),
    );
    if let (Some(t), Some(kind)) = (&p.target, target_kind) {
        let e = col(t.as_str());
        exprs.push(match kind {
            TargetKind::Numeric => e.cast(DataType::Float64),
            TargetKind::Integer => e.cast(DataType::Int64),
            TargetKind::Text | TargetKind::Boolean => e,
        });
    }
    // The column was checked by `check_columns`.
    let split_kind = p
        .split_column
        .as_deref()
        .map(|s| split_column_kind(s, schema, "the dataset"))
        .transpose()?;
    if let (Some(s), Some(kind)) = (&p.split_column, split_kind) {
        let e = col(s.as_str());
        exprs.push(match kind {
            SplitKind::Number => e.cast(DataType::Float64),
            SplitKind::Boolean | SplitKind::Text => e,
        });
    }
    let df = lf
        .with_row_index(index_name.as_str(), None)
        .select(exprs)
        .collect()
        .map_err(failed)?;
    let column = |i: usize| df.get_columns()[i].as_materialized_series();
    let index = column(0).u64().map_err(failed)?;
    let features: Vec<&Float64Chunked> = (0..p.features.len())
        .map(|i| column(i + 1).f64())
        .collect::<PolarsResult<_>>()
        .map_err(failed)?;
    let n_features = p.features.len();
    let target_col = target_kind.map(|_| column(n_features + 1));
    let split_col = split_kind.map(|_| column(n_features + 1 + usize::from(target_kind.is_some())));

    let height = df.height();
    let mut rows = Vec::with_capacity(height);
    let mut x = Vec::with_capacity(height * n_features);
    let mut values = Vec::new();
    let mut labels = Vec::new();
    let mut is_test = Vec::new();
    let mut dropped = 0usize;
    let mut row_x = Vec::with_capacity(n_features);
    for r in 0..height {
        row_x.clear();
        let mut usable = true;
        for f in &features {
            match f.get(r) {
                Some(v) if v.is_finite() => row_x.push(v),
                _ => {
                    usable = false;
                    break;
                }
            }
        }
        let mut value = None;
        let mut label = None;
        if usable {
            if let (Some(s), Some(kind)) = (target_col, target_kind) {
                match kind {
                    TargetKind::Numeric => {
                        value = s.f64().map_err(failed)?.get(r).filter(|v| v.is_finite());
                        usable = value.is_some();
                    }
                    TargetKind::Integer => {
                        label = s.i64().map_err(failed)?.get(r).map(Label::Int);
                        usable = label.is_some();
                    }
                    TargetKind::Text => {
                        label = s
                            .str()
                            .map_err(failed)?
                            .get(r)
                            .map(|v| Label::Text(v.to_owned()));
                        usable = label.is_some();
                    }
                    TargetKind::Boolean => {
                        label = s.bool().map_err(failed)?.get(r).map(Label::Bool);
                        usable = label.is_some();
                    }
                }
            }
        }
        let Some(row) = index.get(r).filter(|_| usable) else {
            dropped += 1;
            continue;
        };
        if let (Some(s), Some(kind), Some(name)) = (split_col, split_kind, &p.split_column) {
            is_test.push(split_mark(s, kind, r, name, row, failed)?);
        }
        rows.push(row);
        x.extend_from_slice(&row_x);
        values.extend(value);
        labels.extend(label);
    }
    let x = Array2::from_shape_vec((rows.len(), n_features), x)
        .map_err(|e| internal(format!("building the feature matrix failed: {e}")))?;
    let target = match target_kind {
        None => Target::None,
        Some(TargetKind::Numeric) => Target::Values(values),
        Some(_) => Target::Labels(labels),
    };
    Ok(Table {
        rows,
        x,
        target,
        is_test: split_kind.map(|_| is_test),
        dropped,
    })
}

/// What kind of values the split column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SplitKind {
    Boolean,
    /// Any numeric type, read as f64: 1 marks a test row, 0 a training row.
    Number,
    /// `true`/`1` or `false`/`0`, case-insensitive.
    Text,
}

fn split_column_kind(name: &str, schema: &Schema, dataset: &str) -> Result<SplitKind, TaskError> {
    let dtype = schema.get(name).ok_or_else(|| {
        invalid(format!(
            "params.split_column: column `{name}` is not in dataset `{dataset}`"
        ))
    })?;
    if dtype.is_bool() {
        Ok(SplitKind::Boolean)
    } else if dtype.is_primitive_numeric() {
        Ok(SplitKind::Number)
    } else if dtype.is_string() {
        Ok(SplitKind::Text)
    } else {
        Err(invalid(format!(
            "params.split_column: column `{name}` is {dtype}; it must hold booleans, 0/1 or true/false"
        )))
    }
}

/// Whether position `r` of the split column marks a test row; any other value than true/1 or
/// false/0 (a null included) is a data error naming the field and the dataset row.
fn split_mark(
    s: &Series,
    kind: SplitKind,
    r: usize,
    name: &str,
    row: u64,
    failed: &dyn Fn(PolarsError) -> TaskError,
) -> Result<bool, TaskError> {
    let mark = match kind {
        SplitKind::Boolean => s.bool().map_err(failed)?.get(r),
        SplitKind::Number => match s.f64().map_err(failed)?.get(r) {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        SplitKind::Text => match s.str().map_err(failed)?.get(r) {
            Some(v) if v == "1" || v.eq_ignore_ascii_case("true") => Some(true),
            Some(v) if v == "0" || v.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        },
    };
    mark.ok_or_else(|| {
        let shown = s
            .get(r)
            .map(|v| match v {
                AnyValue::Null => "null".to_owned(),
                v => shorten_json(&super::values::to_json(v)),
            })
            .unwrap_or_else(|_| "?".to_owned());
        data_error(format!(
            "params.split_column: column `{name}` holds {shown} in row {row}; \
             expected true/1 (test row) or false/0 (training row)"
        ))
    })
}

/// Row positions (into the table) of the training and test splits, each in dataset order: as
/// `params.split_column` marks them, or a seeded random split by `params.test_fraction`.
fn split_rows(t: &Table, p: &ModelParams) -> (Vec<usize>, Vec<usize>) {
    match &t.is_test {
        Some(marks) => {
            let (test, train): (Vec<usize>, Vec<usize>) = (0..marks.len()).partition(|&i| marks[i]);
            (train, test)
        }
        None => split(t.rows.len(), p.test_fraction, p.seed),
    }
}

/// Row positions (into the table) of the training and test splits, each in dataset order.
fn split(n: usize, test_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    order.shuffle(&mut rng);
    // Like scikit-learn's train_test_split: the test split is ceil(n · f) rows.
    let n_test = ((n as f64) * test_fraction).ceil() as usize;
    let n_test = n_test.min(n);
    let mut test = order[..n_test].to_vec();
    let mut train = order[n_test..].to_vec();
    test.sort_unstable();
    train.sort_unstable();
    (train, test)
}

/// Run a model; the predictions go to [`PREDICTIONS_ARTIFACT`] in `scratch`. Blocking.
pub fn run(
    params: &Value,
    catalog: &Catalog,
    progress: &ProgressReporter,
    scratch: &Scratch,
) -> Result<Output, TaskError> {
    let p = ModelParams::parse(params)?;
    let dataset = catalog.source(&p.dataset)?;
    let failed = |e: PolarsError| dataset.data_error(&e);

    progress.report(10, "loading");
    let mut lf = dataset.scan()?;
    let schema = lf.collect_schema().map_err(failed)?;
    let target_kind = check_columns(&p, &schema, dataset.name())?;
    let table = load(&p, lf, &schema, target_kind, &failed)?;
    check_cancelled(progress)?;

    progress.report_with_message(
        25,
        "preparing",
        format!(
            "{} usable rows, {} dropped for missing values",
            table.rows.len(),
            table.dropped
        ),
    );
    let (train, test) = split_rows(&table, &p);
    check_sizes(&p, &table, train.len(), test.len())?;
    check_cancelled(progress)?;

    let fitted = match p.model {
        ModelKind::LinearRegression => linear(&table, &train, &test, &p, progress)?,
        ModelKind::LogisticRegression => logistic(&table, &train, &test, &p, progress)?,
        ModelKind::DecisionTree => tree(&table, &train, &test, &p, progress)?,
        ModelKind::KMeans => kmeans(&table, &train, &p, progress)?,
    };
    check_cancelled(progress)?;

    progress.report_with_message(
        95,
        "writing",
        format!("{} predictions", fitted.predictions.len()),
    );
    let path = scratch.path_for(PREDICTIONS_ARTIFACT)?;
    write_predictions(&path, &fitted.predictions)?;

    let result = json!({
        "model": p.model.name(),
        "dataset": dataset.name(),
        "features": p.features,
        "target": p.target,
        "n_train": train.len(),
        "n_test": test.len(),
        "dropped_rows": table.dropped,
        "test_fraction": if p.split_column.is_some() { Value::Null } else { num(p.test_fraction) },
        "split_column": p.split_column,
        "seed": p.seed,
        "parameters": fitted.parameters,
        "metrics": fitted.metrics,
    });
    Ok(Output {
        result,
        table: Some(OutputTable::File {
            path: path.clone(),
            format: DatasetFormat::Csv,
        }),
        artifacts: vec![LocalArtifact {
            name: PREDICTIONS_ARTIFACT.to_owned(),
            path,
            content_type: "text/csv".to_owned(),
        }],
    })
}

/// Refuse splits too small to fit or evaluate the model, before calling linfa.
fn check_sizes(p: &ModelParams, t: &Table, n_train: usize, n_test: usize) -> Result<(), TaskError> {
    let n = t.rows.len();
    let few = |what: String| {
        data_error(format!(
            "{what} ({n} usable rows, {} dropped for missing or non-finite values)",
            t.dropped
        ))
    };
    if p.model == ModelKind::KMeans {
        if n_train < p.k {
            return Err(invalid(format!(
                "params.k ({}) is more than the {n_train} rows available to cluster ({n} usable rows, {} dropped)",
                p.k, t.dropped
            )));
        }
        return Ok(());
    }
    if n_train < 2 || n_test < 2 {
        return Err(few(format!(
            "too few rows: the split leaves {n_train} training and {n_test} test rows, at least 2 each are needed"
        )));
    }
    if p.model == ModelKind::LinearRegression && n_train <= p.features.len() {
        return Err(few(format!(
            "too few rows: linear regression on {} features needs more than {} training rows, the split leaves {n_train}",
            p.features.len(),
            p.features.len()
        )));
    }
    if p.model.is_classifier() {
        let Target::Labels(labels) = &t.target else {
            return Err(internal("class labels missing"));
        };
        let mut distinct: Vec<&Label> = labels.iter().collect();
        distinct.sort();
        distinct.dedup();
        if distinct.len() > MAX_CLASSES {
            return Err(data_error(format!(
                "params.target `{}` holds {} distinct classes; at most {MAX_CLASSES} are supported",
                p.target.as_deref().unwrap_or(""),
                distinct.len()
            )));
        }
    }
    Ok(())
}

/// One line of `predictions.csv`.
#[derive(Debug, Clone, PartialEq)]
struct Prediction {
    row: u64,
    actual: Option<String>,
    predicted: String,
}

/// What a fitted model reports.
struct Fitted {
    parameters: Value,
    metrics: Value,
    predictions: Vec<Prediction>,
}

fn write_predictions(path: &std::path::Path, predictions: &[Prediction]) -> Result<(), TaskError> {
    let failed =
        |e: std::io::Error| internal(format!("writing {PREDICTIONS_ARTIFACT} failed: {e}"));
    let file = std::fs::File::create(path).map_err(failed)?;
    let mut out = std::io::BufWriter::new(file);
    writeln!(out, "row,actual,predicted").map_err(failed)?;
    for p in predictions {
        let actual = p.actual.as_deref().map(csv_field).unwrap_or_default();
        writeln!(out, "{},{},{}", p.row, actual, csv_field(&p.predicted)).map_err(failed)?;
    }
    out.flush().map_err(failed)
}

/// A CSV field, quoted when it must be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// A float as JSON (`null` when not finite).
fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// `{feature: weight}` in feature order.
fn per_feature(features: &[String], weights: ArrayView1<'_, f64>) -> Value {
    let map: Map<String, Value> = features
        .iter()
        .zip(weights.iter())
        .map(|(f, w)| (f.clone(), num(*w)))
        .collect();
    Value::Object(map)
}

fn rows_of(x: &Array2<f64>, idx: &[usize]) -> Array2<f64> {
    x.select(Axis(0), idx)
}

// ---------------------------------------------------------------------------------------------
// Linear regression

fn linear(
    t: &Table,
    train: &[usize],
    test: &[usize],
    p: &ModelParams,
    progress: &ProgressReporter,
) -> Result<Fitted, TaskError> {
    let Target::Values(y) = &t.target else {
        return Err(internal("numeric target missing"));
    };
    let y_train: Array1<f64> = train.iter().map(|&i| y[i]).collect();
    let ds = DatasetBase::new(rows_of(&t.x, train), y_train);
    progress.report(30, "training");
    let model = LinearRegression::new().fit(&ds).map_err(|e| {
        data_error(format!(
            "linear regression could not be fitted ({e}); are some features constant or collinear?"
        ))
    })?;
    if !model.intercept().is_finite() || model.params().iter().any(|w| !w.is_finite()) {
        return Err(data_error(
            "linear regression produced non-finite coefficients; are some features constant or collinear?",
        ));
    }
    check_cancelled(progress)?;
    progress.report(90, "evaluating");
    let predicted = model.predict(&rows_of(&t.x, test));
    let actual: Vec<f64> = test.iter().map(|&i| y[i]).collect();
    let metrics = regression_metrics(&actual, predicted.as_slice().unwrap_or(&[]));
    let predictions = test
        .iter()
        .zip(predicted.iter())
        .map(|(&i, pred)| Prediction {
            row: t.rows[i],
            actual: Some(y[i].to_string()),
            predicted: pred.to_string(),
        })
        .collect();
    Ok(Fitted {
        parameters: json!({
            "coefficients": per_feature(&p.features, model.params().view()),
            "intercept": num(model.intercept()),
        }),
        metrics,
        predictions,
    })
}

/// R², RMSE and MAE of `predicted` against `actual`.
fn regression_metrics(actual: &[f64], predicted: &[f64]) -> Value {
    let n = actual.len().min(predicted.len());
    if n == 0 {
        return json!({"r2": null, "rmse": null, "mae": null});
    }
    let nf = n as f64;
    let mean = actual.iter().sum::<f64>() / nf;
    let (mut ss_res, mut ss_tot, mut abs) = (0.0, 0.0, 0.0);
    for (a, p) in actual.iter().zip(predicted) {
        ss_res += (a - p) * (a - p);
        ss_tot += (a - mean) * (a - mean);
        abs += (a - p).abs();
    }
    let r2 = if ss_tot > 0.0 {
        num(1.0 - ss_res / ss_tot)
    } else {
        Value::Null
    };
    json!({
        "r2": r2,
        "rmse": num((ss_res / nf).sqrt()),
        "mae": num(abs / nf),
    })
}

// ---------------------------------------------------------------------------------------------
// Classification

/// Class ids for the labels: ids follow the sorted distinct labels.
struct Classes {
    labels: Vec<Label>,
    ids: Vec<usize>,
}

impl Classes {
    fn of(labels: &[Label]) -> Self {
        let mut distinct = labels.to_vec();
        distinct.sort();
        distinct.dedup();
        let lookup: HashMap<&Label, usize> =
            distinct.iter().enumerate().map(|(i, l)| (l, i)).collect();
        let ids = labels.iter().map(|l| lookup[l]).collect();
        Self {
            labels: distinct,
            ids,
        }
    }

    fn ids_of(&self, idx: &[usize]) -> Array1<usize> {
        idx.iter().map(|&i| self.ids[i]).collect()
    }

    fn check_trainable(&self, train: &[usize], target: &str) -> Result<(), TaskError> {
        let first = train.first().map(|&i| self.ids[i]);
        if train.iter().all(|&i| Some(self.ids[i]) == first) {
            return Err(data_error(format!(
                "the training split holds a single class of `{target}`; at least two are needed"
            )));
        }
        Ok(())
    }

    fn predictions(&self, t: &Table, test: &[usize], predicted: &[usize]) -> Vec<Prediction> {
        test.iter()
            .zip(predicted)
            .map(|(&i, &p)| Prediction {
                row: t.rows[i],
                actual: Some(self.labels[self.ids[i]].text()),
                predicted: self.labels[p].text(),
            })
            .collect()
    }
}

/// Accuracy, macro precision/recall/F1 (scikit-learn's, zero_division = 0), per-class scores
/// and the confusion matrix (rows: actual, columns: predicted) over every class of the target.
fn classification_metrics(labels: &[Label], actual: &[usize], predicted: &[usize]) -> Value {
    let k = labels.len();
    let mut confusion = vec![vec![0u64; k]; k];
    for (&a, &p) in actual.iter().zip(predicted) {
        confusion[a][p] += 1;
    }
    let n = actual.len().min(predicted.len());
    let correct: u64 = (0..k).map(|c| confusion[c][c]).sum();
    let mut per_class = Vec::new();
    let (mut sp, mut sr, mut sf, mut present) = (0.0, 0.0, 0.0, 0usize);
    for c in 0..k {
        let tp = confusion[c][c] as f64;
        let support: u64 = confusion[c].iter().sum();
        let predicted_c: u64 = (0..k).map(|a| confusion[a][c]).sum();
        if support == 0 && predicted_c == 0 {
            continue;
        }
        let precision = if predicted_c > 0 {
            tp / predicted_c as f64
        } else {
            0.0
        };
        let recall = if support > 0 {
            tp / support as f64
        } else {
            0.0
        };
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        sp += precision;
        sr += recall;
        sf += f1;
        present += 1;
        per_class.push(json!({
            "label": labels[c].to_json(),
            "precision": num(precision),
            "recall": num(recall),
            "f1": num(f1),
            "support": support,
        }));
    }
    let macro_avg = |s: f64| {
        if present > 0 {
            num(s / present as f64)
        } else {
            Value::Null
        }
    };
    json!({
        "accuracy": if n > 0 { num(correct as f64 / n as f64) } else { Value::Null },
        "precision": macro_avg(sp),
        "recall": macro_avg(sr),
        "f1": macro_avg(sf),
        "per_class": per_class,
        "confusion_matrix": {
            "labels": labels.iter().map(Label::to_json).collect::<Vec<_>>(),
            "matrix": confusion,
        },
    })
}

fn class_labels(t: &Table) -> Result<&[Label], TaskError> {
    match &t.target {
        Target::Labels(l) => Ok(l),
        _ => Err(internal("class labels missing")),
    }
}

fn logistic(
    t: &Table,
    train: &[usize],
    test: &[usize],
    p: &ModelParams,
    progress: &ProgressReporter,
) -> Result<Fitted, TaskError> {
    let classes = Classes::of(class_labels(t)?);
    let target = p.target.as_deref().unwrap_or("");
    classes.check_trainable(train, target)?;
    let ds = DatasetBase::new(rows_of(&t.x, train), classes.ids_of(train));
    let x_test = rows_of(&t.x, test);
    let iterations = p.max_iterations.unwrap_or(DEFAULT_LOGISTIC_ITERATIONS);
    let fit_failed = |e: linfa_logistic::error::Error| {
        data_error(format!("logistic regression could not be fitted: {e}"))
    };
    let mut train_ids: Vec<usize> = train.iter().map(|&i| classes.ids[i]).collect();
    train_ids.sort_unstable();
    train_ids.dedup();
    progress.report_with_message(
        30,
        "training",
        format!("{} classes, up to {iterations} iterations", train_ids.len()),
    );
    let (parameters, predicted) = if train_ids.len() == 2 {
        let model = LogisticRegression::default()
            .max_iterations(iterations)
            .fit(&ds)
            .map_err(fit_failed)?;
        check_finite(model.params().iter().chain([model.intercept()].iter()))?;
        let labels = model.labels();
        let parameters = json!({
            "kind": "binary",
            "alpha": 1.0,
            "max_iterations": iterations,
            "positive_class": classes.labels[labels.pos.class].to_json(),
            "negative_class": classes.labels[labels.neg.class].to_json(),
            "coefficients": per_feature(&p.features, model.params().view()),
            "intercept": num(model.intercept()),
        });
        check_cancelled(progress)?;
        progress.report(90, "evaluating");
        (parameters, model.predict(&x_test).to_vec())
    } else {
        let model = MultiLogisticRegression::default()
            .max_iterations(iterations)
            .fit(&ds)
            .map_err(fit_failed)?;
        check_finite(model.params().iter().chain(model.intercept().iter()))?;
        let per_class: Vec<Value> = model
            .classes()
            .iter()
            .enumerate()
            .map(|(j, &c)| {
                json!({
                    "class": classes.labels[c].to_json(),
                    "coefficients": per_feature(&p.features, model.params().column(j)),
                    "intercept": num(model.intercept()[j]),
                })
            })
            .collect();
        let parameters = json!({
            "kind": "multinomial",
            "alpha": 1.0,
            "max_iterations": iterations,
            "classes": model.classes().iter().map(|&c| classes.labels[c].to_json()).collect::<Vec<_>>(),
            "per_class": per_class,
        });
        check_cancelled(progress)?;
        progress.report(90, "evaluating");
        (parameters, model.predict(&x_test).to_vec())
    };
    let actual = classes.ids_of(test).to_vec();
    Ok(Fitted {
        parameters,
        metrics: classification_metrics(&classes.labels, &actual, &predicted),
        predictions: classes.predictions(t, test, &predicted),
    })
}

fn check_finite<'a>(mut values: impl Iterator<Item = &'a f64>) -> Result<(), TaskError> {
    if values.all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(data_error(
            "the model fit produced non-finite parameters (try scaling the features)",
        ))
    }
}

fn tree(
    t: &Table,
    train: &[usize],
    test: &[usize],
    p: &ModelParams,
    progress: &ProgressReporter,
) -> Result<Fitted, TaskError> {
    let classes = Classes::of(class_labels(t)?);
    classes.check_trainable(train, p.target.as_deref().unwrap_or(""))?;
    let x_train = rows_of(&t.x, train);
    let y_train = classes.ids_of(train).to_vec();
    progress.report(30, "training");
    let keep_going = || !progress.is_cancelled();
    let model = ClassificationTree::fit(
        &x_train,
        &y_train,
        classes.labels.len(),
        p.max_depth,
        &keep_going,
    )
    .map_err(|e| match e {
        FitError::Stopped => super::cancelled(),
        FitError::Shape(m) => internal(format!("the decision tree could not be fitted: {m}")),
    })?;
    check_cancelled(progress)?;
    progress.report(90, "evaluating");
    let x_test = rows_of(&t.x, test);
    let predicted: Vec<usize> = x_test
        .rows()
        .into_iter()
        .map(|row| model.predict(row))
        .collect();
    let importances: Map<String, Value> = p
        .features
        .iter()
        .cloned()
        .zip(model.feature_importances.iter().map(|&v| num(v)))
        .collect();
    let actual = classes.ids_of(test).to_vec();
    Ok(Fitted {
        parameters: json!({
            "depth": model.depth,
            "leaves": model.leaves,
            "max_depth": p.max_depth,
            "split_quality": "gini",
            "feature_importances": importances,
        }),
        metrics: classification_metrics(&classes.labels, &actual, &predicted),
        predictions: classes.predictions(t, test, &predicted),
    })
}

// ---------------------------------------------------------------------------------------------
// K-means

fn kmeans(
    t: &Table,
    train: &[usize],
    p: &ModelParams,
    progress: &ProgressReporter,
) -> Result<Fitted, TaskError> {
    let x_train = rows_of(&t.x, train);
    let ds = DatasetBase::from(x_train.clone());
    let iterations = p.max_iterations.unwrap_or(DEFAULT_KMEANS_ITERATIONS);
    // One linfa run per restart, each with its own generator, so progress and cancel can be
    // reported between them; the lowest inertia wins (the first on ties).
    // Given starting centroids, a single run from them (restarts would repeat it exactly).
    let runs = if p.init_centroids.is_some() {
        1
    } else {
        KMEANS_RUNS
    };
    let mut best: Option<(f64, Array2<f64>)> = None;
    for run in 0..runs {
        check_cancelled(progress)?;
        progress.report_with_message(
            (30 + run * 50 / runs) as u8,
            "training",
            format!("k-means run {} of {runs}", run + 1),
        );
        let rng = Xoshiro256Plus::seed_from_u64(p.seed.wrapping_add(run));
        let mut params = KMeans::params_with_rng(p.k, rng)
            .n_runs(1)
            .max_n_iterations(iterations);
        if let Some(init) = &p.init_centroids {
            // Its shape was checked against k and the features when parsing (linfa asserts it).
            params = params.init_method(KMeansInit::Precomputed(init.clone()));
        }
        let model = params
            .fit(&ds)
            .map_err(|e| data_error(format!("k-means could not be fitted: {e}")))?;
        let centroids = model.centroids().clone();
        let (_, inertia) = assign(&x_train, &centroids);
        if best.as_ref().is_none_or(|(b, _)| inertia < *b) {
            best = Some((inertia, centroids));
        }
    }
    let (inertia, centroids) = best.ok_or_else(|| internal("k-means made no run"))?;
    check_finite(centroids.iter())?;
    check_cancelled(progress)?;
    progress.report(90, "evaluating");

    let (clusters, _) = assign(&t.x, &centroids);
    let silhouette = silhouette(&t.x, &clusters, p.k, p.seed);
    let mut sizes = vec![0u64; p.k];
    for &c in &clusters {
        sizes[c] += 1;
    }
    let labels = match &t.target {
        Target::Labels(l) => Some(l),
        _ => None,
    };
    let predictions = clusters
        .iter()
        .enumerate()
        .map(|(i, c)| Prediction {
            row: t.rows[i],
            actual: labels.map(|l| l[i].text()),
            predicted: c.to_string(),
        })
        .collect();
    let centroid_rows: Vec<Value> = centroids
        .rows()
        .into_iter()
        .map(|c| per_feature(&p.features, c))
        .collect();
    Ok(Fitted {
        parameters: json!({
            "k": p.k,
            "runs": runs,
            "init": if p.init_centroids.is_some() { "precomputed" } else { "k-means++" },
            "max_iterations": iterations,
            "centroids": centroid_rows,
        }),
        metrics: json!({
            "inertia": num(inertia),
            "silhouette": silhouette.map_or(Value::Null, num),
            "cluster_sizes": sizes,
        }),
        predictions,
    })
}

fn squared_distance(a: ArrayView1<'_, f64>, b: ArrayView1<'_, f64>) -> f64 {
    a.iter().zip(b.iter()).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Nearest centroid of every row (the first on ties) and the sum of squared distances to it.
fn assign(x: &Array2<f64>, centroids: &Array2<f64>) -> (Vec<usize>, f64) {
    let mut total = 0.0;
    let clusters = x
        .rows()
        .into_iter()
        .map(|row| {
            let mut best = (0, f64::INFINITY);
            for (c, centroid) in centroids.rows().into_iter().enumerate() {
                let d = squared_distance(row, centroid);
                if d < best.1 {
                    best = (c, d);
                }
            }
            total += best.1;
            best.0
        })
        .collect();
    (clusters, total)
}

/// Mean silhouette coefficient (Euclidean) over all rows, or a seeded sample of
/// [`SILHOUETTE_SAMPLE`] of them; `None` unless 2 ≤ clusters present < rows used.
fn silhouette(x: &Array2<f64>, clusters: &[usize], k: usize, seed: u64) -> Option<f64> {
    let mut sample: Vec<usize> = (0..clusters.len()).collect();
    if sample.len() > SILHOUETTE_SAMPLE {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        sample.shuffle(&mut rng);
        sample.truncate(SILHOUETTE_SAMPLE);
        sample.sort_unstable();
    }
    let mut size = vec![0usize; k];
    for &i in &sample {
        size[clusters[i]] += 1;
    }
    let present = size.iter().filter(|&&s| s > 0).count();
    if present < 2 || present >= sample.len() {
        return None;
    }
    let mut total = 0.0;
    let mut sums = vec![0.0; k];
    for &i in &sample {
        sums.iter_mut().for_each(|s| *s = 0.0);
        for &j in &sample {
            if i != j {
                sums[clusters[j]] += squared_distance(x.row(i), x.row(j)).sqrt();
            }
        }
        let own = clusters[i];
        if size[own] < 2 {
            continue; // scikit-learn: a singleton cluster's rows score 0
        }
        let a = sums[own] / (size[own] - 1) as f64;
        let b = (0..k)
            .filter(|&c| c != own && size[c] > 0)
            .map(|c| sums[c] / size[c] as f64)
            .fold(f64::INFINITY, f64::min);
        let denom = a.max(b);
        if denom > 0.0 {
            total += (b - a) / denom;
        }
    }
    Some(total / sample.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::ProgressUpdate;
    use crate::test_support::TempDir;
    use std::fmt::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A deterministic jitter in [-1, 1] (no RNG crate: the data must not depend on one).
    fn jitter(i: usize, salt: f64) -> f64 {
        ((i as f64) * 12.9898 + salt * 78.233).sin()
    }

    fn catalog(dir: &TempDir, csv: &str) -> Catalog {
        let path = dir.write("d.csv", csv);
        crate::test_support::csv_catalog("d", &path)
    }

    /// Run a model; returns the result and the parsed predictions.csv rows.
    fn model(csv: &str, params: Value) -> Result<(Value, Vec<[String; 3]>), TaskError> {
        let dir = TempDir::new();
        let cat = catalog(&dir, csv);
        let scratch = Scratch::at(dir.path().join("scratch"));
        let out = run(&params, &cat, &ProgressReporter::discard(), &scratch)?;
        assert_eq!(out.artifacts.len(), 1);
        let a = &out.artifacts[0];
        assert_eq!(a.name, "predictions.csv");
        assert_eq!(a.content_type, "text/csv");
        let text = std::fs::read_to_string(&a.path).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("row,actual,predicted"));
        let rows = lines
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                assert_eq!(f.len(), 3, "{l}");
                [f[0].to_owned(), f[1].to_owned(), f[2].to_owned()]
            })
            .collect();
        Ok((out.result, rows))
    }

    fn f(v: &Value) -> f64 {
        v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
    }

    // --- data --------------------------------------------------------------------------------

    /// y = 3·x1 − 2·x2 + 5 + tiny noise; a text column; rows 7 and 11 have a missing value.
    fn linear_x(i: usize) -> (f64, f64) {
        (((i * 7) % 50) as f64 / 5.0, ((i * 13) % 37) as f64 / 3.0)
    }
    fn linear_y(i: usize) -> f64 {
        let (x1, x2) = linear_x(i);
        3.0 * x1 - 2.0 * x2 + 5.0 + 0.001 * jitter(i, 1.0)
    }
    fn linear_csv() -> String {
        let mut s = "x1,x2,name,y\n".to_owned();
        for i in 0..200 {
            let (x1, x2) = linear_x(i);
            let y = linear_y(i);
            match i {
                7 => writeln!(s, "{x1},,n{i},{y}").unwrap(),
                11 => writeln!(s, "{x1},{x2},n{i},").unwrap(),
                _ => writeln!(s, "{x1},{x2},n{i},{y}").unwrap(),
            }
        }
        s
    }

    /// Blobs of `centers`, `per` rows each, labelled by `label(c)`, points within ±1 of the center.
    fn blobs_csv(centers: &[(f64, f64)], per: usize, label: impl Fn(usize) -> String) -> String {
        let mut s = "a,b,class\n".to_owned();
        // Interleaved, so the dataset order does not follow the classes.
        for i in 0..per {
            for (c, (cx, cy)) in centers.iter().enumerate() {
                let n = i * centers.len() + c;
                let x = cx + jitter(n, 2.0);
                let y = cy + jitter(n, 3.0);
                writeln!(s, "{x},{y},{}", label(c)).unwrap();
            }
        }
        s
    }

    /// class = "hi" when x > 5 else "lo"; x is never in (4, 6); z is noise.
    fn tree_csv() -> String {
        let mut s = "x,z,class\n".to_owned();
        for i in 0..150 {
            let base = (i % 50) as f64 * 0.08; // 0 .. 3.92
            let x = if i % 2 == 0 { base } else { 6.0 + base };
            let z = jitter(i, 4.0) * 10.0;
            let class = if x > 5.0 { "hi" } else { "lo" };
            writeln!(s, "{x},{z},{class}").unwrap();
        }
        s
    }

    // --- linear regression -------------------------------------------------------------------

    #[test]
    fn linear_regression_recovers_the_coefficients() {
        let (r, preds) = model(
            &linear_csv(),
            json!({"dataset": "d", "model": "linear_regression", "features": ["x1", "x2"], "target": "y"}),
        )
        .unwrap();
        assert_eq!(r["model"], "linear_regression");
        assert_eq!(r["dataset"], "d");
        assert_eq!(r["features"], json!(["x1", "x2"]));
        assert_eq!(r["target"], "y");
        assert_eq!(r["dropped_rows"], 2);
        // 198 usable rows: ceil(198 · 0.2) = 40 test rows.
        assert_eq!(r["n_test"], 40);
        assert_eq!(r["n_train"], 158);
        assert_eq!(r["seed"], 42);
        let c = &r["parameters"]["coefficients"];
        assert!((f(&c["x1"]) - 3.0).abs() < 1e-2, "{c}");
        assert!((f(&c["x2"]) + 2.0).abs() < 1e-2, "{c}");
        assert!((f(&r["parameters"]["intercept"]) - 5.0).abs() < 1e-2, "{r}");
        let m = &r["metrics"];
        assert!(f(&m["r2"]) > 0.99, "{m}");

        // The artifact: test rows in dataset order, actual values are the generated ones.
        assert_eq!(preds.len(), 40);
        let mut last = None;
        let (mut actual, mut predicted) = (Vec::new(), Vec::new());
        for [row, a, p] in &preds {
            let row: usize = row.parse().unwrap();
            assert!(last < Some(row), "rows in order");
            last = Some(row);
            assert!(row != 7 && row != 11, "dropped rows are not predicted");
            let a: f64 = a.parse().unwrap();
            let p: f64 = p.parse().unwrap();
            assert!((a - linear_y(row)).abs() < 1e-9, "row {row}: {a}");
            let (x1, x2) = linear_x(row);
            assert!(
                (p - (3.0 * x1 - 2.0 * x2 + 5.0)).abs() < 1e-2,
                "row {row}: {p}"
            );
            actual.push(a);
            predicted.push(p);
        }
        // Metrics recomputed from the artifact with textbook formulas.
        let n = actual.len() as f64;
        let mean = actual.iter().sum::<f64>() / n;
        let ss_res: f64 = actual
            .iter()
            .zip(&predicted)
            .map(|(a, p)| (a - p).powi(2))
            .sum();
        let ss_tot: f64 = actual.iter().map(|a| (a - mean).powi(2)).sum();
        let mae = actual
            .iter()
            .zip(&predicted)
            .map(|(a, p)| (a - p).abs())
            .sum::<f64>()
            / n;
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * (1.0 + y.abs());
        assert!(close(f(&m["r2"]), 1.0 - ss_res / ss_tot), "{m}");
        assert!(close(f(&m["rmse"]), (ss_res / n).sqrt()), "{m}");
        assert!(close(f(&m["mae"]), mae), "{m}");
        assert!(f(&m["rmse"]) < 0.01 && f(&m["mae"]) < 0.01, "{m}");
    }

    #[test]
    fn the_seed_decides_the_split() {
        let params = |seed: u64| json!({"dataset": "d", "model": "linear_regression", "features": ["x1"], "target": "y", "seed": seed, "test_fraction": 0.5});
        let a = model(&linear_csv(), params(7)).unwrap();
        let b = model(&linear_csv(), params(7)).unwrap();
        assert_eq!(a, b, "same seed, same result and predictions");
        let c = model(&linear_csv(), params(8)).unwrap();
        assert_ne!(a.1, c.1, "another seed, another split");
        // Only x1 and y are used, so row 7 (no x2) counts: 199 rows, ceil(99.5) = 100 test rows.
        assert_eq!(a.0["dropped_rows"], 1);
        assert_eq!(a.0["n_test"], 100);
    }

    #[test]
    fn split_is_a_seeded_partition() {
        let (train, test) = split(10, 0.25, 1);
        assert_eq!(test.len(), 3);
        assert_eq!(train.len(), 7);
        let mut all: Vec<usize> = train.iter().chain(&test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert!(test.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(split(10, 0.25, 1), (train, test));
        assert_eq!(split(5, 0.0, 3).1, Vec::<usize>::new());
    }

    // --- logistic regression -----------------------------------------------------------------

    #[test]
    fn binary_logistic_regression_separates_two_blobs() {
        let csv = blobs_csv(&[(0.0, 0.0), (6.0, 6.0)], 100, |c| ["no", "yes"][c].into());
        let (r, preds) = model(
            &csv,
            json!({"dataset": "d", "model": "logistic_regression", "features": ["a", "b"], "target": "class"}),
        )
        .unwrap();
        assert_eq!(r["n_test"], 40);
        let p = &r["parameters"];
        assert_eq!(p["kind"], "binary");
        assert!(
            p["coefficients"]["a"].is_number() && p["intercept"].is_number(),
            "{p}"
        );
        let m = &r["metrics"];
        assert!(f(&m["accuracy"]) >= 0.95, "{m}");
        let cm = &m["confusion_matrix"];
        assert_eq!(cm["labels"], json!(["no", "yes"]));
        let total: u64 = cm["matrix"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap())
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(total, 40);
        // Accuracy and the diagonal agree with the artifact.
        let hits = preds.iter().filter(|[_, a, p]| a == p).count();
        assert!((f(&m["accuracy"]) - hits as f64 / 40.0).abs() < 1e-12);
        for [row, actual, _] in &preds {
            // Rows alternate between the blobs: even rows are "no".
            let row: usize = row.parse().unwrap();
            assert_eq!(actual, ["no", "yes"][row % 2]);
        }
    }

    #[test]
    fn multinomial_logistic_regression_with_integer_classes() {
        let csv = blobs_csv(&[(0.0, 0.0), (6.0, 0.0), (0.0, 6.0)], 60, |c| {
            (c + 1).to_string()
        });
        let (r, preds) = model(
            &csv,
            json!({"dataset": "d", "model": "logistic_regression", "features": ["a", "b"], "target": "class", "max_iterations": 200}),
        )
        .unwrap();
        assert_eq!(r["n_test"], 36);
        let p = &r["parameters"];
        assert_eq!(p["kind"], "multinomial");
        assert_eq!(p["classes"], json!([1, 2, 3]));
        assert_eq!(p["per_class"].as_array().unwrap().len(), 3);
        assert_eq!(p["max_iterations"], 200);
        let m = &r["metrics"];
        assert!(f(&m["accuracy"]) >= 0.95, "{m}");
        assert_eq!(m["confusion_matrix"]["labels"], json!([1, 2, 3]));
        let matrix: Vec<Vec<u64>> =
            serde_json::from_value(m["confusion_matrix"]["matrix"].clone()).unwrap();
        assert_eq!(matrix.iter().flatten().sum::<u64>(), 36);
        // The confusion matrix is the artifact's (actual, predicted) pairs counted.
        let mut counted = vec![vec![0u64; 3]; 3];
        for [_, a, p] in &preds {
            let a: usize = a.parse().unwrap();
            let p: usize = p.parse().unwrap();
            counted[a - 1][p - 1] += 1;
        }
        assert_eq!(matrix, counted);
    }

    #[test]
    fn classification_metrics_follow_the_macro_definitions() {
        // actual:    0 0 0 1 1 2
        // predicted: 0 0 1 1 2 2  → per class p = 1, 1/2, 1/2; r = 2/3, 1/2, 1.
        let labels = [
            Label::Text("a".into()),
            Label::Text("b".into()),
            Label::Text("c".into()),
            Label::Text("d".into()),
        ];
        let m = classification_metrics(&labels, &[0, 0, 0, 1, 1, 2], &[0, 0, 1, 1, 2, 2]);
        let p = [1.0, 0.5, 0.5];
        let r = [2.0 / 3.0, 0.5, 1.0];
        let f1: Vec<f64> = p
            .iter()
            .zip(&r)
            .map(|(p, r)| 2.0 * p * r / (p + r))
            .collect();
        let close = |v: &Value, x: f64| (f(v) - x).abs() < 1e-12;
        assert!(close(&m["accuracy"], 4.0 / 6.0), "{m}");
        assert!(close(&m["precision"], p.iter().sum::<f64>() / 3.0), "{m}");
        assert!(close(&m["recall"], r.iter().sum::<f64>() / 3.0), "{m}");
        assert!(close(&m["f1"], f1.iter().sum::<f64>() / 3.0), "{m}");
        // "d" never occurs: not averaged, but still a row and column of the matrix.
        assert_eq!(m["per_class"].as_array().unwrap().len(), 3);
        assert_eq!(
            m["confusion_matrix"]["matrix"],
            json!([[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
        );
    }

    // --- k-means -----------------------------------------------------------------------------

    fn kmeans_csv() -> String {
        blobs_csv(&[(0.0, 0.0), (10.0, 10.0), (20.0, 0.0)], 60, |c| {
            format!("g{c}")
        })
    }

    #[test]
    fn kmeans_finds_three_clusters() {
        let csv = kmeans_csv();
        let params = json!({"dataset": "d", "model": "kmeans", "features": ["a", "b"], "target": "class", "k": 3});
        let (r, preds) = model(&csv, params.clone()).unwrap();
        assert_eq!(r["n_train"], 180);
        assert_eq!(r["n_test"], 0);
        assert_eq!(r["test_fraction"], 0.0);
        // True centers: the mean of each generated blob.
        let mut truth = [(0.0, 0.0); 3];
        for line in csv.lines().skip(1) {
            let v: Vec<&str> = line.split(',').collect();
            let c: usize = v[2][1..].parse().unwrap();
            truth[c].0 += v[0].parse::<f64>().unwrap() / 60.0;
            truth[c].1 += v[1].parse::<f64>().unwrap() / 60.0;
        }
        let mut centroids: Vec<(f64, f64)> = r["parameters"]["centroids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (f(&c["a"]), f(&c["b"])))
            .collect();
        centroids.sort_by(|x, y| x.0.total_cmp(&y.0));
        assert_eq!(centroids.len(), 3);
        for (c, t) in centroids.iter().zip(&truth) {
            assert!(
                (c.0 - t.0).abs() < 0.05 && (c.1 - t.1).abs() < 0.05,
                "{c:?} vs {t:?}"
            );
        }
        let m = &r["metrics"];
        assert!(f(&m["silhouette"]) > 0.7, "{m}");
        assert_eq!(
            m["cluster_sizes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .sum::<u64>(),
            180
        );
        // Inertia: squared distances of every row to its nearest centroid, recomputed here.
        let mut inertia = 0.0;
        for line in csv.lines().skip(1) {
            let v: Vec<f64> = line
                .split(',')
                .take(2)
                .map(|x| x.parse().unwrap())
                .collect();
            inertia += centroids
                .iter()
                .map(|c| (v[0] - c.0).powi(2) + (v[1] - c.1).powi(2))
                .fold(f64::INFINITY, f64::min);
        }
        assert!(
            (f(&m["inertia"]) - inertia).abs() < 1e-6 * inertia,
            "{m} vs {inertia}"
        );

        // Every row gets a cluster; each true group lands in one cluster, the groups in three.
        assert_eq!(preds.len(), 180);
        let mut cluster_of = HashMap::new();
        for [row, actual, predicted] in &preds {
            let row: usize = row.parse().unwrap();
            assert_eq!(actual, &format!("g{}", row % 3));
            let seen = cluster_of
                .entry(actual.clone())
                .or_insert_with(|| predicted.clone());
            assert_eq!(seen, predicted, "row {row}");
        }
        let mut clusters: Vec<&String> = cluster_of.values().collect();
        clusters.sort();
        clusters.dedup();
        assert_eq!(clusters.len(), 3);

        // Same seed, identical result; the artifact too.
        assert_eq!(model(&csv, params).unwrap(), (r, preds));
    }

    #[test]
    fn silhouette_matches_the_definition() {
        // 1-D: {0, 1} and {10, 11}.
        let x = Array2::from_shape_vec((4, 1), vec![0.0, 1.0, 10.0, 11.0]).unwrap();
        let s = silhouette(&x, &[0, 0, 1, 1], 2, 1).unwrap();
        // Point 0: a = 1, b = (10 + 11) / 2; point 1: a = 1, b = (9 + 10) / 2; symmetric.
        let s0 = (10.5 - 1.0) / 10.5;
        let s1 = (9.5 - 1.0) / 9.5;
        assert!((s - (s0 + s1) / 2.0).abs() < 1e-12, "{s}");
        assert_eq!(silhouette(&x, &[0, 0, 0, 0], 2, 1), None);
        // A singleton cluster scores 0 for its row.
        let s = silhouette(&x, &[0, 0, 0, 1], 2, 1).unwrap();
        assert!(s.is_finite());
    }

    #[test]
    fn kmeans_with_a_test_split_and_no_target() {
        let (r, preds) = model(
            &kmeans_csv(),
            json!({"dataset": "d", "model": "kmeans", "features": ["a", "b"], "test_fraction": 0.5, "k": 2, "seed": 3}),
        )
        .unwrap();
        assert_eq!(r["n_train"], 90);
        assert_eq!(r["n_test"], 90);
        assert_eq!(r["target"], Value::Null);
        assert_eq!(r["parameters"]["centroids"].as_array().unwrap().len(), 2);
        assert_eq!(preds.len(), 180, "every row gets a cluster");
        assert!(preds
            .iter()
            .all(|[_, a, p]| a.is_empty() && (p == "0" || p == "1")));
    }

    // --- decision tree -----------------------------------------------------------------------

    #[test]
    fn decision_tree_learns_an_axis_aligned_rule() {
        let params = json!({"dataset": "d", "model": "decision_tree", "features": ["x", "z"], "target": "class", "max_depth": 4});
        let (r, preds) = model(&tree_csv(), params.clone()).unwrap();
        let m = &r["metrics"];
        assert_eq!(f(&m["accuracy"]), 1.0, "{m}");
        assert_eq!(f(&m["f1"]), 1.0, "{m}");
        let p = &r["parameters"];
        assert_eq!(p["depth"], 1, "{p}");
        assert_eq!(p["max_depth"], 4);
        assert_eq!(f(&p["feature_importances"]["x"]), 1.0, "{p}");
        assert_eq!(f(&p["feature_importances"]["z"]), 0.0, "{p}");
        assert_eq!(preds.len(), 30);
        for [row, actual, predicted] in &preds {
            let row: usize = row.parse().unwrap();
            let expected = ["lo", "hi"][row % 2];
            assert_eq!((actual.as_str(), predicted.as_str()), (expected, expected));
        }
        assert_eq!(model(&tree_csv(), params).unwrap(), (r, preds));
    }

    #[test]
    fn tree_leaves_vote_deterministically() {
        // Identical features, conflicting labels: one leaf with a 2–2 tie → the smaller label.
        let labels: Vec<Label> = ["b", "a", "b", "a", "b"]
            .iter()
            .map(|l| Label::Text((*l).into()))
            .collect();
        let table = Table {
            rows: (0..5).collect(),
            x: Array2::from_elem((5, 1), 1.0),
            target: Target::Labels(labels),
            is_test: None,
            dropped: 0,
        };
        let p = ModelParams::parse(&json!({"dataset": "d", "model": "decision_tree", "features": ["x"], "target": "class"})).unwrap();
        // linfa-trees' pick varied with each hash map's random state; ours must not.
        for _ in 0..20 {
            let fitted = tree(
                &table,
                &[0, 1, 2, 3],
                &[4],
                &p,
                &ProgressReporter::discard(),
            )
            .unwrap();
            assert_eq!(fitted.parameters["depth"], 0);
            assert_eq!(fitted.predictions[0].predicted, "a");
            assert_eq!(fitted.predictions[0].actual.as_deref(), Some("b"));
        }
    }

    /// Three classes, five features with many repeated values, so candidate splits nearly tie:
    /// linfa-trees 0.8 scored them in f32 summed in hash-map order, and its tree and feature
    /// importances changed between runs. The whole result must be the same every time.
    #[test]
    fn decision_tree_results_repeat_exactly() {
        let mut csv = "a,b,c,d,e,class\n".to_owned();
        for i in 0..240usize {
            let class = (i * 7 + i / 11) % 3;
            let v = |m: usize, s: usize| ((i * m + s + class * 3) % 13) as f64 / 4.0;
            writeln!(
                csv,
                "{},{},{},{},{},k{class}",
                v(3, 1),
                v(5, 2),
                v(7, 0),
                v(2, 5),
                ((i % 4) as f64)
            )
            .unwrap();
        }
        let params = json!({"dataset": "d", "model": "decision_tree", "features": ["a", "b", "c", "d", "e"], "target": "class", "max_depth": 6, "test_fraction": 0.3});
        let first = model(&csv, params.clone()).unwrap();
        let importances = first.0["parameters"]["feature_importances"].clone();
        let total: f64 = importances.as_object().unwrap().values().map(f).sum();
        assert!((total - 1.0).abs() < 1e-12, "{importances}");
        assert!(
            first.0["parameters"]["leaves"].as_u64().unwrap() > 4,
            "{}",
            first.0
        );
        for _ in 0..10 {
            assert_eq!(model(&csv, params.clone()).unwrap(), first);
        }
    }

    // --- split_column and init_centroids ---------------------------------------------------

    /// `linear_csv` plus three marks of the same split (test rows: `i % 4 == 0`), as 0/1, as
    /// booleans and as text; row 7 (dropped: missing x2) has no marks at all.
    fn split_csv() -> String {
        let mut s = "x1,x2,y,as_int,as_bool,as_text\n".to_owned();
        for i in 0..120 {
            let (x1, x2) = linear_x(i);
            let y = linear_y(i);
            let test = i % 4 == 0;
            let text = match i % 3 {
                0 => test.to_string().to_uppercase(),
                1 => test.to_string(),
                _ => u8::from(test).to_string(),
            };
            if i == 7 {
                writeln!(s, "{x1},,{y},,,").unwrap();
            } else {
                writeln!(s, "{x1},{x2},{y},{},{test},{text}", u8::from(test)).unwrap();
            }
        }
        s
    }

    #[test]
    fn split_column_marks_the_test_rows() {
        let csv = split_csv();
        let mut results = Vec::new();
        for column in ["as_int", "as_bool", "as_text"] {
            let (r, preds) = model(
                &csv,
                json!({"dataset": "d", "model": "linear_regression", "features": ["x1", "x2"], "target": "y", "split_column": column}),
            )
            .unwrap_or_else(|e| panic!("{column}: {e:?}"));
            assert_eq!(r["split_column"], column);
            assert_eq!(r["test_fraction"], Value::Null);
            assert_eq!(r["dropped_rows"], 1);
            assert_eq!(r["n_test"], 30, "{column}");
            assert_eq!(r["n_train"], 89, "{column}");
            let rows: Vec<usize> = preds.iter().map(|p| p[0].parse().unwrap()).collect();
            let expected: Vec<usize> = (0..120).filter(|i| i % 4 == 0).collect();
            assert_eq!(
                rows, expected,
                "{column}: the marked rows are the test rows"
            );
            let mut r = r;
            r["split_column"] = Value::Null;
            results.push((r, preds));
        }
        // Three spellings of one split: one result.
        assert_eq!(results[0], results[1]);
        assert_eq!(results[0], results[2]);
        // The seed does not matter with a split column.
        let (r, _) = model(
            &csv,
            json!({"dataset": "d", "model": "linear_regression", "features": ["x1", "x2"], "target": "y", "split_column": "as_int", "seed": 9}),
        )
        .unwrap();
        assert_eq!(r["parameters"], results[0].0["parameters"]);
        // Without it, the seeded random split as before.
        let (r, _) = model(
            &csv,
            json!({"dataset": "d", "model": "linear_regression", "features": ["x1", "x2"], "target": "y"}),
        )
        .unwrap();
        assert_eq!(r["split_column"], Value::Null);
        assert_eq!(r["test_fraction"], 0.2);
        assert_eq!(r["n_test"], 24);

        // k-means fits the training rows only, and still assigns every row a cluster.
        let (r, preds) = model(
            &csv,
            json!({"dataset": "d", "model": "kmeans", "features": ["x1", "x2"], "split_column": "as_bool", "k": 2}),
        )
        .unwrap();
        assert_eq!(
            (r["n_train"].as_u64(), r["n_test"].as_u64()),
            (Some(89), Some(30))
        );
        assert_eq!(preds.len(), 119);
    }

    #[test]
    fn split_column_errors_name_the_field() {
        let csv = split_csv();
        let base = json!({"dataset": "d", "model": "linear_regression", "features": ["x1"], "target": "y", "split_column": "as_int"});
        let with = |k: &str, v: Value| {
            let mut p = base.clone();
            p[k] = v;
            p
        };
        let invalid_cases = [
            (
                with("test_fraction", json!(0.3)),
                "params.split_column and params.test_fraction exclude each other",
            ),
            (
                with("features", json!(["x1", "as_int"])),
                "params.split_column `as_int` is also a feature or the target",
            ),
            (
                with("target", json!("as_int")),
                "params.split_column `as_int` is also a feature or the target",
            ),
            (
                with("split_column", json!("nope")),
                "params.split_column: column `nope` is not in dataset `d`",
            ),
            (
                with("split_column", json!(3)),
                "params.split_column must be a non-empty string",
            ),
        ];
        for (params, expected) in invalid_cases {
            let e = err(&csv, params.clone());
            assert_eq!(e.code, failure::INVALID_PARAMS, "{params}: {e:?}");
            assert!(e.message.contains(expected), "{params}: {}", e.message);
        }

        // A numeric column is accepted, but only with 0/1 in it.
        let e = err(&csv, with("split_column", json!("x2")));
        assert_eq!(e.code, failure::DATA_ERROR, "{e:?}");
        assert!(
            e.message.contains("params.split_column: column `x2` holds"),
            "{}",
            e.message
        );

        // Values other than true/1, false/0 in a usable row are data errors naming row and field.
        let mut bad = "x,y,mark\n".to_owned();
        for i in 0..20 {
            let mark = match i {
                5 => "2".to_owned(),
                _ => (i % 2).to_string(),
            };
            writeln!(bad, "{i},{},{mark}", 2 * i).unwrap();
        }
        let p = json!({"dataset": "d", "model": "linear_regression", "features": ["x"], "target": "y", "split_column": "mark"});
        let e = err(&bad, p.clone());
        assert_eq!(e.code, failure::DATA_ERROR, "{e:?}");
        assert!(
            e.message
                .contains("params.split_column: column `mark` holds 2.0 in row 5"),
            "{}",
            e.message
        );
        for (value, shown) in [("yes", "\"yes\""), ("", "null"), ("0.5", "\"0.5\"")] {
            let text = bad.replacen("\n5,10,2\n", &format!("\n5,10,{value}\n"), 1);
            let text = text.replacen("\n6,12,0\n", "\n6,12,false\n", 1);
            let e = err(&text, p.clone());
            assert_eq!(e.code, failure::DATA_ERROR, "{value}: {e:?}");
            assert!(
                e.message.contains(&format!("holds {shown} in row 5")),
                "{value}: {}",
                e.message
            );
        }
        // A split that leaves too few test rows.
        let few = bad
            .replace(",1\n", ",0\n")
            .replacen("\n5,10,2\n", "\n5,10,1\n", 1);
        let e = err(&few, p);
        assert_eq!(e.code, failure::DATA_ERROR, "{e:?}");
        assert!(e.message.contains("1 test rows"), "{}", e.message);
    }

    /// Lloyd's algorithm from `init` until no centroid moves, written out plainly.
    fn lloyd(x: &[(f64, f64)], init: &[(f64, f64)]) -> Vec<(f64, f64)> {
        let mut c = init.to_vec();
        for _ in 0..100 {
            let mut sums = vec![(0.0, 0.0, 0usize); c.len()];
            for p in x {
                let d = |q: &(f64, f64)| (p.0 - q.0).powi(2) + (p.1 - q.1).powi(2);
                let nearest = (0..c.len())
                    .min_by(|&a, &b| d(&c[a]).total_cmp(&d(&c[b])))
                    .unwrap();
                sums[nearest].0 += p.0;
                sums[nearest].1 += p.1;
                sums[nearest].2 += 1;
            }
            let next: Vec<(f64, f64)> = sums
                .iter()
                .zip(&c)
                .map(|(s, old)| {
                    if s.2 == 0 {
                        *old
                    } else {
                        (s.0 / s.2 as f64, s.1 / s.2 as f64)
                    }
                })
                .collect();
            if next == c {
                break;
            }
            c = next;
        }
        c
    }

    #[test]
    fn init_centroids_start_a_single_k_means_run() {
        let csv = kmeans_csv();
        let points: Vec<(f64, f64)> = csv
            .lines()
            .skip(1)
            .map(|l| {
                let v: Vec<f64> = l.split(',').take(2).map(|x| x.parse().unwrap()).collect();
                (v[0], v[1])
            })
            .collect();
        // A poor start (two centroids in the first blob, one between the others) ends in the
        // local minimum Lloyd reaches from it, not where the best seeded k-means++ run would.
        let init = [(-0.5, 0.0), (0.5, 0.0), (15.0, 5.0)];
        let params = json!({"dataset": "d", "model": "kmeans", "features": ["a", "b"], "k": 3,
                            "init_centroids": [[-0.5, 0.0], [0.5, 0.0], [15.0, 5.0]]});
        let (r, _) = model(&csv, params.clone()).unwrap();
        let p = &r["parameters"];
        assert_eq!(p["runs"], 1);
        assert_eq!(p["init"], "precomputed");
        let ours: Vec<(f64, f64)> = p["centroids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (f(&c["a"]), f(&c["b"])))
            .collect();
        // linfa stops once the centroids move less than 1e-4 in total, so the last bits of
        // Lloyd's fixed point may be missing.
        for (o, t) in ours.iter().zip(lloyd(&points, &init)) {
            assert!(
                (o.0 - t.0).abs() < 1e-4 && (o.1 - t.1).abs() < 1e-4,
                "{ours:?} vs {t:?}"
            );
        }
        let (seeded, _) = model(
            &csv,
            json!({"dataset": "d", "model": "kmeans", "features": ["a", "b"], "k": 3}),
        )
        .unwrap();
        assert_eq!(seeded["parameters"]["init"], "k-means++");
        assert_eq!(seeded["parameters"]["runs"], KMEANS_RUNS);
        assert!(
            f(&r["metrics"]["inertia"]) > 2.0 * f(&seeded["metrics"]["inertia"]),
            "{} vs {}",
            r["metrics"],
            seeded["metrics"]
        );
        // Same start, same result.
        assert_eq!(model(&csv, params).unwrap().0, r);
    }

    #[test]
    fn init_centroids_errors_name_the_field() {
        let csv = kmeans_csv();
        let km = |extra: Value| {
            let mut p = json!({"dataset": "d", "model": "kmeans", "features": ["a", "b"]});
            p.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            p
        };
        let cases = [
            (
                km(json!({"init_centroids": [[0, 0], [1, 1]]})),
                "params.init_centroids holds 2 centroids but params.k is 3",
            ),
            (
                km(json!({"k": 2, "init_centroids": [[0, 0], [1, 1], [2, 2]]})),
                "params.init_centroids holds 3 centroids but params.k is 2",
            ),
            (
                km(json!({"k": 2, "init_centroids": [[0, 0], [1, 1, 1]]})),
                "params.init_centroids[1] holds 3 numbers but params.features lists 2 columns",
            ),
            (
                km(json!({"k": 2, "init_centroids": [[0, 0], 1]})),
                "params.init_centroids[1] must be an array of 2 numbers",
            ),
            (
                km(json!({"k": 2, "init_centroids": [[0, "x"], [1, 1]]})),
                "params.init_centroids[0][1] must be a finite number (got \"x\")",
            ),
            (
                km(json!({"k": 1, "init_centroids": [[0, null]]})),
                "params.init_centroids[0][1] must be a finite number",
            ),
            (
                km(json!({"init_centroids": "centre"})),
                "params.init_centroids must be an array of 3 centroids",
            ),
            (
                json!({"dataset": "d", "model": "decision_tree", "features": ["a"], "target": "class", "init_centroids": [[0]]}),
                "params.init_centroids applies to model kmeans only",
            ),
        ];
        for (params, expected) in cases {
            let e = err(&csv, params.clone());
            assert_eq!(e.code, failure::INVALID_PARAMS, "{params}: {e:?}");
            assert!(e.message.contains(expected), "{params}: {}", e.message);
        }
    }

    // --- errors ------------------------------------------------------------------------------

    fn err(csv: &str, params: Value) -> TaskError {
        model(csv, params).unwrap_err()
    }

    #[test]
    fn bad_params_name_the_field() {
        let csv = linear_csv();
        let base = json!({"dataset": "d", "model": "linear_regression", "features": ["x1"], "target": "y"});
        let with = |k: &str, v: Value| {
            let mut p = base.clone();
            p[k] = v;
            p
        };
        let without = |k: &str| {
            let mut p = base.clone();
            p.as_object_mut().unwrap().remove(k);
            p
        };
        let cases: Vec<(Value, &str)> = vec![
            (
                with("features", json!(["x1", "name"])),
                "params.features[1]: column `name` is str, not numeric",
            ),
            (
                with("features", json!(["nope"])),
                "params.features[0]: column `nope` is not in dataset `d`",
            ),
            (
                with("features", json!([])),
                "params.features must list at least one column",
            ),
            (without("features"), "params.features is required"),
            (
                without("target"),
                "params.target is required for model linear_regression",
            ),
            (
                with("target", json!("name")),
                "params.target: column `name` is str, not numeric",
            ),
            (
                with("target", json!("x1")),
                "params.target `x1` is also listed in params.features",
            ),
            (
                with("target", json!("zz")),
                "params.target: column `zz` is not in dataset `d`",
            ),
            (
                with("model", json!("svm")),
                "params.model `svm` is not a known model",
            ),
            (without("model"), "params.model is required"),
            (
                with("test_fraction", json!(0)),
                "params.test_fraction must be a number with 0 < f < 1",
            ),
            (with("test_fraction", json!(1.0)), "params.test_fraction"),
            (with("test_fraction", json!(-0.1)), "params.test_fraction"),
            (with("test_fraction", json!("half")), "params.test_fraction"),
            (with("seed", json!(-1)), "params.seed"),
            (with("k", json!(3)), "params.k applies to model kmeans only"),
            (
                with("max_depth", json!(3)),
                "params.max_depth applies to model decision_tree only",
            ),
            (
                with("max_iterations", json!(3)),
                "params.max_iterations applies to models",
            ),
            (with("colour", json!(3)), "params.colour is not a parameter"),
        ];
        for (params, expected) in cases {
            let e = err(&csv, params.clone());
            assert_eq!(e.code, failure::INVALID_PARAMS, "{params}: {e:?}");
            assert!(e.message.contains(expected), "{params}: {}", e.message);
        }

        let blobs = kmeans_csv();
        let km = |extra: Value| {
            let mut p = json!({"dataset": "d", "model": "kmeans", "features": ["a", "b"]});
            p.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            p
        };
        let e = err(&blobs, km(json!({"k": 500})));
        assert_eq!(e.code, failure::INVALID_PARAMS);
        assert!(
            e.message
                .contains("params.k (500) is more than the 180 rows"),
            "{}",
            e.message
        );
        let e = err(&blobs, km(json!({"k": 0})));
        assert!(e.message.contains("params.k"), "{}", e.message);
        let e = err(&blobs, km(json!({"test_fraction": 1})));
        assert!(e.message.contains("0 ≤ f < 1"), "{}", e.message);
        let e = err(&blobs, km(json!({"target": "a"})));
        assert!(e.message.contains("also listed"), "{}", e.message);

        let e = err(
            &blobs,
            json!({"dataset": "d", "model": "logistic_regression", "features": ["a"], "target": "b"}),
        );
        assert_eq!(e.code, failure::INVALID_PARAMS);
        assert!(
            e.message
                .contains("params.target: column `b` is f64; a class column"),
            "{}",
            e.message
        );

        let e = err(
            &blobs,
            json!({"dataset": "nope", "model": "kmeans", "features": ["a"]}),
        );
        assert_eq!(e.code, failure::UNKNOWN_DATASET);
    }

    #[test]
    fn too_few_rows_are_data_errors() {
        // Three usable rows (two more have nulls): a 0.2 split leaves 2 + 1.
        let csv = "x,y,c\n1,2,a\n2,4,b\n3,,a\n,1,b\n4,8,a\n";
        let e = err(
            csv,
            json!({"dataset": "d", "model": "linear_regression", "features": ["x"], "target": "y"}),
        );
        assert_eq!(e.code, failure::DATA_ERROR, "{e:?}");
        assert!(e.message.contains("too few rows"), "{}", e.message);
        assert!(e.message.contains("2 dropped"), "{}", e.message);
        // More features than training rows.
        let mut csv = "a,b,c,d,y\n".to_owned();
        for i in 0..5 {
            writeln!(csv, "{i},{},{},{},{i}", i * i, i + 7, i % 2).unwrap();
        }
        let e = err(
            &csv,
            json!({"dataset": "d", "model": "linear_regression", "features": ["a", "b", "c", "d"], "target": "y", "test_fraction": 0.4}),
        );
        assert_eq!(e.code, failure::DATA_ERROR, "{e:?}");
        // A single class in training.
        let mut csv = "x,c\n".to_owned();
        for i in 0..20 {
            writeln!(csv, "{i},same").unwrap();
        }
        for m in ["logistic_regression", "decision_tree"] {
            let e = err(
                &csv,
                json!({"dataset": "d", "model": m, "features": ["x"], "target": "c"}),
            );
            assert_eq!(e.code, failure::DATA_ERROR, "{m}: {e:?}");
            assert!(e.message.contains("single class"), "{}", e.message);
        }
        // Collinear features: a typed error, not a panic or NaN coefficients.
        let mut csv = "a,b,y\n".to_owned();
        for i in 0..30 {
            writeln!(csv, "{i},{},{}", 2 * i, 3 * i + 1).unwrap();
        }
        let r = model(
            &csv,
            json!({"dataset": "d", "model": "linear_regression", "features": ["a", "b"], "target": "y"}),
        );
        match r {
            Err(e) => assert_eq!(e.code, failure::DATA_ERROR, "{e:?}"),
            Ok((r, _)) => {
                // linfa's QR solves it with one of the many exact solutions (a + 2b = 3).
                assert!(f(&r["metrics"]["r2"]) > 0.999, "{r}");
                let c = &r["parameters"]["coefficients"];
                assert!((f(&c["a"]) + 2.0 * f(&c["b"]) - 3.0).abs() < 1e-6, "{r}");
            }
        }
    }

    #[test]
    fn progress_stages_and_cancel() {
        let dir = TempDir::new();
        let cat = catalog(&dir, &linear_csv());
        let params = json!({"dataset": "d", "model": "linear_regression", "features": ["x1", "x2"], "target": "y"});
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProgressUpdate>();
        let reporter = ProgressReporter::new(tx, Arc::new(AtomicBool::new(false)));
        run(
            &params,
            &cat,
            &reporter,
            &Scratch::at(dir.path().join("s1")),
        )
        .unwrap();
        let mut seen = Vec::new();
        while let Ok(u) = rx.try_recv() {
            seen.push((u.percent, u.stage.unwrap()));
        }
        let stages: Vec<(u8, &str)> = seen.iter().map(|(p, s)| (*p, s.as_str())).collect();
        assert_eq!(
            stages,
            [
                (10, "loading"),
                (25, "preparing"),
                (30, "training"),
                (90, "evaluating"),
                (95, "writing")
            ]
        );

        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel::<ProgressUpdate>();
        let cancelled = ProgressReporter::new(tx, Arc::new(AtomicBool::new(false)));
        cancelled.cancel_flag().store(true, Ordering::Relaxed);
        let e = run(
            &params,
            &cat,
            &cancelled,
            &Scratch::at(dir.path().join("s2")),
        )
        .unwrap_err();
        assert_eq!(e.code, failure::CANCELLED);

        // k-means reports each run.
        let cat = catalog(&dir, &kmeans_csv());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProgressUpdate>();
        let reporter = ProgressReporter::new(tx, Arc::new(AtomicBool::new(false)));
        run(
            &json!({"dataset": "d", "model": "kmeans", "features": ["a", "b"]}),
            &cat,
            &reporter,
            &Scratch::at(dir.path().join("s3")),
        )
        .unwrap();
        let mut training = Vec::new();
        while let Ok(u) = rx.try_recv() {
            if u.stage.as_deref() == Some("training") {
                training.push(u.percent);
            }
        }
        assert_eq!(training.len(), KMEANS_RUNS as usize);
        assert!(training.windows(2).all(|w| w[0] < w[1]), "{training:?}");
        assert_eq!(training.first(), Some(&30));
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
