//! Operation 200, filter data: the rows of a dataset that match a condition, optionally grouped
//! and aggregated, with the chosen columns, sorted and capped.
//!
//! Steps, always in this order: `where` → `group_by` (+ aggregations) → `select` → `sort` →
//! `limit`. A sort key may also be a column that `select` leaves out (of the dataset, or of the
//! grouped output); the rows are ordered by it all the same. Every column name, operator and
//! value is checked against the dataset's schema before any row is read, so a typo or a type
//! mismatch is an `invalid_params` naming the field rather than a polars error halfway through.
//!
//! The work itself is polars over the catalog's lazy scan: the condition is applied while
//! scanning and only the columns later steps need are kept; the matching rows are then grouped,
//! shaped and sorted in memory. Counting the input rows is a separate (fast, unparsed) pass.
//!
//! Semantics worth knowing:
//! - A null cell never satisfies a comparison (`eq`, `ne`, `lt`, `le`, `gt`, `ge`, `in`,
//!   `contains`, `between`); only `is_null` finds it. So `ne` keeps neither equal nor null cells.
//! - `contains` is a plain substring test on string columns (no patterns, case-sensitive).
//!   Ordering operators work on numbers and, lexicographically by bytes, on strings (ISO dates
//!   compare correctly as strings).
//! - Sorting keeps ties in input order and puts nulls last in either direction.
//! - Grouped output is sorted by the group keys ascending (null keys last) before `sort` applies,
//!   so it is deterministic. `count` with a column counts its non-null cells, without one it
//!   counts rows; `sum` of a group with no values is 0, `mean`/`min`/`max`/`median` are null, and
//!   `std` (sample, ddof = 1) is null for fewer than two values.
//!
//! It does not join, compute new columns, or read anything but the named dataset. The complete
//! output (every row, after `limit`) is written to `output.csv` in the task's scratch directory
//! (polars' CSV writer: a header line, nulls as empty fields) and shipped as an artifact; only
//! its row count and a preview (the first `preview_limit` rows) travel back inline.
//!
//! Params: `dataset` (required), `where` (a predicate `{column, op, value}` or a group
//! `{"all": […]}` / `{"any": […]}`, nestable), `select` (column names), `sort` (column names or
//! `{column, descending}`), `group_by` (`{by: [columns], aggregations: [{column, fn, as}]}`),
//! `limit` (max output rows), `preview_limit` (0–10000, default 100).
//! Result: `{dataset, row_count, input_row_count, schema, columns, rows, truncated}`, plus the
//! artifact `output.csv` (`text/csv`), which the executor lists under `artifacts`.

use dap_protocol::TaskError;
use polars::prelude::*;
use serde_json::{json, Value};

use super::params::{invalid, shorten_json, Named, Params, SourceRef};
use super::{check_cancelled, collect_or_cancel, values, Output};
use crate::artifacts::{LocalArtifact, Scratch};
use crate::catalog::{columns_of, count_rows_or_cancel, Catalog};
use crate::outputs::OutputTable;
use crate::progress::ProgressReporter;

/// Name of the artifact holding the complete output.
pub const OUTPUT_ARTIFACT: &str = "output.csv";
pub const DEFAULT_PREVIEW_LIMIT: u64 = 100;
pub const MAX_PREVIEW_LIMIT: u64 = 10_000;
/// Most predicates one `where` may hold (together they become one polars expression).
pub const MAX_PREDICATES: usize = 256;
/// Deepest `all` / `any` nesting accepted.
pub const MAX_DEPTH: usize = 16;
/// Most values one `in` may list.
pub const MAX_IN_VALUES: usize = 10_000;
/// Most aggregations one `group_by` may compute.
pub const MAX_AGGREGATIONS: usize = 64;

const PARAMS: [&str; 8] = [
    "dataset",
    "input",
    "where",
    "select",
    "sort",
    "group_by",
    "limit",
    "preview_limit",
];

/// A comparison operator of a predicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Contains,
    Between,
    IsNull,
    NotNull,
}

impl Named for CmpOp {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("eq", CmpOp::Eq),
        ("ne", CmpOp::Ne),
        ("lt", CmpOp::Lt),
        ("le", CmpOp::Le),
        ("gt", CmpOp::Gt),
        ("ge", CmpOp::Ge),
        ("in", CmpOp::In),
        ("contains", CmpOp::Contains),
        ("between", CmpOp::Between),
        ("is_null", CmpOp::IsNull),
        ("not_null", CmpOp::NotNull),
    ];
}

/// One `{column, op, value}` test. `value` is kept as JSON until the column's type is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    /// Where it sits in the params (`params.where.all[1]`), for messages.
    pub path: String,
    pub column: String,
    pub op: CmpOp,
    pub value: Option<Value>,
}

/// The `where` tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Predicate(Predicate),
}

/// One output sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub column: String,
    pub descending: bool,
}

/// An aggregation function of `group_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFn {
    Count,
    Sum,
    Mean,
    Min,
    Max,
    Median,
    Std,
}

impl Named for AggFn {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("count", AggFn::Count),
        ("sum", AggFn::Sum),
        ("mean", AggFn::Mean),
        ("min", AggFn::Min),
        ("max", AggFn::Max),
        ("median", AggFn::Median),
        ("std", AggFn::Std),
    ];
}

/// One aggregation: `func` over `column` (none: `count` of rows), output as `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregation {
    pub path: String,
    pub column: Option<String>,
    pub func: AggFn,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupBy {
    pub by: Vec<String>,
    pub aggregations: Vec<Aggregation>,
}

/// Validated params of a filter, as far as they can be checked without the dataset's schema.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterParams {
    pub dataset: SourceRef,
    pub condition: Option<Condition>,
    pub select: Option<Vec<String>>,
    pub sort: Vec<SortKey>,
    pub group_by: Option<GroupBy>,
    pub limit: Option<u64>,
    pub preview_limit: u64,
}

impl FilterParams {
    pub fn parse(value: &Value) -> Result<Self, TaskError> {
        let p = Params::new(value)?;
        p.deny_unknown(&PARAMS)?;
        let condition = match p.value("where") {
            Some(w) => Some(parse_condition(w, "params.where", 0, &mut 0)?),
            None => None,
        };
        let sort = match p.value("sort") {
            Some(s) => parse_sort(s)?,
            None => Vec::new(),
        };
        let group_by = match p.value("group_by") {
            Some(g) => Some(parse_group_by(g)?),
            None => None,
        };
        Ok(Self {
            dataset: SourceRef::parse(&p)?,
            condition,
            select: p.string_list("select")?,
            sort,
            group_by,
            // polars takes the limit as its index type.
            limit: p.optional_u64_in("limit", 0, IdxSize::MAX as u64)?,
            preview_limit: p.u64_in(
                "preview_limit",
                DEFAULT_PREVIEW_LIMIT,
                0,
                MAX_PREVIEW_LIMIT,
            )?,
        })
    }
}

fn parse_condition(
    value: &Value,
    path: &str,
    depth: usize,
    predicates: &mut usize,
) -> Result<Condition, TaskError> {
    let obj = Params::at(value, path).map_err(|_| {
        invalid(format!(
            "{path} must be an object: a predicate {{\"column\", \"op\", \"value\"}} \
             or a group {{\"all\": […]}} / {{\"any\": […]}}"
        ))
    })?;
    let group = match (obj.value("all"), obj.value("any")) {
        (Some(_), Some(_)) => {
            return Err(invalid(format!(
                "{path} has both `all` and `any`; nest one inside the other"
            )))
        }
        (Some(items), None) => Some(("all", items)),
        (None, Some(items)) => Some(("any", items)),
        (None, None) => None,
    };
    let Some((key, items)) = group else {
        *predicates += 1;
        if *predicates > MAX_PREDICATES {
            return Err(invalid(format!(
                "params.where holds more than {MAX_PREDICATES} predicates"
            )));
        }
        return parse_predicate(&obj, path);
    };
    obj.deny_unknown(&[key])?;
    if depth >= MAX_DEPTH {
        return Err(invalid(format!(
            "{path}: `all` / `any` are nested more than {MAX_DEPTH} levels deep"
        )));
    }
    let items = items
        .as_array()
        .ok_or_else(|| invalid(format!("{path}.{key} must be an array of conditions")))?;
    if items.is_empty() {
        return Err(invalid(format!(
            "{path}.{key} must hold at least one condition"
        )));
    }
    let children = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            parse_condition(item, &format!("{path}.{key}[{i}]"), depth + 1, predicates)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if key == "all" {
        Condition::All(children)
    } else {
        Condition::Any(children)
    })
}

fn parse_predicate(obj: &Params<'_>, path: &str) -> Result<Condition, TaskError> {
    obj.deny_unknown(&["column", "op", "value"])?;
    let column = obj.required_str("column")?.to_owned();
    let op_name = obj.required_str("op")?;
    let op = CmpOp::parse(op_name).ok_or_else(|| {
        invalid(format!(
            "{path}.op: unknown operator {} (expected one of: {})",
            shorten_json(&Value::from(op_name)),
            CmpOp::names()
        ))
    })?;
    let value = obj.value("value");
    let value_path = format!("{path}.value");
    match op {
        CmpOp::IsNull | CmpOp::NotNull => {
            if value.is_some() {
                return Err(invalid(format!(
                    "{value_path}: `{}` takes no value",
                    op.name()
                )));
            }
        }
        CmpOp::In => {
            let items = value.and_then(Value::as_array).ok_or_else(|| {
                invalid(format!("{value_path} must be an array of values for `in`"))
            })?;
            if items.is_empty() || items.len() > MAX_IN_VALUES {
                return Err(invalid(format!(
                    "{value_path} must list between 1 and {MAX_IN_VALUES} values for `in`"
                )));
            }
        }
        CmpOp::Between => {
            let ok = value
                .and_then(Value::as_array)
                .is_some_and(|bounds| bounds.len() == 2);
            if !ok {
                return Err(invalid(format!(
                    "{value_path} must be [low, high] (two values, both inclusive) for `between`"
                )));
            }
        }
        CmpOp::Eq | CmpOp::Ne | CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge | CmpOp::Contains => {
            match value {
                None => {
                    return Err(invalid(format!(
                        "{value_path} is required for `{}` (to find missing cells use `is_null`)",
                        op.name()
                    )))
                }
                Some(Value::Array(_) | Value::Object(_)) => {
                    return Err(invalid(format!(
                        "{value_path} must be a single value for `{}`",
                        op.name()
                    )))
                }
                Some(_) => {}
            }
        }
    }
    Ok(Condition::Predicate(Predicate {
        path: path.to_owned(),
        column,
        op,
        value: value.cloned(),
    }))
}

fn parse_sort(value: &Value) -> Result<Vec<SortKey>, TaskError> {
    let items = value.as_array().ok_or_else(|| {
        invalid("params.sort must be an array of column names or {\"column\", \"descending\"}")
    })?;
    if items.is_empty() {
        return Err(invalid(
            "params.sort must not be empty (omit it to keep the order)",
        ));
    }
    let mut keys: Vec<SortKey> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("params.sort[{i}]");
        let key = match item {
            Value::String(column) => SortKey {
                column: column.clone(),
                descending: false,
            },
            _ => {
                let p = Params::at(item, &path).map_err(|_| {
                    invalid(format!(
                        "{path} must be a column name or {{\"column\", \"descending\"}}"
                    ))
                })?;
                p.deny_unknown(&["column", "descending"])?;
                SortKey {
                    column: p.required_str("column")?.to_owned(),
                    descending: p.bool_or("descending", false)?,
                }
            }
        };
        if keys.iter().any(|k| k.column == key.column) {
            return Err(invalid(format!(
                "{path}: column `{}` is already a sort key",
                key.column
            )));
        }
        keys.push(key);
    }
    Ok(keys)
}

fn parse_group_by(value: &Value) -> Result<GroupBy, TaskError> {
    let g = Params::at(value, "params.group_by")?;
    g.deny_unknown(&["by", "aggregations"])?;
    let by = g
        .string_list("by")?
        .ok_or_else(|| invalid("params.group_by.by is required (the key columns)"))?;
    let items = g
        .value("aggregations")
        .and_then(Value::as_array)
        .filter(|items| !items.is_empty() && items.len() <= MAX_AGGREGATIONS)
        .ok_or_else(|| {
            invalid(format!(
                "params.group_by.aggregations must be an array of 1 to {MAX_AGGREGATIONS} \
                 {{\"column\", \"fn\", \"as\"}}"
            ))
        })?;
    let mut aggregations: Vec<Aggregation> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("params.group_by.aggregations[{i}]");
        let a = Params::at(item, &path)?;
        a.deny_unknown(&["column", "fn", "as"])?;
        let fn_name = a.required_str("fn")?;
        let func = AggFn::parse(fn_name).ok_or_else(|| {
            invalid(format!(
                "{path}.fn: unknown aggregation {} (expected one of: {})",
                shorten_json(&Value::from(fn_name)),
                AggFn::names()
            ))
        })?;
        let column = match a.optional_str("column")? {
            Some(c) => Some(c.to_owned()),
            None if func == AggFn::Count => None,
            None => {
                return Err(invalid(format!(
                    "{path}.column is required for `{}`",
                    func.name()
                )))
            }
        };
        let name = match (a.optional_str("as")?, &column) {
            (Some(name), _) => name.to_owned(),
            (None, Some(c)) => format!("{c}_{}", func.name()),
            (None, None) => "count".to_owned(),
        };
        if by.contains(&name) || aggregations.iter().any(|other| other.name == name) {
            return Err(invalid(format!(
                "{path}: output column `{name}` would appear twice; name it with `as`"
            )));
        }
        aggregations.push(Aggregation {
            path,
            column,
            func,
            name,
        });
    }
    Ok(GroupBy { by, aggregations })
}

/// What a column holds, as far as predicates and aggregations care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    Str,
    Bool,
    Other,
}

impl Kind {
    fn of(dtype: &DataType) -> Self {
        if dtype.is_integer() {
            Kind::Int
        } else if dtype.is_float() {
            Kind::Float
        } else {
            match dtype {
                DataType::String => Kind::Str,
                DataType::Boolean => Kind::Bool,
                _ => Kind::Other,
            }
        }
    }

    fn is_numeric(self) -> bool {
        matches!(self, Kind::Int | Kind::Float)
    }

    /// What a value compared with this kind of column must be, for messages.
    fn wants(self) -> &'static str {
        match self {
            Kind::Int | Kind::Float => "a number",
            Kind::Str => "a string",
            Kind::Bool => "true or false",
            Kind::Other => "nothing",
        }
    }
}

/// A predicate's value, typed for its column.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
}

impl Scalar {
    fn lit(&self) -> Expr {
        match self {
            Scalar::Int(v) => lit(*v),
            Scalar::Float(v) => lit(*v),
            Scalar::Str(v) => lit(v.as_str()),
            Scalar::Bool(v) => lit(*v),
        }
    }

    /// `self <= other`, for checking `between` bounds (both are of the same column's kind).
    fn at_most(&self, other: &Scalar) -> bool {
        match (self, other) {
            (Scalar::Int(a), Scalar::Int(b)) => a <= b,
            (Scalar::Str(a), Scalar::Str(b)) => a <= b,
            (a, b) => match (a.as_f64(), b.as_f64()) {
                (Some(a), Some(b)) => a <= b,
                _ => true,
            },
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Scalar::Int(v) => Some(*v as f64),
            Scalar::Float(v) => Some(*v),
            _ => None,
        }
    }
}

/// The dataset's schema with the dataset's name, for checking names and types.
struct Columns<'a> {
    schema: &'a Schema,
    dataset: &'a str,
}

impl Columns<'_> {
    fn dtype(&self, column: &str, path: &str) -> Result<&DataType, TaskError> {
        self.schema.get(column).ok_or_else(|| {
            invalid(format!(
                "{path}: dataset `{}` has no column {}",
                self.dataset,
                shorten_json(&Value::from(column))
            ))
        })
    }

    /// The `where` tree as one boolean expression that is never null.
    fn condition(&self, condition: &Condition) -> Result<Expr, TaskError> {
        match condition {
            Condition::All(children) => Ok(balanced(self.conditions(children)?, |a, b| a.and(b))),
            Condition::Any(children) => Ok(balanced(self.conditions(children)?, |a, b| a.or(b))),
            Condition::Predicate(p) => self.predicate(p),
        }
    }

    fn conditions(&self, children: &[Condition]) -> Result<Vec<Expr>, TaskError> {
        children.iter().map(|c| self.condition(c)).collect()
    }

    fn predicate(&self, p: &Predicate) -> Result<Expr, TaskError> {
        let dtype = self.dtype(&p.column, &format!("{}.column", p.path))?;
        let kind = Kind::of(dtype);
        let column = col(p.column.as_str());
        let refused = |why: String| invalid(format!("{}.op: {why}", p.path));
        match (p.op, kind) {
            (CmpOp::IsNull | CmpOp::NotNull, _) => {}
            (op, Kind::Other) => {
                return Err(refused(format!(
                    "column `{}` has type {dtype}; `{}` does not apply to it (only is_null and \
                     not_null do)",
                    p.column,
                    op.name()
                )))
            }
            (CmpOp::Contains, kind) if kind != Kind::Str => {
                return Err(refused(format!(
                    "`contains` needs a string column; `{}` is {dtype}",
                    p.column
                )))
            }
            (op @ (CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge | CmpOp::Between), Kind::Bool) => {
                return Err(refused(format!(
                    "`{}` does not apply to boolean column `{}` (use eq, ne or in)",
                    op.name(),
                    p.column
                )))
            }
            _ => {}
        }

        let value_path = format!("{}.value", p.path);
        let scalar = |value: &Value, path: &str| -> Result<Scalar, TaskError> {
            let typed = match (kind, value) {
                (Kind::Int | Kind::Float, Value::Number(n)) => match n.as_i64() {
                    Some(v) => Some(Scalar::Int(v)),
                    None => n.as_f64().map(Scalar::Float),
                },
                (Kind::Str, Value::String(s)) => Some(Scalar::Str(s.clone())),
                (Kind::Bool, Value::Bool(b)) => Some(Scalar::Bool(*b)),
                _ => None,
            };
            typed.ok_or_else(|| {
                let hint = if value.is_null() {
                    " (to find missing cells use `is_null`)"
                } else {
                    ""
                };
                invalid(format!(
                    "{path}: column `{}` is {dtype}, so `{}` needs {} (got {}){hint}",
                    p.column,
                    p.op.name(),
                    kind.wants(),
                    shorten_json(value)
                ))
            })
        };
        let value = p.value.as_ref().unwrap_or(&Value::Null);
        let bounds = |i: usize| value.get(i).unwrap_or(&Value::Null);

        let test = match p.op {
            CmpOp::Eq => column.eq(scalar(value, &value_path)?.lit()),
            CmpOp::Ne => column.neq(scalar(value, &value_path)?.lit()),
            CmpOp::Lt => column.lt(scalar(value, &value_path)?.lit()),
            CmpOp::Le => column.lt_eq(scalar(value, &value_path)?.lit()),
            CmpOp::Gt => column.gt(scalar(value, &value_path)?.lit()),
            CmpOp::Ge => column.gt_eq(scalar(value, &value_path)?.lit()),
            CmpOp::Between => {
                let low = scalar(bounds(0), &format!("{value_path}[0]"))?;
                let high = scalar(bounds(1), &format!("{value_path}[1]"))?;
                if !low.at_most(&high) {
                    return Err(invalid(format!(
                        "{value_path}: the low bound {} is above the high bound {}",
                        shorten_json(bounds(0)),
                        shorten_json(bounds(1))
                    )));
                }
                column
                    .clone()
                    .gt_eq(low.lit())
                    .and(column.lt_eq(high.lit()))
            }
            CmpOp::In => {
                let items = value.as_array().map_or(&[][..], Vec::as_slice);
                let set = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| scalar(v, &format!("{value_path}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                is_in(column, kind, set)
            }
            CmpOp::Contains => match scalar(value, &value_path)? {
                Scalar::Str(needle) => contains(column, needle),
                // `scalar` makes strings for string columns, the only kind `contains` accepts.
                other => return Err(invalid(format!("{value_path}: unexpected {other:?}"))),
            },
            CmpOp::IsNull => column.is_null(),
            CmpOp::NotNull => column.is_not_null(),
        };
        // A comparison with a null cell is null; make it a plain "no" so `all`/`any` and the
        // filter agree on it whatever polars' null logic is.
        Ok(test.fill_null(lit(false)))
    }
}

/// Membership in a literal set, with column and set brought to one type first (an integer column
/// tested against `[1, 2.5]` is compared as floats).
fn is_in(column: Expr, kind: Kind, set: Vec<Scalar>) -> Expr {
    let name = PlSmallStr::from_static("in");
    let mut ints = Vec::new();
    let mut floats = Vec::new();
    let mut strings = Vec::new();
    let mut bools = Vec::new();
    for v in set {
        match v {
            Scalar::Int(v) => {
                ints.push(v);
                floats.push(v as f64);
            }
            Scalar::Float(v) => floats.push(v),
            Scalar::Str(v) => strings.push(v),
            Scalar::Bool(v) => bools.push(v),
        }
    }
    let (column, set) = match kind {
        Kind::Str => (column, Series::new(name, strings)),
        Kind::Bool => (column, Series::new(name, bools)),
        Kind::Int if ints.len() == floats.len() => {
            (column.cast(DataType::Int64), Series::new(name, ints))
        }
        _ => (column.cast(DataType::Float64), Series::new(name, floats)),
    };
    column.is_in(lit(set))
}

/// Literal substring test on a string column, done in Rust so that no pattern syntax applies and
/// polars' `strings` and `regex` features are not needed.
fn contains(column: Expr, needle: String) -> Expr {
    column.map(
        move |c| {
            let strings = c.str()?;
            let found: BooleanChunked = strings
                .apply_nonnull_values_generic(DataType::Boolean, |s: &str| s.contains(&*needle));
            Ok(Some(found.with_name(c.name().clone()).into_column()))
        },
        GetOutput::from_type(DataType::Boolean),
    )
}

/// Join expressions pairwise, so `all` of 200 predicates is a tree 8 deep, not a chain 200 deep.
fn balanced(mut exprs: Vec<Expr>, join: fn(Expr, Expr) -> Expr) -> Expr {
    while exprs.len() > 1 {
        let mut next = Vec::with_capacity(exprs.len().div_ceil(2));
        let mut it = exprs.into_iter();
        while let Some(a) = it.next() {
            next.push(match it.next() {
                Some(b) => join(a, b),
                None => a,
            });
        }
        exprs = next;
    }
    exprs.pop().unwrap_or_else(|| lit(true))
}

/// Everything checked against the schema, ready to run.
struct Plan {
    predicate: Option<Expr>,
    /// Columns read from the scan (the rest are dropped while scanning).
    scanned: Vec<String>,
    group_by: Option<(Vec<String>, Vec<Expr>)>,
    select: Option<Vec<String>>,
    sort: Vec<SortKey>,
    limit: Option<u64>,
}

impl Plan {
    fn new(p: &FilterParams, schema: &Schema, dataset: &str) -> Result<Self, TaskError> {
        let columns = Columns { schema, dataset };
        let predicate = p
            .condition
            .as_ref()
            .map(|c| columns.condition(c))
            .transpose()?;

        // The columns `select` and `sort` may name: the dataset's, or the grouped output's.
        let mut available: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
        let mut group_by = None;
        if let Some(g) = &p.group_by {
            for key in &g.by {
                columns.dtype(key, "params.group_by.by")?;
            }
            let aggs = g
                .aggregations
                .iter()
                .map(|a| aggregation(&columns, a, &g.by))
                .collect::<Result<Vec<_>, _>>()?;
            available = g.by.clone();
            available.extend(g.aggregations.iter().map(|a| a.name.clone()));
            group_by = Some((g.by.clone(), aggs));
        }
        let not_available = |path: String, missing: &str| {
            invalid(if p.group_by.is_some() {
                format!(
                    "{path}: `{missing}` is not a column of the grouped output (its columns: {})",
                    available.join(", ")
                )
            } else {
                format!("{path}: dataset `{dataset}` has no column `{missing}`")
            })
        };
        if let Some(select) = &p.select {
            if let Some(missing) = select.iter().find(|c| !available.contains(c)) {
                return Err(not_available("params.select".into(), missing));
            }
        }
        for (i, key) in p.sort.iter().enumerate() {
            if !available.contains(&key.column) {
                return Err(not_available(format!("params.sort[{i}]"), &key.column));
            }
        }

        // Only these columns are read past the scan.
        let scanned = match (&p.group_by, &p.select) {
            (Some(g), _) => {
                let mut needed = g.by.clone();
                needed.extend(g.aggregations.iter().filter_map(|a| a.column.clone()));
                dedup(needed)
            }
            (None, Some(select)) => {
                let mut needed = select.clone();
                needed.extend(p.sort.iter().map(|k| k.column.clone()));
                dedup(needed)
            }
            (None, None) => schema.iter_names().map(|n| n.to_string()).collect(),
        };
        Ok(Self {
            predicate,
            scanned,
            group_by,
            select: p.select.clone(),
            sort: p.sort.clone(),
            limit: p.limit,
        })
    }

    /// The `where` step over the scan, keeping only the columns later steps need.
    fn matching(&self, scan: LazyFrame) -> LazyFrame {
        let mut matching = scan;
        if let Some(predicate) = &self.predicate {
            matching = matching.filter(predicate.clone());
        }
        matching.select(names(&self.scanned))
    }

    /// The steps after `where`: group_by → select → sort → limit.
    fn shape(self, matching: LazyFrame) -> LazyFrame {
        let mut out = matching;
        if let Some((keys, aggs)) = self.group_by {
            let ascending = vec![false; keys.len()];
            out = out
                .group_by(names(&keys))
                .agg(aggs)
                .sort_by_exprs(names(&keys), sort_options(ascending));
        }
        // Sorting before projecting gives what sorting the selected columns would, and also lets
        // a sort key be a column that is not selected.
        if !self.sort.is_empty() {
            let by: Vec<String> = self.sort.iter().map(|k| k.column.clone()).collect();
            let descending = self.sort.iter().map(|k| k.descending).collect();
            out = out.sort_by_exprs(names(&by), sort_options(descending));
        }
        if let Some(select) = &self.select {
            out = out.select(names(select));
        }
        if let Some(limit) = self.limit {
            // limit ≤ IdxSize::MAX, checked when parsing.
            out = out.limit(limit as IdxSize);
        }
        out
    }
}

/// The whole filter (`where` → `group_by` → `select` → `sort` → `limit`) over `scan` as one
/// lazy query, every name, operator and value checked against `schema` first. For operations
/// that work on a filtered dataset (export); [`run`] runs the same steps in two parts so it can
/// report how many rows matched in between.
pub fn query(
    p: &FilterParams,
    scan: LazyFrame,
    schema: &Schema,
    dataset: &str,
) -> Result<LazyFrame, TaskError> {
    let plan = Plan::new(p, schema, dataset)?;
    let matching = plan.matching(scan);
    Ok(plan.shape(matching))
}

/// `names` without repeats, first occurrence kept.
fn dedup(names: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

fn aggregation(columns: &Columns<'_>, a: &Aggregation, keys: &[String]) -> Result<Expr, TaskError> {
    let Some(column) = &a.column else {
        return Ok(len().alias(a.name.as_str()));
    };
    let path = format!("{}.column", a.path);
    let dtype = columns.dtype(column, &path)?;
    if keys.contains(column) {
        return Err(invalid(format!(
            "{path}: `{column}` is a group key; aggregate another column"
        )));
    }
    let kind = Kind::of(dtype);
    let fits = match a.func {
        AggFn::Count => true,
        AggFn::Min | AggFn::Max => kind.is_numeric() || kind == Kind::Str,
        AggFn::Sum | AggFn::Mean | AggFn::Median | AggFn::Std => kind.is_numeric(),
    };
    if !fits {
        return Err(invalid(format!(
            "{}.fn: `{}` needs a numeric column; `{column}` is {dtype}",
            a.path,
            a.func.name()
        )));
    }
    let c = col(column.as_str());
    let expr = match a.func {
        AggFn::Count => c.count(),
        AggFn::Sum => c.sum(),
        AggFn::Mean => c.mean(),
        AggFn::Min => c.min(),
        AggFn::Max => c.max(),
        AggFn::Median => c.median(),
        // Sample standard deviation, like pandas.
        AggFn::Std => c.std(1),
    };
    Ok(expr.alias(a.name.as_str()))
}

fn sort_options(descending: Vec<bool>) -> SortMultipleOptions {
    SortMultipleOptions::default()
        .with_order_descending_multi(descending)
        .with_nulls_last(true)
        .with_maintain_order(true)
}

fn names(columns: &[String]) -> Vec<Expr> {
    columns.iter().map(|c| col(c.as_str())).collect()
}

/// Write `df` as CSV (with a header) to `path`. The error names no path.
fn write_csv(df: &mut DataFrame, path: &std::path::Path) -> Result<(), TaskError> {
    let failed = |e: &dyn std::fmt::Display| {
        TaskError::new(
            dap_protocol::failure::INTERNAL,
            format!("writing {OUTPUT_ARTIFACT} failed: {e}"),
        )
    };
    let file = std::fs::File::create(path).map_err(|e| failed(&e))?;
    let mut out = std::io::BufWriter::new(file);
    CsvWriter::new(&mut out)
        .include_header(true)
        .finish(df)
        .map_err(|e| failed(&e))?;
    use std::io::Write as _;
    out.flush().map_err(|e| failed(&e))
}

/// Run a filter; the complete output goes to [`OUTPUT_ARTIFACT`] in `scratch`. Blocking.
pub fn run(
    params: &Value,
    catalog: &Catalog,
    progress: &ProgressReporter,
    scratch: &Scratch,
) -> Result<Output, TaskError> {
    let p = FilterParams::parse(params)?;
    let dataset = catalog.source(&p.dataset)?;
    let failed = |e: PolarsError| dataset.data_error(&e);

    progress.report(5, "planning");
    let mut scan = dataset.scan()?;
    let schema = scan.collect_schema().map_err(failed)?;
    let plan = Plan::new(&p, &schema, dataset.name())?;
    check_cancelled(progress)?;

    progress.report(10, "counting rows");
    let input_row_count = count_rows_or_cancel(scan.clone(), progress)?.map_err(failed)?;
    check_cancelled(progress)?;

    progress.report(20, "filtering");
    let matching = collect_or_cancel(plan.matching(scan), progress)?.map_err(failed)?;
    check_cancelled(progress)?;
    progress.report_with_message(
        60,
        "filtering",
        format!("{} of {input_row_count} rows match", matching.height()),
    );

    let stage = if plan.group_by.is_some() {
        "aggregating"
    } else if !plan.sort.is_empty() {
        "sorting"
    } else {
        "selecting"
    };
    progress.report(70, stage);
    let mut out = collect_or_cancel(plan.shape(matching.lazy()), progress)?.map_err(failed)?;
    check_cancelled(progress)?;

    progress.report_with_message(
        80,
        "writing output",
        format!("{} rows to {OUTPUT_ARTIFACT}", out.height()),
    );
    let path = scratch.path_for(OUTPUT_ARTIFACT)?;
    write_csv(&mut out, &path)?;
    check_cancelled(progress)?;

    progress.report(90, "preparing preview");
    let row_count = out.height();
    // preview_limit ≤ MAX_PREVIEW_LIMIT, so it fits usize.
    let preview = out.head(Some(p.preview_limit as usize));
    let rows = values::rows(&preview).map_err(failed)?;
    let columns: Vec<String> = out
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();

    let result = json!({
        "dataset": dataset.name(),
        "row_count": row_count,
        "input_row_count": input_row_count,
        "schema": columns_of(out.schema()),
        "columns": columns,
        "rows": rows,
        "truncated": preview.height() < row_count,
    });
    Ok(Output {
        result,
        table: Some(OutputTable::Frame(out)),
        artifacts: vec![LocalArtifact {
            name: OUTPUT_ARTIFACT.to_owned(),
            path,
            content_type: "text/csv".to_owned(),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::ProgressUpdate;
    use crate::test_support::TempDir;
    use dap_protocol::failure;
    use std::cmp::Ordering as CmpOrdering;
    use std::collections::BTreeMap;
    use std::fmt::{Display, Write as _};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// The test data, once: the CSV is written from these rows and every expectation is computed
    /// from them in plain Rust.
    #[derive(Debug, Clone, Copy)]
    struct Row {
        id: i64,
        region: &'static str,
        product: Option<&'static str>,
        units: Option<i64>,
        price: Option<f64>,
        paid: Option<bool>,
        note: Option<&'static str>,
    }

    const fn row(
        id: i64,
        region: &'static str,
        product: Option<&'static str>,
        units: Option<i64>,
        price: Option<f64>,
        paid: Option<bool>,
        note: Option<&'static str>,
    ) -> Row {
        Row {
            id,
            region,
            product,
            units,
            price,
            paid,
            note,
        }
    }

    const ROWS: [Row; 12] = [
        row(
            1,
            "north",
            Some("widget"),
            Some(3),
            Some(2.5),
            Some(true),
            Some("first order"),
        ),
        row(
            2,
            "south",
            Some("gadget"),
            None,
            Some(10.0),
            Some(false),
            None,
        ),
        row(
            3,
            "east",
            Some("widget"),
            Some(7),
            Some(2.5),
            Some(true),
            Some("rush"),
        ),
        row(
            4,
            "west",
            Some("gizmo"),
            Some(1),
            Some(99.99),
            None,
            Some("gift wrap"),
        ),
        row(
            5,
            "north",
            Some("gadget"),
            Some(4),
            Some(10.0),
            Some(true),
            None,
        ),
        row(
            6,
            "south",
            Some("widget"),
            Some(10),
            Some(2.25),
            Some(false),
            Some("rush order"),
        ),
        row(
            7,
            "north",
            Some("gizmo"),
            Some(8),
            Some(5.0),
            Some(true),
            Some("call first"),
        ),
        row(
            8,
            "east",
            None,
            Some(2),
            None,
            Some(false),
            Some("see p. 2"),
        ),
        row(9, "south", Some("gadget"), None, Some(10.0), None, None),
        row(
            10,
            "north",
            Some("widget"),
            Some(6),
            Some(2.5),
            Some(false),
            Some("rush"),
        ),
        row(
            11,
            "south",
            Some("gizmo"),
            Some(4),
            Some(7.75),
            Some(true),
            None,
        ),
        row(
            12,
            "east",
            Some("gadget"),
            Some(7),
            Some(12.5),
            Some(true),
            Some("Rush"),
        ),
    ];

    fn cell<T: Display>(v: Option<T>) -> String {
        v.map(|v| v.to_string()).unwrap_or_default()
    }

    fn csv() -> String {
        let mut s = String::from("id,region,product,units,price,paid,note\n");
        for r in ROWS {
            // `{:?}` keeps the decimal point of whole floats (10.0), so the column stays f64.
            let price = r.price.map(|p| format!("{p:?}"));
            writeln!(
                s,
                "{},{},{},{},{},{},{}",
                r.id,
                r.region,
                cell(r.product),
                cell(r.units),
                cell(price),
                cell(r.paid),
                cell(r.note)
            )
            .unwrap();
        }
        s
    }

    fn catalog(dir: &TempDir) -> Catalog {
        let path = dir.write("t.csv", &csv());
        crate::test_support::csv_catalog("t", &path)
    }

    fn filter(cat: &Catalog, params: Value) -> Result<Value, TaskError> {
        let dir = TempDir::new();
        run(
            &params,
            cat,
            &ProgressReporter::discard(),
            &Scratch::at(dir.path().join("scratch")),
        )
        .map(|out| out.result)
    }

    /// The result and the text of `output.csv`.
    fn filter_csv(cat: &Catalog, params: Value) -> (Value, String) {
        let dir = TempDir::new();
        let scratch = Scratch::at(dir.path().join("scratch"));
        let out = run(&params, cat, &ProgressReporter::discard(), &scratch).unwrap();
        assert_eq!(out.artifacts.len(), 1);
        let a = &out.artifacts[0];
        assert_eq!(
            (a.name.as_str(), a.content_type.as_str()),
            (OUTPUT_ARTIFACT, "text/csv")
        );
        assert!(a.path.starts_with(scratch.dir()), "{a:?}");
        let text = std::fs::read_to_string(&a.path).unwrap();
        drop(scratch);
        assert!(!a.path.exists(), "scratch removed on drop");
        (out.result, text)
    }

    fn ids_of(result: &Value) -> Vec<i64> {
        result["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[0].as_i64().unwrap())
            .collect()
    }

    /// Ids (in file order) of the rows the filter keeps.
    fn ids_where(cat: &Catalog, condition: Value) -> Vec<i64> {
        let r = filter(
            cat,
            json!({"dataset": "t", "where": condition, "select": ["id"]}),
        )
        .unwrap_or_else(|e| panic!("{condition}: {e:?}"));
        assert_eq!(r["input_row_count"], ROWS.len(), "{condition}");
        assert_eq!(r["row_count"], r["rows"].as_array().unwrap().len());
        ids_of(&r)
    }

    fn expect(keep: impl Fn(&Row) -> bool) -> Vec<i64> {
        ROWS.iter().filter(|r| keep(r)).map(|r| r.id).collect()
    }

    fn close(actual: &Value, expected: Option<f64>, what: &str) {
        match expected {
            None => assert_eq!(actual, &Value::Null, "{what}"),
            Some(e) => {
                let a = actual
                    .as_f64()
                    .unwrap_or_else(|| panic!("{what}: {actual}"));
                assert!((a - e).abs() < 1e-9, "{what}: got {a}, expected {e}");
            }
        }
    }

    fn mean(v: &[f64]) -> Option<f64> {
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }

    fn median(v: &[f64]) -> Option<f64> {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = v.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(v[n / 2]),
            _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    fn sample_std(v: &[f64]) -> Option<f64> {
        let m = mean(v)?;
        (v.len() >= 2).then(|| {
            let ss: f64 = v.iter().map(|x| (x - m) * (x - m)).sum();
            (ss / (v.len() - 1) as f64).sqrt()
        })
    }

    #[test]
    fn csv_types_are_as_the_tests_assume() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let r = filter(&cat, json!({"dataset": "t", "limit": 0})).unwrap();
        assert_eq!(
            r["schema"],
            json!([
                {"name": "id", "dtype": "i64"},
                {"name": "region", "dtype": "str"},
                {"name": "product", "dtype": "str"},
                {"name": "units", "dtype": "i64"},
                {"name": "price", "dtype": "f64"},
                {"name": "paid", "dtype": "bool"},
                {"name": "note", "dtype": "str"},
            ])
        );
        assert_eq!(r["row_count"], 0);
        assert_eq!(r["input_row_count"], 12);
        assert_eq!(r["rows"], json!([]));
        assert_eq!(r["truncated"], false);
    }

    #[test]
    fn every_operator() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        type Keep = fn(&Row) -> bool;
        let cases: Vec<(Value, Keep)> = vec![
            (json!({"column": "units", "op": "eq", "value": 4}), |r| {
                r.units == Some(4)
            }),
            (
                json!({"column": "region", "op": "eq", "value": "north"}),
                |r| r.region == "north",
            ),
            (json!({"column": "paid", "op": "eq", "value": true}), |r| {
                r.paid == Some(true)
            }),
            (json!({"column": "price", "op": "eq", "value": 10}), |r| {
                r.price == Some(10.0)
            }),
            (json!({"column": "units", "op": "ne", "value": 4}), |r| {
                r.units.is_some_and(|u| u != 4)
            }),
            (json!({"column": "paid", "op": "ne", "value": true}), |r| {
                r.paid == Some(false)
            }),
            (
                json!({"column": "product", "op": "ne", "value": "gadget"}),
                |r| r.product.is_some_and(|p| p != "gadget"),
            ),
            (json!({"column": "units", "op": "lt", "value": 4}), |r| {
                r.units.is_some_and(|u| u < 4)
            }),
            (json!({"column": "units", "op": "le", "value": 4}), |r| {
                r.units.is_some_and(|u| u <= 4)
            }),
            (json!({"column": "units", "op": "gt", "value": 6}), |r| {
                r.units.is_some_and(|u| u > 6)
            }),
            (json!({"column": "units", "op": "ge", "value": 7}), |r| {
                r.units.is_some_and(|u| u >= 7)
            }),
            // A float against an integer column, and an integer against a float column.
            (json!({"column": "units", "op": "lt", "value": 3.5}), |r| {
                r.units.is_some_and(|u| (u as f64) < 3.5)
            }),
            (json!({"column": "price", "op": "gt", "value": 5}), |r| {
                r.price.is_some_and(|p| p > 5.0)
            }),
            (json!({"column": "price", "op": "le", "value": 2.5}), |r| {
                r.price.is_some_and(|p| p <= 2.5)
            }),
            // Strings order lexicographically.
            (
                json!({"column": "product", "op": "lt", "value": "gizmo"}),
                |r| r.product.is_some_and(|p| p < "gizmo"),
            ),
            (
                json!({"column": "region", "op": "ge", "value": "south"}),
                |r| r.region >= "south",
            ),
            (
                json!({"column": "units", "op": "in", "value": [1, 4, 10, 99]}),
                |r| r.units.is_some_and(|u| [1, 4, 10, 99].contains(&u)),
            ),
            (
                json!({"column": "units", "op": "in", "value": [4, 7.0, 2.5]}),
                |r| r.units.is_some_and(|u| u == 4 || u == 7),
            ),
            (
                json!({"column": "region", "op": "in", "value": ["east", "west"]}),
                |r| r.region == "east" || r.region == "west",
            ),
            (
                json!({"column": "price", "op": "in", "value": [2.5, 10]}),
                |r| r.price.is_some_and(|p| p == 2.5 || p == 10.0),
            ),
            (
                json!({"column": "paid", "op": "in", "value": [false]}),
                |r| r.paid == Some(false),
            ),
            // Literal and case-sensitive: "Rush" does not match, "." is a dot, not "any".
            (
                json!({"column": "note", "op": "contains", "value": "rush"}),
                |r| r.note.is_some_and(|n| n.contains("rush")),
            ),
            (
                json!({"column": "note", "op": "contains", "value": "."}),
                |r| r.note.is_some_and(|n| n.contains('.')),
            ),
            (
                json!({"column": "note", "op": "contains", "value": ""}),
                |r| r.note.is_some(),
            ),
            (
                json!({"column": "units", "op": "between", "value": [4, 7]}),
                |r| r.units.is_some_and(|u| (4..=7).contains(&u)),
            ),
            (
                json!({"column": "price", "op": "between", "value": [2.5, 10]}),
                |r| r.price.is_some_and(|p| (2.5..=10.0).contains(&p)),
            ),
            (
                json!({"column": "region", "op": "between", "value": ["east", "north"]}),
                |r| ("east"..="north").contains(&r.region),
            ),
            (
                json!({"column": "units", "op": "between", "value": [5, 5]}),
                |r| r.units == Some(5),
            ),
            (json!({"column": "units", "op": "is_null"}), |r| {
                r.units.is_none()
            }),
            (json!({"column": "product", "op": "is_null"}), |r| {
                r.product.is_none()
            }),
            (
                json!({"column": "paid", "op": "is_null", "value": null}),
                |r| r.paid.is_none(),
            ),
            (json!({"column": "note", "op": "not_null"}), |r| {
                r.note.is_some()
            }),
            (json!({"column": "price", "op": "not_null"}), |r| {
                r.price.is_some()
            }),
        ];
        for (condition, keep) in cases {
            let expected = expect(keep);
            assert_eq!(ids_where(&cat, condition.clone()), expected, "{condition}");
        }
        // The cases are not vacuous.
        assert_eq!(expect(|r| r.note.is_some_and(|n| n.contains('.'))), [8]);
        assert_eq!(expect(|r| r.units.is_none()), [2, 9]);
    }

    #[test]
    fn all_and_any_nest() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        type Keep = fn(&Row) -> bool;
        let cases: Vec<(Value, Keep)> = vec![
            (
                json!({"all": [
                    {"column": "region", "op": "eq", "value": "north"},
                    {"any": [
                        {"column": "units", "op": "gt", "value": 5},
                        {"column": "paid", "op": "eq", "value": false},
                    ]},
                ]}),
                |r| {
                    r.region == "north" && (r.units.is_some_and(|u| u > 5) || r.paid == Some(false))
                },
            ),
            (
                json!({"any": [
                    {"all": [
                        {"column": "region", "op": "eq", "value": "south"},
                        {"column": "units", "op": "is_null"},
                    ]},
                    {"all": [
                        {"column": "region", "op": "eq", "value": "east"},
                        {"column": "price", "op": "ge", "value": 10},
                    ]},
                ]}),
                |r| {
                    (r.region == "south" && r.units.is_none())
                        || (r.region == "east" && r.price.is_some_and(|p| p >= 10.0))
                },
            ),
            (
                json!({"all": [{"any": [{"all": [
                    {"column": "units", "op": "ge", "value": 3},
                    {"column": "units", "op": "le", "value": 7},
                    {"column": "product", "op": "ne", "value": "widget"},
                ]}]}]}),
                |r| {
                    r.units.is_some_and(|u| (3..=7).contains(&u))
                        && r.product.is_some_and(|p| p != "widget")
                },
            ),
            (
                json!({"all": [{"column": "paid", "op": "eq", "value": true}]}),
                |r| r.paid == Some(true),
            ),
            // Five branches: the pairwise join must keep the odd one out.
            (
                json!({"any": [
                    {"column": "id", "op": "eq", "value": 1},
                    {"column": "id", "op": "eq", "value": 3},
                    {"column": "id", "op": "eq", "value": 5},
                    {"column": "id", "op": "eq", "value": 7},
                    {"column": "id", "op": "eq", "value": 12},
                ]}),
                |r| [1, 3, 5, 7, 12].contains(&r.id),
            ),
        ];
        for (condition, keep) in cases {
            let expected = expect(keep);
            assert!(!expected.is_empty(), "{condition}");
            assert_eq!(ids_where(&cat, condition.clone()), expected, "{condition}");
        }
    }

    #[test]
    fn null_cells_match_only_is_null() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        // Rows 2 and 9 have no units: `ne` does not keep them.
        let ne = ids_where(&cat, json!({"column": "units", "op": "ne", "value": 4}));
        assert!(!ne.contains(&2) && !ne.contains(&9), "{ne:?}");
        assert_eq!(ne.len(), 12 - 2 - 2);
        // A null comparison inside `any` does not hide the other branch (row 2, 9: gadgets
        // without units), nor does it count as a match on its own (row 8: no product, units 2).
        assert_eq!(
            ids_where(
                &cat,
                json!({"any": [
                    {"column": "units", "op": "lt", "value": 2},
                    {"column": "product", "op": "eq", "value": "gadget"},
                ]})
            ),
            expect(|r| r.units.is_some_and(|u| u < 2) || r.product == Some("gadget"))
        );
        assert_eq!(
            ids_where(
                &cat,
                json!({"any": [
                    {"column": "units", "op": "ne", "value": 4},
                    {"column": "paid", "op": "is_null"},
                ]})
            ),
            expect(|r| r.units.is_some_and(|u| u != 4) || r.paid.is_none())
        );
        // Null product never satisfies `in` or `contains` or `between`.
        for condition in [
            json!({"column": "product", "op": "in", "value": ["gadget", "gizmo", "widget"]}),
            json!({"column": "product", "op": "contains", "value": ""}),
            json!({"column": "product", "op": "between", "value": ["a", "z"]}),
        ] {
            assert_eq!(
                ids_where(&cat, condition.clone()),
                expect(|r| r.product.is_some()),
                "{condition}"
            );
        }
        // Nulls come back as JSON null.
        let r = filter(
            &cat,
            json!({"dataset": "t", "where": {"column": "id", "op": "eq", "value": 8}}),
        )
        .unwrap();
        assert_eq!(
            r["rows"],
            json!([[8, "east", null, 2, null, false, "see p. 2"]])
        );
    }

    /// `a` before `b` with `None` last whichever the direction.
    fn nulls_last<T: PartialOrd>(a: Option<T>, b: Option<T>, descending: bool) -> CmpOrdering {
        match (a, b) {
            (None, None) => CmpOrdering::Equal,
            (None, Some(_)) => CmpOrdering::Greater,
            (Some(_), None) => CmpOrdering::Less,
            (Some(a), Some(b)) => {
                let o = a.partial_cmp(&b).unwrap();
                if descending {
                    o.reverse()
                } else {
                    o
                }
            }
        }
    }

    #[test]
    fn select_and_multi_column_sort() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let r = filter(
            &cat,
            json!({
                "dataset": "t",
                "select": ["region", "units", "id"],
                "sort": ["region", {"column": "units", "descending": true}],
            }),
        )
        .unwrap();
        assert_eq!(r["columns"], json!(["region", "units", "id"]));
        assert_eq!(
            r["schema"],
            json!([
                {"name": "region", "dtype": "str"},
                {"name": "units", "dtype": "i64"},
                {"name": "id", "dtype": "i64"},
            ])
        );
        let mut rows = ROWS.to_vec();
        // Vec::sort_by is stable, as the operation's sort must be.
        rows.sort_by(|a, b| {
            a.region
                .cmp(b.region)
                .then(nulls_last(a.units, b.units, true))
        });
        let expected: Vec<Value> = rows
            .iter()
            .map(|r| json!([r.region, r.units, r.id]))
            .collect();
        assert_eq!(r["rows"], Value::Array(expected));
        assert_eq!(r["row_count"], 12);
        assert_eq!(r["truncated"], false);

        // Nulls last in both directions; ties keep file order (prices 10.0 are rows 2, 5, 9).
        for descending in [false, true] {
            for column in ["units", "price", "product", "paid"] {
                let r = filter(
                    &cat,
                    json!({
                        "dataset": "t",
                        "select": ["id", column],
                        "sort": [{"column": column, "descending": descending}],
                    }),
                )
                .unwrap();
                let mut rows = ROWS.to_vec();
                rows.sort_by(|a, b| match column {
                    "units" => nulls_last(a.units, b.units, descending),
                    "price" => nulls_last(a.price, b.price, descending),
                    "product" => nulls_last(a.product, b.product, descending),
                    _ => nulls_last(a.paid, b.paid, descending),
                });
                let expected: Vec<i64> = rows.iter().map(|r| r.id).collect();
                assert_eq!(ids_of(&r), expected, "{column} descending={descending}");
            }
        }

        // Multi-column with a descending string key and a boolean key.
        let r = filter(
            &cat,
            json!({
                "dataset": "t",
                "select": ["id", "region", "paid"],
                "sort": [{"column": "region", "descending": true}, {"column": "paid"}],
            }),
        )
        .unwrap();
        let mut rows = ROWS.to_vec();
        rows.sort_by(|a, b| {
            b.region
                .cmp(a.region)
                .then(nulls_last(a.paid, b.paid, false))
        });
        assert_eq!(ids_of(&r), rows.iter().map(|r| r.id).collect::<Vec<_>>());
    }

    #[test]
    fn sort_keeps_ties_in_input_order_on_many_rows() {
        // Enough rows with few distinct keys that an unstable sort would visibly reorder ties.
        const N: i64 = 5_000;
        let dir = TempDir::new();
        let mut body = String::from("id,k,s,t\n");
        for i in 0..N {
            let s = if i % 7 == 0 {
                String::new()
            } else {
                format!("s{}", i % 2)
            };
            writeln!(body, "{i},{},{s},t{}", (i * 7919) % 3, (i * 31) % 4).unwrap();
        }
        let path = dir.write("ties.csv", &body);
        let cat = crate::test_support::csv_catalog("ties", &path);
        for sort in [
            json!(["t"]),
            json!([{"column": "t", "descending": true}]),
            json!(["k"]),
            json!([{"column": "k", "descending": true}]),
            json!(["s", {"column": "k", "descending": true}]),
        ] {
            let r = filter(
                &cat,
                json!({"dataset": "ties", "select": ["id"], "sort": sort, "preview_limit": 10000}),
            )
            .unwrap();
            // Each key's value for row i; "t0" < … < "t3" and "s0" < "s1" order like the digits.
            let value = |column: &str, i: i64| match column {
                "k" => Some((i * 7919) % 3),
                "t" => Some((i * 31) % 4),
                _ => (i % 7 != 0).then_some(i % 2),
            };
            let keys: Vec<(String, bool)> = sort
                .as_array()
                .unwrap()
                .iter()
                .map(|k| match k {
                    Value::String(c) => (c.clone(), false),
                    _ => (
                        k["column"].as_str().unwrap().to_owned(),
                        k["descending"] == true,
                    ),
                })
                .collect();
            let mut ids: Vec<i64> = (0..N).collect();
            ids.sort_by(|a, b| {
                keys.iter().fold(CmpOrdering::Equal, |o, (c, desc)| {
                    o.then(nulls_last(value(c, *a), value(c, *b), *desc))
                })
            });
            assert_eq!(ids_of(&r), ids, "{sort}");
        }
    }

    /// `output.csv` holds every output row (not just the preview), exactly as a plain-Rust
    /// reading of the test data predicts: header, nulls as empty fields, floats with a point.
    #[test]
    fn output_csv_holds_the_full_output() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let (result, text) = filter_csv(
            &cat,
            json!({"dataset": "t",
                   "where": {"column": "units", "op": "ge", "value": 2},
                   "select": ["id", "region", "product", "price", "paid", "note"],
                   "sort": [{"column": "price", "descending": true}],
                   "preview_limit": 2}),
        );
        let mut kept: Vec<Row> = ROWS
            .iter()
            .filter(|r| r.units.is_some_and(|u| u >= 2))
            .copied()
            .collect();
        // Stable, descending, nulls last.
        kept.sort_by(|a, b| match (a.price, b.price) {
            (Some(x), Some(y)) => y.partial_cmp(&x).unwrap(),
            (Some(_), None) => CmpOrdering::Less,
            (None, Some(_)) => CmpOrdering::Greater,
            (None, None) => CmpOrdering::Equal,
        });
        let mut expected = String::from("id,region,product,price,paid,note\n");
        for r in &kept {
            writeln!(
                expected,
                "{},{},{},{},{},{}",
                r.id,
                r.region,
                cell(r.product),
                cell(r.price.map(|p| format!("{p:?}"))),
                cell(r.paid),
                cell(r.note)
            )
            .unwrap();
        }
        assert!(kept.len() > 2);
        assert_eq!(text, expected);
        // The inline part is still only the preview.
        assert_eq!(result["row_count"], kept.len());
        assert_eq!(result["truncated"], true);
        assert_eq!(
            ids_of(&result),
            kept.iter().take(2).map(|r| r.id).collect::<Vec<_>>()
        );
    }

    #[test]
    fn output_csv_after_group_by_and_limit() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let (_, text) = filter_csv(
            &cat,
            json!({"dataset": "t",
                   "group_by": {"by": ["region"], "aggregations": [
                       {"fn": "count"}, {"column": "units", "fn": "sum"}]},
                   "preview_limit": 0}),
        );
        let mut groups: BTreeMap<&str, (usize, i64)> = BTreeMap::new();
        for r in ROWS {
            let g = groups.entry(r.region).or_default();
            g.0 += 1;
            g.1 += r.units.unwrap_or(0);
        }
        let mut expected = String::from("region,count,units_sum\n");
        for (region, (count, units)) in &groups {
            writeln!(expected, "{region},{count},{units}").unwrap();
        }
        assert_eq!(text, expected);

        // `limit` caps the file too; an empty output is just the header.
        let (r, text) = filter_csv(
            &cat,
            json!({"dataset": "t", "select": ["id"], "limit": 3, "preview_limit": 1}),
        );
        assert_eq!(text, "id\n1\n2\n3\n");
        assert_eq!(r["truncated"], true);
        let (_, text) = filter_csv(
            &cat,
            json!({"dataset": "t", "select": ["id"],
                   "where": {"column": "id", "op": "gt", "value": 1000}}),
        );
        assert_eq!(text, "id\n");
    }

    #[test]
    fn limit_and_preview() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let top = filter(
            &cat,
            json!({"dataset": "t", "select": ["id"], "limit": 3,
                   "sort": [{"column": "id", "descending": true}]}),
        )
        .unwrap();
        assert_eq!(ids_of(&top), [12, 11, 10]);
        assert_eq!(top["row_count"], 3);
        assert_eq!(top["input_row_count"], 12);

        // Without a sort, the first rows in file order; the limit applies after `where`.
        let first = filter(
            &cat,
            json!({"dataset": "t", "select": ["id"], "limit": 2,
                   "where": {"column": "region", "op": "eq", "value": "south"}}),
        )
        .unwrap();
        assert_eq!(ids_of(&first), [2, 6]);

        let over = filter(
            &cat,
            json!({"dataset": "t", "select": ["id"], "limit": 500}),
        )
        .unwrap();
        assert_eq!(over["row_count"], 12);

        // The preview is a prefix of the output; row_count is the whole output's.
        let preview = filter(
            &cat,
            json!({"dataset": "t", "select": ["id"], "sort": ["units"], "preview_limit": 4}),
        )
        .unwrap();
        // Sorted by `units`, which is not selected.
        assert_eq!(preview["columns"], json!(["id"]));
        assert_eq!(preview["row_count"], 12);
        assert_eq!(preview["truncated"], true);
        let mut rows = ROWS.to_vec();
        rows.sort_by(|a, b| nulls_last(a.units, b.units, false));
        let expected: Vec<i64> = rows.iter().take(4).map(|r| r.id).collect();
        assert_eq!(ids_of(&preview), expected);

        let none = filter(&cat, json!({"dataset": "t", "preview_limit": 0})).unwrap();
        assert_eq!(none["rows"], json!([]));
        assert_eq!(none["row_count"], 12);
        assert_eq!(none["truncated"], true);
        assert_eq!(none["columns"].as_array().unwrap().len(), 7);

        let all = filter(&cat, json!({"dataset": "t", "preview_limit": 12})).unwrap();
        assert_eq!(all["rows"].as_array().unwrap().len(), 12);
        assert_eq!(all["truncated"], false);
    }

    #[test]
    fn group_by_with_every_aggregation() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let r = filter(
            &cat,
            json!({"dataset": "t", "group_by": {"by": ["region"], "aggregations": [
                {"fn": "count"},
                {"column": "units", "fn": "count"},
                {"column": "units", "fn": "sum"},
                {"column": "price", "fn": "mean"},
                {"column": "units", "fn": "min"},
                {"column": "price", "fn": "max"},
                {"column": "units", "fn": "median"},
                {"column": "price", "fn": "median", "as": "mid_price"},
                {"column": "price", "fn": "std"},
                {"column": "units", "fn": "std"},
                {"column": "product", "fn": "min", "as": "first_product"},
                {"column": "product", "fn": "max"},
            ]}}),
        )
        .unwrap();
        assert_eq!(
            r["columns"],
            json!([
                "region",
                "count",
                "units_count",
                "units_sum",
                "price_mean",
                "units_min",
                "price_max",
                "units_median",
                "mid_price",
                "price_std",
                "units_std",
                "first_product",
                "product_max"
            ])
        );
        let mut groups: BTreeMap<&str, Vec<Row>> = BTreeMap::new();
        for row in ROWS {
            groups.entry(row.region).or_default().push(row);
        }
        let rows = r["rows"].as_array().unwrap();
        assert_eq!(r["row_count"], groups.len());
        assert_eq!(rows.len(), groups.len());
        // Sorted by key ascending: east, north, south, west.
        for (got, (region, members)) in rows.iter().zip(&groups) {
            let units: Vec<f64> = members
                .iter()
                .filter_map(|r| r.units)
                .map(|u| u as f64)
                .collect();
            let prices: Vec<f64> = members.iter().filter_map(|r| r.price).collect();
            let products: Vec<&str> = members.iter().filter_map(|r| r.product).collect();
            let what = |c: &str| format!("{region}.{c}");
            assert_eq!(got[0], json!(region));
            assert_eq!(got[1], json!(members.len()), "{}", what("count"));
            assert_eq!(got[2], json!(units.len()), "{}", what("units_count"));
            let units_sum: i64 = members.iter().filter_map(|r| r.units).sum();
            assert_eq!(got[3], json!(units_sum), "{}", what("units_sum"));
            close(&got[4], mean(&prices), &what("price_mean"));
            let units_min = members.iter().filter_map(|r| r.units).min();
            assert_eq!(got[5], json!(units_min), "{}", what("units_min"));
            let price_max = prices.iter().copied().reduce(f64::max);
            close(&got[6], price_max, &what("price_max"));
            close(&got[7], median(&units), &what("units_median"));
            close(&got[8], median(&prices), &what("mid_price"));
            close(&got[9], sample_std(&prices), &what("price_std"));
            close(&got[10], sample_std(&units), &what("units_std"));
            assert_eq!(
                got[11],
                json!(products.iter().min()),
                "{}",
                what("first_product")
            );
            assert_eq!(
                got[12],
                json!(products.iter().max()),
                "{}",
                what("product_max")
            );
        }
        // The data exercises what the aggregations must get right.
        let east_prices: Vec<f64> = groups["east"].iter().filter_map(|r| r.price).collect();
        assert_eq!(east_prices.len() % 2, 0, "an even-sized median");
        assert_eq!(
            groups["north"].iter().filter(|r| r.units.is_some()).count() % 2,
            0
        );
        assert_eq!(groups["west"].len(), 1, "a one-row group: std is null");
        assert_eq!(rows[3][9], Value::Null);
        // ddof = 1, not 0: for east's prices (2.5, 12.5) that is √50, not 5.
        close(&rows[0][9], Some(50f64.sqrt()), "east.price_std");
    }

    #[test]
    fn group_by_two_keys_with_null_keys() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let r = filter(
            &cat,
            json!({"dataset": "t", "group_by": {"by": ["region", "paid"], "aggregations": [
                {"fn": "count", "as": "n"},
                {"column": "units", "fn": "sum"},
            ]}}),
        )
        .unwrap();
        assert_eq!(r["columns"], json!(["region", "paid", "n", "units_sum"]));
        // Key order: region ascending, then paid false < true < null.
        let mut groups: BTreeMap<(&str, bool, Option<bool>), (usize, i64)> = BTreeMap::new();
        for row in ROWS {
            let g = groups
                .entry((row.region, row.paid.is_none(), row.paid))
                .or_default();
            g.0 += 1;
            g.1 += row.units.unwrap_or(0);
        }
        let expected: Vec<Value> = groups
            .iter()
            .map(|((region, _, paid), (n, sum))| json!([region, paid, n, sum]))
            .collect();
        assert_eq!(r["rows"], Value::Array(expected));
        // (south, null) is row 9 alone, whose units are missing: its sum is 0.
        assert!(r["rows"]
            .as_array()
            .unwrap()
            .contains(&json!(["south", null, 1, 0])));
    }

    #[test]
    fn where_group_select_sort_limit_in_that_order() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let r = filter(
            &cat,
            json!({
                "dataset": "t",
                "where": {"column": "paid", "op": "not_null"},
                "group_by": {"by": ["region"], "aggregations": [
                    {"column": "units", "fn": "sum", "as": "total"},
                ]},
                "select": ["total", "region"],
                "sort": [{"column": "total", "descending": true}],
                "limit": 2,
            }),
        )
        .unwrap();
        let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
        for row in ROWS.iter().filter(|r| r.paid.is_some()) {
            *totals.entry(row.region).or_default() += row.units.unwrap_or(0);
        }
        let mut ranked: Vec<(&str, i64)> = totals.into_iter().collect();
        ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
        let expected: Vec<Value> = ranked
            .iter()
            .take(2)
            .map(|(region, total)| json!([total, region]))
            .collect();
        assert_eq!(r["columns"], json!(["total", "region"]));
        assert_eq!(r["rows"], Value::Array(expected));
        assert_eq!(r["row_count"], 2);
        assert_eq!(r["input_row_count"], 12);
    }

    #[test]
    fn invalid_params_name_the_field() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let units = |op: &str, value: Value| json!({"column": "units", "op": op, "value": value});
        let w = |condition: Value| json!({"dataset": "t", "where": condition});
        let g = |group_by: Value| json!({"dataset": "t", "group_by": group_by});
        let many: Vec<Value> = (0..=MAX_PREDICATES)
            .map(|i| json!({"column": "id", "op": "eq", "value": i}))
            .collect();
        let mut deep = json!({"column": "id", "op": "eq", "value": 1});
        for _ in 0..=MAX_DEPTH {
            deep = json!({"all": [deep]});
        }
        let cases: Vec<(Value, &[&str])> = vec![
            (json!({}), &["params.dataset"]),
            (json!({"dataset": "t", "filter": {}}), &["params.filter"]),
            (
                json!({"dataset": "t", "where": "units > 3"}),
                &["params.where"],
            ),
            (w(units("like", json!("x"))), &["params.where.op", "like"]),
            (w(json!({"column": "units", "op": 5})), &["params.where.op"]),
            (w(json!({"op": "is_null"})), &["params.where.column"]),
            (
                w(json!({"all": [
                    units("eq", json!(1)),
                    {"column": "nope", "op": "eq", "value": 1},
                ]})),
                &["params.where.all[1].column", "nope"],
            ),
            (
                w(json!({"column": "units", "op": "eq", "value": 1, "extra": true})),
                &["params.where.extra"],
            ),
            (
                w(json!({"all": [units("eq", json!(1))], "any": []})),
                &["params.where", "both"],
            ),
            (
                w(json!({"all": [units("eq", json!(1))], "column": "x"})),
                &["params.where.column"],
            ),
            (w(json!({"any": []})), &["params.where.any"]),
            (w(json!({"all": "x"})), &["params.where.all"]),
            (w(json!({"any": [5]})), &["params.where.any[0]"]),
            (
                w(units("between", json!([1]))),
                &["params.where.value", "between"],
            ),
            (
                w(units("between", json!([1, 2, 3]))),
                &["params.where.value"],
            ),
            (w(units("between", json!(5))), &["params.where.value"]),
            (
                w(units("between", json!([7, 3]))),
                &["params.where.value", "low bound"],
            ),
            (
                w(units("between", json!(["a", 3]))),
                &["params.where.value[0]", "number"],
            ),
            (
                w(json!({"any": [units("lt", json!(1)), units("contains", json!("3"))]})),
                &["params.where.any[1].op", "contains", "units", "i64"],
            ),
            (
                w(units("lt", json!("5"))),
                &["params.where.value", "number", "i64"],
            ),
            (
                w(json!({"column": "region", "op": "eq", "value": 5})),
                &["params.where.value", "string"],
            ),
            (
                w(json!({"column": "paid", "op": "gt", "value": true})),
                &["params.where.op", "boolean"],
            ),
            (
                w(json!({"column": "paid", "op": "eq", "value": "true"})),
                &["params.where.value"],
            ),
            (
                w(units("eq", Value::Null)),
                &["params.where.value", "is_null"],
            ),
            (w(units("eq", json!([1]))), &["params.where.value"]),
            (
                w(units("is_null", json!(1))),
                &["params.where.value", "no value"],
            ),
            (w(units("in", json!([]))), &["params.where.value"]),
            (w(units("in", json!(4))), &["params.where.value", "array"]),
            (w(units("in", json!([4, null]))), &["params.where.value[1]"]),
            (w(units("in", json!([4, "x"]))), &["params.where.value[1]"]),
            (w(json!({"any": many})), &["params.where", "predicates"]),
            (w(deep), &["params.where", "nested"]),
            (
                json!({"dataset": "t", "select": ["id", "nope"]}),
                &["params.select", "nope"],
            ),
            (json!({"dataset": "t", "select": "id"}), &["params.select"]),
            (
                json!({"dataset": "t", "sort": ["nope"]}),
                &["params.sort[0]", "nope"],
            ),
            (
                json!({"dataset": "t", "sort": ["units"],
                       "group_by": {"by": ["region"], "aggregations": [{"fn": "count"}]}}),
                &["params.sort[0]", "units", "grouped"],
            ),
            (json!({"dataset": "t", "sort": [5]}), &["params.sort[0]"]),
            (json!({"dataset": "t", "sort": []}), &["params.sort"]),
            (json!({"dataset": "t", "sort": "id"}), &["params.sort"]),
            (
                json!({"dataset": "t", "sort": [{"column": "id", "descending": "yes"}]}),
                &["params.sort[0].descending"],
            ),
            (
                json!({"dataset": "t", "sort": [{"column": "id", "desc": true}]}),
                &["params.sort[0].desc"],
            ),
            (
                json!({"dataset": "t", "sort": ["id", "id"]}),
                &["params.sort[1]"],
            ),
            (g(json!(["region"])), &["params.group_by"]),
            (
                g(json!({"by": ["region"], "aggregations": [{"fn": "count"}], "having": 1})),
                &["params.group_by.having"],
            ),
            (
                g(json!({"aggregations": [{"fn": "count"}]})),
                &["params.group_by.by"],
            ),
            (
                g(json!({"by": ["nope"], "aggregations": [{"fn": "count"}]})),
                &["params.group_by.by", "nope"],
            ),
            (
                g(json!({"by": ["region"]})),
                &["params.group_by.aggregations"],
            ),
            (
                g(json!({"by": ["region"], "aggregations": []})),
                &["params.group_by.aggregations"],
            ),
            (
                g(json!({"by": ["region"], "aggregations": [{"column": "units", "fn": "avg"}]})),
                &["params.group_by.aggregations[0].fn", "avg"],
            ),
            (
                g(json!({"by": ["region"], "aggregations": [
                    {"fn": "count"},
                    {"column": "note", "fn": "sum"},
                ]})),
                &["params.group_by.aggregations[1].fn", "numeric", "note"],
            ),
            (
                g(json!({"by": ["region"], "aggregations": [{"column": "paid", "fn": "max"}]})),
                &["params.group_by.aggregations[0].fn"],
            ),
            (
                g(json!({"by": ["region"], "aggregations": [{"fn": "mean"}]})),
                &["params.group_by.aggregations[0].column"],
            ),
            (
                g(json!({"by": ["region"], "aggregations": [{"column": "nope", "fn": "max"}]})),
                &["params.group_by.aggregations[0].column", "nope"],
            ),
            (
                g(json!({"by": ["region"], "aggregations": [{"column": "region", "fn": "count"}]})),
                &["params.group_by.aggregations[0].column", "group key"],
            ),
            (
                g(json!({"by": ["region"], "aggregations": [
                    {"column": "units", "fn": "sum"},
                    {"column": "price", "fn": "sum", "as": "units_sum"},
                ]})),
                &["params.group_by.aggregations[1]", "units_sum"],
            ),
            (
                g(json!({"by": ["region"], "aggregations": [{"fn": "count", "as": "region"}]})),
                &["params.group_by.aggregations[0]", "region"],
            ),
            (
                g(json!({"by": ["region"], "aggregations": [{"fn": "count", "as": ""}]})),
                &["params.group_by.aggregations[0].as"],
            ),
            (
                g(json!({"by": ["region"], "aggregations": [{"fn": "count", "of": "x"}]})),
                &["params.group_by.aggregations[0].of"],
            ),
            (
                json!({"dataset": "t", "select": ["units"],
                       "group_by": {"by": ["region"], "aggregations": [{"fn": "count"}]}}),
                &["params.select", "units", "grouped"],
            ),
            (json!({"dataset": "t", "limit": -1}), &["params.limit"]),
            (json!({"dataset": "t", "limit": 1.5}), &["params.limit"]),
            (
                json!({"dataset": "t", "preview_limit": 10001}),
                &["params.preview_limit"],
            ),
        ];
        for (params, needles) in cases {
            let e = filter(&cat, params.clone()).unwrap_err();
            assert_eq!(e.code, failure::INVALID_PARAMS, "{params}: {e:?}");
            for needle in needles {
                assert!(e.message.contains(needle), "{params}: {}", e.message);
            }
        }
        // At the limits it is accepted.
        let mut deepest = json!({"column": "id", "op": "eq", "value": 1});
        for _ in 0..MAX_DEPTH {
            deepest = json!({"all": [deepest]});
        }
        assert_eq!(ids_where(&cat, deepest), [1]);
        let most: Vec<Value> = (0..MAX_PREDICATES)
            .map(|i| json!({"column": "id", "op": "eq", "value": i}))
            .collect();
        assert_eq!(ids_where(&cat, json!({"any": most})), expect(|_| true));
    }

    #[test]
    fn names_not_paths() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let e = filter(&cat, json!({"dataset": "../t.csv"})).unwrap_err();
        assert_eq!(e.code, failure::PATH_NOT_ALLOWED);
        let e = filter(&cat, json!({"dataset": "orders"})).unwrap_err();
        assert_eq!(e.code, failure::UNKNOWN_DATASET);
    }

    #[test]
    fn reports_progress_and_honours_cancel() {
        let dir = TempDir::new();
        let cat = catalog(&dir);
        let params = json!({
            "dataset": "t",
            "where": {"column": "units", "op": "gt", "value": 3},
            "group_by": {"by": ["region"], "aggregations": [{"fn": "count"}]},
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProgressUpdate>();
        let reporter = ProgressReporter::new(tx, Arc::new(AtomicBool::new(false)));
        let scratch = Scratch::at(dir.path().join("scratch"));
        run(&params, &cat, &reporter, &scratch).unwrap();
        let mut seen = Vec::new();
        while let Ok(u) = rx.try_recv() {
            seen.push(u);
        }
        let percents: Vec<u8> = seen.iter().map(|u| u.percent).collect();
        assert!(percents.windows(2).all(|w| w[0] < w[1]), "{percents:?}");
        assert!(percents.iter().all(|p| *p < 100), "{percents:?}");
        let stages: Vec<&str> = seen.iter().filter_map(|u| u.stage.as_deref()).collect();
        for stage in [
            "planning",
            "counting rows",
            "filtering",
            "aggregating",
            "writing output",
            "preparing preview",
        ] {
            assert!(stages.contains(&stage), "{stages:?}");
        }
        let matched = expect(|r| r.units.is_some_and(|u| u > 3)).len();
        assert!(
            seen.iter()
                .any(|u| u.message.as_deref() == Some(&format!("{matched} of 12 rows match"))),
            "{seen:?}"
        );

        let cancelled = ProgressReporter::new(
            tokio::sync::mpsc::unbounded_channel().0,
            Arc::new(AtomicBool::new(false)),
        );
        cancelled.cancel_flag().store(true, Ordering::Relaxed);
        let e = run(&params, &cat, &cancelled, &scratch).unwrap_err();
        assert_eq!(e.code, failure::CANCELLED);
    }

    #[test]
    fn a_broken_file_is_a_data_error_without_paths() {
        let dir = TempDir::new();
        let path = dir.write("good.csv", "a,b\n1,2\n3,4\n");
        let cat = crate::test_support::csv_catalog("good", &path);
        std::fs::write(&path, "a,b\n1,2\n3,4,5,6\n").unwrap();
        let e = filter(
            &cat,
            json!({"dataset": "good", "where": {"column": "a", "op": "gt", "value": 0}}),
        )
        .unwrap_err();
        assert_eq!(e.code, failure::DATA_ERROR, "{e:?}");
        assert!(e.message.starts_with("dataset `good`: "), "{}", e.message);
        assert!(
            !e.message.contains(dir.path().to_str().unwrap()),
            "{}",
            e.message
        );
    }

    /// The example dataset shipped with the runner, checked against a plain reading of the file.
    #[test]
    fn shipped_sales_example() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/sales.csv");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let at = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let (region_at, units_at, revenue_at) = (at("region"), at("units"), at("revenue"));
        let records: Vec<Vec<&str>> = lines
            .filter(|l| !l.is_empty())
            .map(|l| l.split(',').collect())
            .collect();
        let mut by_region: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
        for r in &records {
            let e = by_region.entry(r[region_at]).or_default();
            e.0 += r[revenue_at].parse::<f64>().unwrap();
            e.1 += 1;
        }
        assert!(by_region.len() >= 2);

        let cat = crate::test_support::csv_catalog("sales", &path);
        let r = filter(
            &cat,
            json!({"dataset": "sales", "group_by": {"by": ["region"], "aggregations": [
                {"column": "revenue", "fn": "sum"},
                {"fn": "count"},
            ]}}),
        )
        .unwrap();
        assert_eq!(r["input_row_count"], records.len());
        assert_eq!(r["columns"], json!(["region", "revenue_sum", "count"]));
        let rows = r["rows"].as_array().unwrap();
        assert_eq!(rows.len(), by_region.len());
        for (got, (region, (sum, count))) in rows.iter().zip(&by_region) {
            assert_eq!(got[0], json!(region));
            let a = got[1].as_f64().unwrap();
            assert!((a - sum).abs() < 1e-6, "{region}: {a} vs {sum}");
            assert_eq!(got[2], json!(count));
        }

        // A filter and sort on the same file.
        let r = filter(
            &cat,
            json!({"dataset": "sales",
                   "where": {"all": [
                       {"column": "region", "op": "eq", "value": "West"},
                       {"column": "units", "op": "ge", "value": 5},
                   ]},
                   "select": ["revenue"],
                   "sort": [{"column": "revenue", "descending": true}],
                   "preview_limit": 10000}),
        )
        .unwrap();
        let mut expected: Vec<f64> = records
            .iter()
            .filter(|r| r[region_at] == "West" && r[units_at].parse::<i64>().unwrap() >= 5)
            .map(|r| r[revenue_at].parse().unwrap())
            .collect();
        expected.sort_by(|a, b| b.partial_cmp(a).unwrap());
        assert!(!expected.is_empty());
        let got: Vec<f64> = r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row[0].as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), expected.len());
        for (a, e) in got.iter().zip(&expected) {
            assert!((a - e).abs() < 1e-9, "{a} vs {e}");
        }
    }
}
