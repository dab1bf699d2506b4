//! Golden tests: operations 200 (filter) and 300 (models) on real public datasets, compared with
//! what pandas and scikit-learn computed on the same files (`tests/golden/expected.json`, written
//! by `scripts/golden/generate.py`, which also wrote the CSVs under `tests/golden/data/`).
//!
//! The operations run at library level (`operations::run` over a catalog of those CSVs), not
//! through a server: this checks the numbers, not the transport. It does not regenerate the
//! expected values; that is a manual step with pinned pandas / scikit-learn (see the script).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use dap_protocol::op;
use dap_runner::artifacts::Scratch;
use dap_runner::catalog::Catalog;
use dap_runner::csv_dialect::CsvDialect;
use dap_runner::operations::{self, values, Output};
use dap_runner::progress::ProgressReporter;
use dap_runner::{DatasetFormat, DatasetSpec};
use polars::prelude::*;
use serde_json::Value;

const DATASETS: [&str; 5] = ["iris", "iris_gaps", "diabetes", "wine", "breast_cancer"];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(golden_dir().join("expected.json"))
        .expect("tests/golden/expected.json (run scripts/golden/generate.py)");
    serde_json::from_str(&text).expect("expected.json is JSON")
}

fn catalog() -> Catalog {
    let specs: Vec<DatasetSpec> = DATASETS
        .iter()
        .map(|name| DatasetSpec {
            name: (*name).to_owned(),
            path: golden_dir().join("data").join(format!("{name}.csv")),
            format: DatasetFormat::Csv,
            csv: Default::default(),
        })
        .collect();
    Catalog::open(&specs).expect("declare the golden datasets")
}

/// A scratch directory for one run, removed on drop.
struct TempScratch(PathBuf);

impl TempScratch {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dap-golden-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }

    fn scratch(&self) -> Scratch {
        Scratch::at(self.0.join("scratch"))
    }
}

impl Drop for TempScratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run operation `code`; returns the result and the bytes of each artifact, by name.
fn run(cat: &Catalog, code: u16, params: &Value) -> (Value, Vec<(String, Vec<u8>)>) {
    let dir = TempScratch::new();
    // The scratch directory lives (and is removed) with this value: keep it until read.
    let scratch = dir.scratch();
    let Output {
        result, artifacts, ..
    } = operations::run(code, params, cat, &ProgressReporter::discard(), &scratch)
        .unwrap_or_else(|e| panic!("{params}: {e:?}"));
    let files = artifacts
        .iter()
        .map(|a| {
            (
                a.name.clone(),
                std::fs::read(&a.path).expect("read artifact"),
            )
        })
        .collect();
    (result, files)
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn rel_diff(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / a.abs().max(b.abs())
    }
}

/// One output cell against pandas': integers must be integers and equal exactly; floats must be
/// floats within 1e-9 relative, since polars and pandas sum in different orders (and pandas
/// uses pairwise or Kahan-style summation), so the last bits of sums, means and standard
/// deviations may differ. Strings, booleans and nulls must be equal.
fn same_cell(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Number(a), Value::Number(e)) => {
            let int = |n: &serde_json::Number| n.is_i64() || n.is_u64();
            match (int(a), int(e)) {
                (true, true) => a.as_i128() == e.as_i128(),
                (false, false) => {
                    rel_diff(
                        a.as_f64().unwrap_or(f64::NAN),
                        e.as_f64().unwrap_or(f64::NAN),
                    ) <= 1e-9
                }
                _ => false,
            }
        }
        _ => actual == expected,
    }
}

fn assert_rows(what: &str, actual: &[Value], expected: &[Value]) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: {} rows, pandas has {}",
        actual.len(),
        expected.len()
    );
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let (a, e) = (a.as_array().unwrap(), e.as_array().unwrap());
        assert_eq!(a.len(), e.len(), "{what}: row {i} width");
        for (j, (x, y)) in a.iter().zip(e).enumerate() {
            assert!(
                same_cell(x, y),
                "{what}: row {i} column {j}: runner {x}, pandas {y}\nrunner row: {a:?}\npandas row: {e:?}"
            );
        }
    }
}

/// `output.csv` read back with polars, as JSON rows (the same conversion the preview uses).
fn csv_rows(bytes: &[u8]) -> (Vec<String>, Vec<Value>) {
    let df = CsvReadOptions::default()
        .with_has_header(true)
        .into_reader_with_file_handle(std::io::Cursor::new(bytes.to_vec()))
        .finish()
        .expect("output.csv parses");
    let columns = df
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let rows = values::rows(&df)
        .expect("rows of output.csv")
        .into_iter()
        .map(Value::from)
        .collect();
    (columns, rows)
}

#[test]
fn filter_outputs_equal_pandas() {
    let cat = catalog();
    let expected = expected();
    let cases = expected["filter"].as_array().expect("filter cases");
    assert!(cases.len() >= 20, "{} filter cases", cases.len());
    // The cases together use every operator, both groupings and every aggregation.
    let spec = Value::from(
        cases
            .iter()
            .map(|c| c["params"].clone())
            .collect::<Vec<_>>(),
    )
    .to_string();
    for needle in [
        "\"eq\"",
        "\"ne\"",
        "\"lt\"",
        "\"le\"",
        "\"gt\"",
        "\"ge\"",
        "\"in\"",
        "\"contains\"",
        "\"between\"",
        "\"is_null\"",
        "\"not_null\"",
        "\"all\"",
        "\"any\"",
        "\"count\"",
        "\"sum\"",
        "\"mean\"",
        "\"min\"",
        "\"max\"",
        "\"median\"",
        "\"std\"",
        "\"descending\":true",
        "\"select\"",
        "\"limit\"",
    ] {
        assert!(spec.contains(needle), "no golden filter case uses {needle}");
    }

    check_filter_cases(&cat, cases);
}

/// Run every golden filter case on `cat` and compare with pandas' rows, preview and artifact.
fn check_filter_cases(cat: &Catalog, cases: &[Value]) {
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (result, files) = run(cat, op::FILTER, &case["params"]);
        let want_rows = case["rows"].as_array().unwrap();
        assert_eq!(result["columns"], case["columns"], "{name}: columns");
        assert_eq!(result["row_count"], want_rows.len(), "{name}: row_count");
        assert_eq!(
            result["truncated"], false,
            "{name}: the preview holds every row"
        );
        // The inline preview (exact JSON values) …
        assert_rows(
            &format!("{name} (preview)"),
            result["rows"].as_array().unwrap(),
            want_rows,
        );
        // … and the full output artifact.
        let (file, bytes) = &files[0];
        assert_eq!(file, "output.csv");
        let (columns, rows) = csv_rows(bytes);
        assert_eq!(
            Value::from(columns),
            case["columns"],
            "{name}: output.csv header"
        );
        assert_rows(&format!("{name} (output.csv)"), &rows, want_rows);
    }
}

/// The golden CSV `name` rewritten as a European spreadsheet exports it: `;` between fields
/// and a decimal comma in every fractional number.
fn european_copy(name: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(golden_dir().join("data").join(format!("{name}.csv")))
        .expect("golden CSV");
    assert!(
        !text.contains('"') && !text.contains(';'),
        "{name}: plain fields only"
    );
    let out: String = text
        .lines()
        .map(|line| {
            let fields: Vec<String> = line
                .split(',')
                .map(|f| {
                    if f.parse::<f64>().is_ok() {
                        f.replace('.', ",")
                    } else {
                        f.to_owned()
                    }
                })
                .collect();
            fields.join(";") + "\n"
        })
        .collect();
    let path = dir.join(format!("{name}.csv"));
    std::fs::write(&path, out).expect("write the European copy");
    path
}

#[test]
fn filter_outputs_equal_pandas_on_a_semicolon_decimal_comma_export() {
    let dir = TempScratch::new();
    let specs: Vec<DatasetSpec> = DATASETS
        .iter()
        .map(|name| DatasetSpec {
            name: (*name).to_owned(),
            path: european_copy(name, &dir.0),
            format: DatasetFormat::Csv,
            // The separator is sniffed; the decimal mark is declared (it is never guessed).
            csv: CsvDialect {
                separator: None,
                decimal_comma: true,
            },
        })
        .collect();
    let cat = Catalog::open(&specs).expect("declare the European copies");
    for name in DATASETS {
        let d = cat.resolve(name).unwrap();
        assert_eq!(d.csv().unwrap().separator, b';', "{name}");
        // Same columns and types as the comma-and-point originals.
        let original = catalog();
        assert_eq!(
            d.info().columns,
            original.resolve(name).unwrap().info().columns,
            "{name}"
        );
    }
    let expected = expected();
    check_filter_cases(&cat, expected["filter"].as_array().expect("filter cases"));
}

/// Run a model twice: the same params must give the same result and predictions byte for byte.
fn model_twice(cat: &Catalog, params: &Value) -> Value {
    let (first, first_files) = run(cat, op::MODEL, params);
    let (second, second_files) = run(cat, op::MODEL, params);
    assert_eq!(first, second, "{params}: same seed, same result");
    assert_eq!(first_files, second_files, "{params}: same predictions.csv");
    first
}

#[test]
fn linear_regression_matches_scikit_learn() {
    let cat = catalog();
    let want = &expected()["linear_regression"];
    let r = model_twice(&cat, &want["params"]);
    assert_eq!(r["n_train"], want["n_train"]);
    assert_eq!(r["n_test"], want["n_test"]);
    assert_eq!(r["dropped_rows"], 0);
    let coefficients = want["coefficients"].as_object().unwrap();
    assert_eq!(coefficients.len(), 10);
    for (feature, w) in coefficients {
        let ours = num(&r["parameters"]["coefficients"][feature]);
        let d = rel_diff(ours, num(w));
        eprintln!("linear {feature}: runner {ours}, sklearn {w}, rel diff {d:e}");
        assert!(
            d <= 1e-6,
            "coefficient {feature}: runner {ours}, sklearn {w}"
        );
    }
    let ours = num(&r["parameters"]["intercept"]);
    assert!(
        rel_diff(ours, num(&want["intercept"])) <= 1e-6,
        "intercept: runner {ours}, sklearn {}",
        want["intercept"]
    );
    for metric in ["r2", "rmse", "mae"] {
        let ours = num(&r["metrics"][metric]);
        let d = rel_diff(ours, num(&want[metric]));
        eprintln!(
            "linear {metric}: runner {ours}, sklearn {}, rel diff {d:e}",
            want[metric]
        );
        assert!(
            d <= 1e-6,
            "{metric}: runner {ours}, sklearn {}",
            want[metric]
        );
    }
}

#[test]
fn classifier_accuracy_within_two_points_of_scikit_learn() {
    let cat = catalog();
    let expected = expected();
    let cases = expected["classifiers"].as_array().unwrap();
    let models: Vec<&str> = cases
        .iter()
        .map(|c| c["params"]["model"].as_str().unwrap())
        .collect();
    assert!(models.contains(&"logistic_regression") && models.contains(&"decision_tree"));
    for case in cases {
        let params = &case["params"];
        let r = model_twice(&cat, params);
        let what = format!("{} on {}", params["model"], params["dataset"]);
        assert_eq!(r["n_train"], case["n_train"], "{what}");
        assert_eq!(r["n_test"], case["n_test"], "{what}");
        let ours = num(&r["metrics"]["accuracy"]);
        let theirs = num(&case["accuracy"]);
        // 2 percentage points, plus float slack for accuracies that are exactly 2 points apart.
        const TWO_POINTS: f64 = 0.02 + 1e-12;
        match case["accuracy_range"].as_array() {
            None => {
                eprintln!("{what}: accuracy runner {ours:.4}, sklearn {theirs:.4}");
                assert!(
                    (ours - theirs).abs() <= TWO_POINTS,
                    "{what}: accuracy runner {ours}, sklearn {theirs}"
                );
            }
            Some(range) => {
                // A tree: sklearn breaks ties between equally good splits by a random feature
                // order, so its accuracy is a range over random_state 0..99 (one value when no
                // tie changes a prediction; then this is the plain 2-point comparison).
                let (lo, hi) = (num(&range[0]), num(&range[1]));
                eprintln!(
                    "{what} (max_depth {}): accuracy runner {ours:.4}, sklearn {theirs:.4} \
                     (random_state 0..99: {lo:.4}..{hi:.4}, tie-free: {})",
                    params["max_depth"], case["tie_free"]
                );
                assert!(
                    ours >= lo - TWO_POINTS && ours <= hi + TWO_POINTS,
                    "{what}: accuracy runner {ours}, sklearn {lo}..{hi}"
                );
                // Where every random_state grows the same tree, ours must be that tree: the
                // weighted impurity decreases per feature agree to rounding.
                if let Some(importances) = case["feature_importances"].as_object() {
                    for (feature, theirs) in importances {
                        let o = num(&r["parameters"]["feature_importances"][feature]);
                        assert!(
                            (o - num(theirs)).abs() < 1e-9,
                            "{what}: importance of {feature}: runner {o}, sklearn {theirs}"
                        );
                    }
                }
            }
        }
    }
    // The comparisons that are not blurred by ties.
    let exact = cases
        .iter()
        .filter(|c| {
            c["params"]["model"] == "decision_tree"
                && c["accuracy_range"][0] == c["accuracy_range"][1]
        })
        .count();
    assert!(
        exact >= 2,
        "{exact} tree cases with a seed-independent sklearn accuracy"
    );
    assert!(
        cases.iter().any(|c| c["tie_free"] == true),
        "no tie-free tree case"
    );
}

#[test]
fn kmeans_inertia_within_one_percent_of_scikit_learn() {
    let cat = catalog();
    let want = &expected()["kmeans"];
    let r = model_twice(&cat, &want["params"]);
    assert_eq!(r["parameters"]["init"], "precomputed");
    assert_eq!(r["parameters"]["runs"], 1);
    assert_eq!(r["n_train"], 150);
    let ours = num(&r["metrics"]["inertia"]);
    let theirs = num(&want["inertia"]);
    eprintln!("kmeans inertia: runner {ours}, sklearn {theirs}");
    assert!(
        (ours - theirs).abs() <= 0.01 * theirs,
        "inertia: runner {ours}, sklearn {theirs}"
    );
    // Same start, same algorithm: the centroids agree too (as a set: both keep the init order).
    let centroids = r["parameters"]["centroids"].as_array().unwrap();
    let features = want["params"]["features"].as_array().unwrap();
    for (ours, theirs) in centroids.iter().zip(want["centroids"].as_array().unwrap()) {
        for (f, t) in features.iter().zip(theirs.as_array().unwrap()) {
            let o = num(&ours[f.as_str().unwrap()]);
            assert!(
                (o - num(t)).abs() < 1e-6,
                "centroid {f}: runner {o}, sklearn {t}"
            );
        }
    }
}
