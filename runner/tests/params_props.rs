//! Property tests ("fuzz smoke") of operation-params validation: arbitrary JSON params for
//! operations 100–400, built from the params vocabulary (keys, column names, operator and model
//! names) so they reach deep into validation, run against a small real catalog. Every case must
//! return `Ok` or a typed `TaskError` with a known failure code — never panic.
//!
//! Bounded: `PROPTEST_CASES` (default 256) cases per operation over a 12-row CSV.

use std::sync::atomic::{AtomicU64, Ordering};

use dap_protocol::{failure, op};
use dap_runner::artifacts::Scratch;
use dap_runner::catalog::Catalog;
use dap_runner::operations;
use dap_runner::progress::ProgressReporter;
use dap_runner::{DatasetFormat, DatasetSpec};
use proptest::prelude::*;
use serde_json::{Map, Value};

const CSV: &str = "region,product,units,price,paid,date\n\
north,widget,3,2.5,true,2024-01-01\n\
south,gadget,1,10.0,false,2024-01-02\n\
east,widget,7,2.5,true,2024-01-03\n\
west,gizmo,2,,true,2024-01-04\n\
north,gadget,5,9.5,false,2024-01-05\n\
south,widget,4,2.0,true,2024-01-06\n\
east,gizmo,9,1.5,false,2024-01-07\n\
west,widget,6,2.5,true,2024-01-08\n\
north,gizmo,8,1.0,true,2024-01-09\n\
south,gadget,2,11.0,false,2024-01-10\n\
east,widget,1,3.0,true,2024-01-11\n\
west,gadget,3,10.5,false,2024-01-12\n";

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

const KEYS: &[&str] = &[
    "dataset",
    "columns",
    "limit",
    "offset",
    "where",
    "select",
    "sort",
    "group_by",
    "by",
    "aggregations",
    "preview_limit",
    "column",
    "op",
    "value",
    "all",
    "any",
    "fn",
    "as",
    "descending",
    "model",
    "target",
    "features",
    "test_fraction",
    "seed",
    "parameters",
    "max_iterations",
    "max_depth",
    "k",
    "format",
    "title",
    "kind",
    "positive_class",
    "alpha",
];
const WORDS: &[&str] = &[
    "sales",
    "region",
    "product",
    "units",
    "price",
    "paid",
    "date",
    "missing",
    "north",
    "widget",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "in",
    "contains",
    "between",
    "is_null",
    "not_null",
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "median",
    "std",
    "linear_regression",
    "logistic_regression",
    "kmeans",
    "decision_tree",
    "csv",
    "json",
    "ndjson",
    "parquet",
    "html",
    "../etc/passwd",
    "/abs",
    "",
    "x",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::sample::select(WORDS).prop_map(Value::from),
        2 => (-5i64..50).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => (-1e6f64..1e6).prop_map(Value::from),
        1 => prop_oneof![Just(0.0), Just(0.25), Just(1.0), Just(-0.5)].prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => ".{0,6}".prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..5).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

/// Params objects: usually naming the real dataset, with vocabulary keys and arbitrary values.
fn params() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            4 => Just(Some(Value::from("sales"))),
            1 => Just(None),
            1 => leaf().prop_map(Some),
        ],
        prop::collection::vec((prop::sample::select(KEYS), value()), 0..7),
    )
        .prop_map(|(dataset, kv)| {
            let mut m = Map::new();
            for (k, v) in kv {
                m.insert(k.to_owned(), v);
            }
            if let Some(d) = dataset {
                m.insert("dataset".into(), d);
            }
            Value::Object(m)
        })
}

const KNOWN_CODES: &[&str] = &[
    failure::UNSUPPORTED_OPERATION,
    failure::UNKNOWN_DATASET,
    failure::INVALID_PARAMS,
    failure::PATH_NOT_ALLOWED,
    failure::DATA_ERROR,
    failure::CANCELLED,
];

struct Fixture {
    dir: std::path::PathBuf,
    catalog: Catalog,
}

fn fixture() -> Fixture {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "dap-params-props-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("sales.csv");
    std::fs::write(&csv, CSV).unwrap();
    let catalog = Catalog::open(&[DatasetSpec {
        name: "sales".into(),
        path: csv,
        format: DatasetFormat::Csv,
        csv: Default::default(),
    }])
    .unwrap();
    Fixture { dir, catalog }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn check(f: &Fixture, code: u16, params: &Value, case: u64) -> Result<(), TestCaseError> {
    let scratch_dir = f.dir.join(format!("scratch-{code}-{case}"));
    std::fs::create_dir_all(&scratch_dir).unwrap();
    let scratch = Scratch::at(scratch_dir.clone());
    let out = operations::run(
        code,
        params,
        &f.catalog,
        &ProgressReporter::discard(),
        &scratch,
    );
    let _ = std::fs::remove_dir_all(&scratch_dir);
    match out {
        Ok(o) => prop_assert!(
            o.result.is_object(),
            "result of {code} is not an object: {}",
            o.result
        ),
        Err(e) => {
            prop_assert!(
                KNOWN_CODES.contains(&e.code.as_str()),
                "operation {code} failed with an unexpected code {:?} ({}) for {params}",
                e.code,
                e.message
            );
            prop_assert!(!e.message.is_empty());
        }
    }
    Ok(())
}

static CASE: AtomicU64 = AtomicU64::new(0);

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fetch_params_never_panic(p in params()) {
        let f = fixture();
        check(&f, op::FETCH, &p, CASE.fetch_add(1, Ordering::Relaxed))?;
    }

    #[test]
    fn filter_params_never_panic(p in params()) {
        let f = fixture();
        check(&f, op::FILTER, &p, CASE.fetch_add(1, Ordering::Relaxed))?;
    }

    #[test]
    fn model_params_never_panic(p in params()) {
        let f = fixture();
        check(&f, op::MODEL, &p, CASE.fetch_add(1, Ordering::Relaxed))?;
    }

    #[test]
    fn export_params_never_panic(p in params()) {
        let f = fixture();
        check(&f, op::EXPORT, &p, CASE.fetch_add(1, Ordering::Relaxed))?;
    }
}
