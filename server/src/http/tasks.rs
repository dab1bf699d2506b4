//! `/api/v1/tasks`: create (validated, placed on a runner or queued, acknowledged only after
//! commit), list, get, result, event history and cancel.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use dap_protocol::{op, Assignment};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller};
use super::openapi::{ErrorBody, TaskBatchCreated, TaskCreated, TaskList, TaskView};
use super::ts;
use crate::dispatcher::{dataset_of, QueuedTask, Refusal};
use crate::store::{CancelOutcome, NewTask, Outcome, Scope, Task, TaskFilter, TaskStatus, WriteOp};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tasks", post(create).get(list))
        .route("/api/v1/tasks/batch", post(create_batch))
        .route("/api/v1/tasks/{id}", get(get_one))
        .route("/api/v1/tasks/{id}/result", get(result))
        .route("/api/v1/tasks/{id}/events", get(history))
        .route("/api/v1/tasks/{id}/cancel", post(cancel))
        .route("/api/v1/tasks/{id}/retry", post(retry))
}

/// JSON view of a task.
pub fn task_json(t: &Task) -> Value {
    let error = t.error_code.as_ref().map(
        |code| json!({ "code": code, "message": t.error_message.clone().unwrap_or_default() }),
    );
    json!({
        "task_id": t.id,
        "operation_code": t.operation_code,
        "operation": op::name(t.operation_code),
        "params": t.params,
        "status": t.status.as_str(),
        "runner_id": t.runner_id,
        "target_runner_id": t.target_runner_id,
        "attempt": t.attempt,
        "progress": t.progress,
        "stage": t.stage,
        "message": t.message,
        "error": error,
        "created_at": ts(Some(t.created_at)),
        "assigned_at": ts(t.assigned_at),
        "started_at": ts(t.started_at),
        "finished_at": ts(t.finished_at),
        "updated_at": ts(Some(t.updated_at)),
        "timeout_s": t.timeout_s,
        "max_attempts": t.max_attempts,
        "retried_from": t.retried_from,
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTask {
    operation_code: i64,
    /// The operation's params: `dataset` (a declared dataset's name) or `input: {task_id}` (a
    /// completed task's output, kept on its runner; the task is then pinned to that runner).
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    runner_id: Option<String>,
    #[serde(default)]
    queue: bool,
    /// Seconds an attempt may run (1..=604800); checked by [`validate_limits`].
    #[serde(default)]
    timeout_s: Option<Value>,
    /// Attempts the task may use (1..=10); default the server's `--max-attempts`.
    #[serde(default)]
    max_attempts: Option<Value>,
}

/// The validated per-task limits of a create.
#[derive(Debug, Clone, Copy, Default)]
struct TaskLimits {
    timeout_s: Option<u32>,
    max_attempts: Option<u32>,
}

/// Largest `timeout_s`: one week.
const MAX_TIMEOUT_S: u64 = 604_800;
const MAX_ATTEMPTS: u64 = 10;

/// An optional integer field in `1..=max`, or a 422 naming the field.
fn bounded_int(field: &str, v: &Option<Value>, max: u64) -> Result<Option<u32>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=max).contains(&n) => Ok(Some(n as u32)),
            _ => Err(ApiError::unprocessable(
                "invalid_request",
                format!("{field} must be an integer in 1..={max}, got {v}"),
            )),
        },
    }
}

fn validate_limits(req: &CreateTask) -> Result<TaskLimits, ApiError> {
    Ok(TaskLimits {
        timeout_s: bounded_int("timeout_s", &req.timeout_s, MAX_TIMEOUT_S)?,
        max_attempts: bounded_int("max_attempts", &req.max_attempts, MAX_ATTEMPTS)?,
    })
}

/// Largest accepted `params` (serialized); results and data never travel in params.
const MAX_PARAMS_BYTES: usize = 64 * 1024;

/// Checks a dataset name: a plain name, never a path or URL.
pub fn validate_dataset_name(name: &str) -> Result<(), ApiError> {
    let looks_like_path = name.contains('/')
        || name.contains('\\')
        || name.contains("..")
        || name.contains(':')
        || name.starts_with('~');
    if looks_like_path {
        return Err(ApiError::unprocessable(
            "path_not_allowed",
            format!("params.dataset must name a declared dataset, not a path or URL: {name:?}"),
        ));
    }
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        return Err(ApiError::unprocessable(
            "invalid_params",
            "params.dataset must be 1-128 characters of A-Z, a-z, 0-9, '_', '-', '.'",
        ));
    }
    Ok(())
}

/// A create request after validation.
struct Validated {
    code: u16,
    params: Value,
    params_json: String,
    /// `params.input.task_id`: the earlier task whose output this one reads (a pipeline step).
    input: Option<String>,
}

fn validate(req: &CreateTask) -> Result<Validated, ApiError> {
    let code = u16::try_from(req.operation_code)
        .ok()
        .filter(|c| op::is_known(*c))
        .ok_or_else(|| {
            ApiError::unprocessable(
                "unknown_operation",
                format!(
                    "operation_code {} is not one of 100 (fetch), 200 (filter), 300 (model), \
                     400 (export) or 1 (diagnostic no-op)",
                    req.operation_code
                ),
            )
        })?;
    let params = match &req.params {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return Err(ApiError::unprocessable(
                "invalid_params",
                "params must be a JSON object",
            ))
        }
    };
    let params_json = params.to_string();
    if params_json.len() > MAX_PARAMS_BYTES {
        return Err(ApiError::unprocessable(
            "invalid_params",
            format!("params is larger than {MAX_PARAMS_BYTES} bytes"),
        ));
    }
    let input = input_of(&params)?;
    match params.get("dataset") {
        Some(_) if input.is_some() => {
            return Err(ApiError::unprocessable(
                "invalid_params",
                "params.dataset and params.input are exclusive: give one of them",
            ))
        }
        Some(Value::String(name)) => validate_dataset_name(name)?,
        Some(_) => {
            return Err(ApiError::unprocessable(
                "invalid_params",
                "params.dataset must be a string",
            ))
        }
        None if code != op::NOOP && input.is_none() => {
            return Err(ApiError::unprocessable(
                "missing_dataset",
                format!(
                    "operation {code} ({}) needs params.dataset (the name of a dataset a runner \
                     declares) or params.input = {{\"task_id\": …}} (an earlier task's output)",
                    op::name(code)
                ),
            ))
        }
        None => {}
    }
    if let Some(r) = &req.runner_id {
        if r.is_empty() || r.len() > 64 {
            return Err(ApiError::unprocessable(
                "invalid_request",
                "runner_id must be a runner id",
            ));
        }
    }
    Ok(Validated {
        code,
        params,
        params_json,
        input,
    })
}

/// `params.input.task_id`, checked for shape: an object with exactly a task id.
fn input_of(params: &Value) -> Result<Option<String>, ApiError> {
    let Some(input) = params.get("input").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::unprocessable(
            "invalid_params",
            "params.input must be {\"task_id\": \"<id of a completed task>\"}",
        )
    };
    let obj = input.as_object().ok_or_else(bad)?;
    if obj.len() != 1 {
        return Err(bad());
    }
    match obj.get("task_id") {
        Some(Value::String(id))
            if !id.is_empty()
                && id.len() <= 64
                && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
        {
            Ok(Some(id.clone()))
        }
        _ => Err(bad()),
    }
}

/// The runner a pipeline step must run on: the one that ran (and keeps the output of) its
/// input task, which must have completed.
async fn input_runner(
    s: &AppState,
    input: &str,
    requested: Option<&str>,
) -> Result<String, ApiError> {
    let task = s.store.get_task(input).await?.ok_or_else(|| {
        ApiError::unprocessable(
            "unknown_input",
            format!("params.input.task_id: there is no task {input}"),
        )
    })?;
    if task.status != TaskStatus::Completed {
        return Err(ApiError::conflict(
            "input_not_ready",
            format!(
                "params.input.task_id: task {input} is {}; a pipeline step reads a completed task's output",
                task.status.as_str()
            ),
        ));
    }
    let runner = task.runner_id.ok_or_else(|| {
        ApiError::unprocessable(
            "unknown_input",
            format!("params.input.task_id: task {input} has no runner"),
        )
    })?;
    if let Some(r) = requested.filter(|r| *r != runner) {
        return Err(ApiError::unprocessable(
            "input_on_other_runner",
            format!(
                "params.input.task_id: the output of task {input} is kept on runner {runner}, \
                 not on runner {r}; omit runner_id or use {runner}"
            ),
        ));
    }
    Ok(runner)
}

/// A create that passed validation and holds its runner slot (if one was free), not yet
/// stored. [`unreserve`] gives the slot back if the commit fails; [`place`] pushes or queues
/// it after the commit.
struct Prepared {
    queued: QueuedTask,
    new: NewTask,
    assign_to: Option<String>,
    started: std::time::Instant,
}

/// Validates a create and reserves a slot on a runner for it when one is free. Errors are the
/// create's (see the OpenAPI responses of `POST /api/v1/tasks`); nothing is stored.
async fn prepare(s: &AppState, req: &CreateTask) -> Result<Prepared, ApiError> {
    let started = std::time::Instant::now();
    let Validated {
        code,
        params,
        params_json,
        input,
    } = validate(req)?;
    let limits = validate_limits(req)?;
    // A pipeline step is pinned to the runner that holds its input, like a targeted task.
    let target = match &input {
        Some(input) => Some(input_runner(s, input, req.runner_id.as_deref()).await?),
        None => req.runner_id.clone(),
    };
    let task_id = uuid::Uuid::now_v7().to_string();
    let queued = QueuedTask {
        task_id: task_id.clone(),
        operation_code: code,
        dataset: dataset_of(&params),
        params: std::sync::Arc::new(params),
        target: target.clone(),
        attempt: 0,
        timeout_s: limits.timeout_s,
    };
    let assign_to = match s.dispatcher.reserve_new(&queued) {
        Ok(r) => r,
        Err(Refusal::Busy { name, running }) if !req.queue => {
            let target = target.as_deref().unwrap_or_default();
            return Err(ApiError::Conflict {
                code: "runner_busy",
                message: format!(
                    "runner {name} ({target}) is busy with task {}; retry later or pass \"queue\": true",
                    running.join(", ")
                ),
                details: Some(json!({ "runner_id": target, "running_tasks": running })),
            });
        }
        Err(Refusal::Draining { name, running }) if !req.queue => {
            let target = target.as_deref().unwrap_or_default();
            return Err(ApiError::Conflict {
                code: "runner_draining",
                message: format!(
                    "runner {name} ({target}) is shutting down: it finishes the tasks it holds \
                     and takes no new ones; pass \"queue\": true to run the task when it is back"
                ),
                details: Some(json!({ "runner_id": target, "running_tasks": running })),
            });
        }
        Err(Refusal::Busy { .. } | Refusal::Draining { .. }) => None,
        Err(Refusal::Offline) => {
            let target = target.as_deref().unwrap_or_default();
            match s.store.get_runner(target).await? {
                Some(r) if r.revoked_at.is_none() => {
                    if let Some(p) = s.dispatcher.elsewhere(target).await {
                        // Connected to another node: stored queued, and that node's feed
                        // pushes it. Judged from what that node last reported (a few seconds
                        // old at most), so busy/draining refusals are best-effort here.
                        remote_target(&r, &p, code, queued.dataset.as_deref(), req.queue)?;
                    } else if !req.queue {
                        return Err(ApiError::conflict(
                            "runner_offline",
                            format!(
                                "runner {target} is offline; pass \"queue\": true to run the task when it reconnects"
                            ),
                        ));
                    }
                    None
                }
                _ => {
                    return Err(ApiError::not_found(
                        "runner_not_found",
                        format!("no runner {target}"),
                    ))
                }
            }
        }
        Err(Refusal::UnsupportedOperation) => {
            return Err(ApiError::unprocessable(
                "unsupported_operation",
                format!(
                    "runner {} does not support operation {code}",
                    target.as_deref().unwrap_or_default()
                ),
            ))
        }
        Err(Refusal::DatasetNotOnRunner(d)) => {
            return Err(ApiError::unprocessable(
                "unknown_dataset",
                format!(
                    "runner {} does not declare a dataset named {d:?}",
                    target.as_deref().unwrap_or_default()
                ),
            ))
        }
    };

    let new = NewTask {
        id: task_id,
        operation_code: code,
        params_json,
        target_runner_id: target,
        assign_to: assign_to.clone(),
        timeout_s: limits.timeout_s,
        max_attempts: limits.max_attempts,
        retried_from: None,
    };
    Ok(Prepared {
        queued,
        new,
        assign_to,
        started,
    })
}

/// Gives back the slot a prepared create reserved (its commit failed).
async fn unreserve(s: &AppState, p: &Prepared) {
    if let Some(r) = &p.assign_to {
        s.dispatcher.release(r, &p.new.id, 1).await;
    }
}

/// After the commit: pushes the task to the runner whose slot it reserved (requeued if that
/// runner just left), or queues it. Its status as the create's answer reports it.
async fn place(s: &AppState, p: Prepared) -> TaskStatus {
    let Prepared {
        queued,
        assign_to,
        started,
        ..
    } = p;
    match &assign_to {
        Some(runner) => {
            let a = Assignment {
                task_id: queued.task_id.clone(),
                attempt: 1,
                operation_code: queued.operation_code,
                params: (*queued.params).clone(),
            };
            s.dispatcher
                .arm_timeout(&queued.task_id, 1, queued.timeout_s);
            if s.dispatcher.push(runner, a) {
                s.metrics.observe_dispatch(started.elapsed());
                TaskStatus::Assigned
            } else {
                s.dispatcher
                    .requeue(
                        runner,
                        vec![(queued.task_id.clone(), 1)],
                        "runner_disconnected",
                    )
                    .await;
                TaskStatus::Queued
            }
        }
        None => {
            s.dispatcher.enqueue(queued).await;
            TaskStatus::Queued
        }
    }
}

/// Lets the runner sockets just handed an assignment write it before this request writes its
/// answer. A push wakes the socket's task into this worker's next slot, where it would wait for
/// the answer's write (~0.04 ms); the runner starts that much sooner, the client hears a few
/// microseconds later.
async fn runner_first() {
    tokio::task::yield_now().await;
}

#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks", security(("api_key" = [])),
    request_body = CreateTask,
    responses((status = 201, description = "Committed, then pushed to a runner or queued", body = TaskCreated),
        (status = 400, description = "`invalid_json`", body = ErrorBody), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody),
        (status = 404, description = "`runner_not_found`", body = ErrorBody),
        (status = 409, description = "`runner_busy`, `runner_draining`, `runner_offline`, `input_not_ready`", body = ErrorBody),
        (status = 422, description = "`unknown_operation`, `missing_dataset`, `path_not_allowed`, `invalid_params`, `unsupported_operation`, `unknown_dataset`, `unknown_input`, `input_on_other_runner`", body = ErrorBody)))]
async fn create(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateTask>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Scope::Write)?;
    let p = prepare(&s, &req).await?;
    if let Err(e) = s.store.write(WriteOp::CreateTask(p.new.clone())).await {
        unreserve(&s, &p).await;
        return Err(e.into());
    }
    let (task_id, runner_id) = (p.new.id.clone(), p.assign_to.clone());
    let status = place(&s, p).await;
    runner_first().await;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "task_id": task_id, "status": status.as_str(), "runner_id": runner_id })),
    ))
}

/// Most tasks one `POST /api/v1/tasks/batch` creates.
pub const MAX_BATCH_CREATE: usize = 1000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTasks {
    /// 1 to 1000 tasks, each as `POST /api/v1/tasks` takes it.
    tasks: Vec<CreateTask>,
}

#[utoipa::path(post, path = "/api/v1/tasks/batch", tag = "tasks", security(("api_key" = [])),
    request_body = CreateTasks,
    responses((status = 201, description = "All committed in one transaction, then each pushed to a runner or queued: `{tasks: [{task_id, status, runner_id}]}` in request order", body = TaskBatchCreated),
        (status = 400, description = "`invalid_json`", body = ErrorBody), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody),
        (status = 404, description = "`runner_not_found` (the message names `tasks[i]`)", body = ErrorBody),
        (status = 409, description = "As `POST /api/v1/tasks`, for the first task refused (`tasks[i]`; nothing is stored)", body = ErrorBody),
        (status = 422, description = "`invalid_request` (no tasks, more than 1000), or as `POST /api/v1/tasks` for the first invalid task (`tasks[i]`; nothing is stored)", body = ErrorBody)))]
async fn create_batch(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateTasks>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Scope::Write)?;
    if req.tasks.is_empty() || req.tasks.len() > MAX_BATCH_CREATE {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!(
                "tasks must hold 1 to {MAX_BATCH_CREATE} tasks, got {}",
                req.tasks.len()
            ),
        ));
    }
    // All or nothing: the first task refused gives back what the earlier ones reserved.
    let mut prepared = Vec::with_capacity(req.tasks.len());
    for (i, t) in req.tasks.iter().enumerate() {
        match prepare(&s, t).await {
            Ok(p) => prepared.push(p),
            Err(e) => {
                for p in &prepared {
                    unreserve(&s, p).await;
                }
                return Err(e.at(&format!("tasks[{i}]"), i));
            }
        }
    }
    let news = prepared.iter().map(|p| p.new.clone()).collect();
    if let Err(e) = s.store.write(WriteOp::CreateTasks(news)).await {
        for p in &prepared {
            unreserve(&s, p).await;
        }
        return Err(e.into());
    }
    let mut created = Vec::with_capacity(prepared.len());
    for p in prepared {
        let (task_id, runner_id) = (p.new.id.clone(), p.assign_to.clone());
        let status = place(&s, p).await;
        created
            .push(json!({ "task_id": task_id, "status": status.as_str(), "runner_id": runner_id }));
    }
    runner_first().await;
    Ok((StatusCode::CREATED, Json(json!({ "tasks": created }))))
}

/// Cluster mode: checks a task targeted at runner `r`, which is connected to another node
/// that last reported it as `p`. The runner's operations and datasets come from its last
/// greeting (stored); busy and draining from the presence report, so they may be seconds old.
fn remote_target(
    r: &crate::store::Runner,
    p: &crate::store::Presence,
    code: u16,
    dataset: Option<&str>,
    queue: bool,
) -> Result<(), ApiError> {
    let hello = r.hello.as_ref();
    let supports = hello
        .and_then(|h| h.get("operations"))
        .and_then(Value::as_array)
        .is_none_or(|ops| ops.iter().any(|o| o.as_u64() == Some(u64::from(code))));
    if !supports {
        return Err(ApiError::unprocessable(
            "unsupported_operation",
            format!("runner {} does not support operation {code}", r.id),
        ));
    }
    if let Some(d) = dataset {
        let declared = hello
            .and_then(|h| h.get("datasets"))
            .and_then(Value::as_array)
            .is_none_or(|ds| {
                ds.iter()
                    .any(|x| x.get("name").and_then(Value::as_str) == Some(d))
            });
        if !declared {
            return Err(ApiError::unprocessable(
                "unknown_dataset",
                format!("runner {} does not declare a dataset named {d:?}", r.id),
            ));
        }
    }
    if queue {
        return Ok(());
    }
    if p.draining {
        return Err(ApiError::Conflict {
            code: "runner_draining",
            message: format!(
                "runner {} ({}) is shutting down: it finishes the tasks it holds and takes no \
                 new ones; pass \"queue\": true to run the task when it is back",
                r.name, r.id
            ),
            details: Some(json!({ "runner_id": r.id, "running_tasks": [] })),
        });
    }
    if p.running >= p.slots {
        return Err(ApiError::Conflict {
            code: "runner_busy",
            message: format!(
                "runner {} ({}) is busy ({} of {} slots taken, as reported by the node it is \
                 connected to); retry later or pass \"queue\": true",
                r.name, r.id, p.running, p.slots
            ),
            details: Some(json!({ "runner_id": r.id, "running_tasks": [] })),
        });
    }
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    status: Option<String>,
    runner_id: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", security(("api_key" = [])), params(ListQuery),
    responses((status = 200, description = "Newest first", body = TaskList), (status = 400, body = ErrorBody), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody)))]
async fn list(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Read)?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(v) => Some(TaskStatus::parse(v).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("status must be one of queued, assigned, running, completed, failed, cancelled (got {v:?})"),
            )
        })?),
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be between 1 and 500",
        ));
    }
    let filter = TaskFilter {
        status,
        runner_id: q.runner_id.filter(|r| !r.is_empty()),
        limit,
        offset: q.offset.unwrap_or(0),
    };
    let (tasks, total) = s.store.list_tasks(&filter).await?;
    Ok(Json(json!({
        "tasks": tasks.iter().map(task_json).collect::<Vec<_>>(),
        "total": total,
        "limit": filter.limit,
        "offset": filter.offset,
    })))
}

async fn load(s: &AppState, id: &str) -> Result<Task, ApiError> {
    s.store
        .get_task(id)
        .await?
        .ok_or_else(|| ApiError::not_found("task_not_found", format!("no task {id}")))
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks", security(("api_key" = [])), params(("id" = String, Path, description = "Task id")),
    responses((status = 200, body = TaskView), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody), (status = 404, description = "`task_not_found`", body = ErrorBody)))]
async fn get_one(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Read)?;
    Ok(Json(task_json(&load(&s, &id).await?)))
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}/result", tag = "tasks", security(("api_key" = [])), params(("id" = String, Path, description = "Task id")),
    responses((status = 200, description = "`{result_data, artifacts}`", body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`result_not_ready`, `task_failed`", body = ErrorBody)))]
async fn result(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Read)?;
    let t = load(&s, &id).await?;
    match t.status {
        TaskStatus::Completed => Ok(Json(json!({
            "task_id": t.id,
            "status": t.status.as_str(),
            "operation_code": t.operation_code,
            "result_data": t.result_data,
            "artifacts": super::artifacts::artifacts_json(&s, &t.id).await?,
        }))),
        TaskStatus::Failed | TaskStatus::Cancelled => Err(ApiError::Conflict {
            code: "task_failed",
            message: format!(
                "task {id} {} without a result: {}",
                t.status.as_str(),
                t.error_message.as_deref().unwrap_or("no message")
            ),
            details: Some(json!({
                "status": t.status.as_str(),
                "task_error": { "code": t.error_code, "message": t.error_message },
            })),
        }),
        other => Err(ApiError::Conflict {
            code: "result_not_ready",
            message: format!("task {id} is {}; its result is not ready", other.as_str()),
            details: Some(json!({ "status": other.as_str(), "progress": t.progress })),
        }),
    }
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}/events", tag = "tasks", security(("api_key" = [])), params(("id" = String, Path, description = "Task id")),
    responses((status = 200, description = "The task's stored events, oldest first", body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn history(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Read)?;
    load(&s, &id).await?;
    let events = s.store.events_after(0, Some(&id), 10_000).await?;
    let events: Vec<Value> = events
        .iter()
        .map(|e| {
            let mut v: Value = serde_json::from_str(&e.json).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("id".into(), e.id.into());
            }
            v
        })
        .collect();
    Ok(Json(json!({ "task_id": id, "events": events })))
}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", tag = "tasks", security(("api_key" = [])), params(("id" = String, Path, description = "Task id")),
    responses((status = 200, description = "Cancelled; the runner is told to stop", body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`task_finished`", body = ErrorBody)))]
async fn cancel(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Write)?;
    let outcome = s
        .store
        .write(WriteOp::Cancel {
            task_id: id.clone(),
        })
        .await?;
    match outcome {
        Outcome::Cancel(CancelOutcome::NotFound) => Err(ApiError::not_found(
            "task_not_found",
            format!("no task {id}"),
        )),
        Outcome::Cancel(CancelOutcome::AlreadyFinished(st)) => Err(ApiError::Conflict {
            code: "task_finished",
            message: format!("task {id} already {}", st.as_str()),
            details: Some(json!({ "status": st.as_str() })),
        }),
        Outcome::Cancel(CancelOutcome::Cancelled { runner, .. }) => {
            s.dispatcher.remove_queued(&id);
            if let Some((runner_id, attempt)) = runner {
                // The slot stays taken until the runner confirms it stopped (or disconnects).
                s.dispatcher.cancel_on_runner(&runner_id, &id, attempt);
            }
            Ok(Json(task_json(&load(&s, &id).await?)))
        }
        other => Err(ApiError::Internal(format!(
            "unexpected cancel outcome {other:?}"
        ))),
    }
}

/// `POST /api/v1/tasks/{id}/retry`: a failed or cancelled task runs again as a **new** task (same
/// operation, params, target, timeout and max_attempts; `retried_from` links it back). The new
/// task is placed like a create with `"queue": true`: a busy or offline target queues it.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/retry", tag = "tasks", security(("api_key" = [])), params(("id" = String, Path, description = "Task id of a failed or cancelled task")),
    responses((status = 201, description = "A new task `{task_id, status, runner_id, retried_from}` with the same operation, params and target", body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`task_not_retryable` (not failed or cancelled), `runner_busy`, `runner_offline`", body = ErrorBody)))]
async fn retry(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let started = std::time::Instant::now();
    caller.require(Scope::Write)?;
    let old = load(&s, &id).await?;
    if !matches!(old.status, TaskStatus::Failed | TaskStatus::Cancelled) {
        return Err(ApiError::Conflict {
            code: "task_not_retryable",
            message: format!(
                "task {id} is {}; only failed or cancelled tasks can be retried",
                old.status.as_str()
            ),
            details: Some(json!({ "status": old.status.as_str() })),
        });
    }
    let task_id = uuid::Uuid::now_v7().to_string();
    let queued = QueuedTask {
        task_id: task_id.clone(),
        operation_code: old.operation_code,
        dataset: dataset_of(&old.params),
        params: std::sync::Arc::new(old.params.clone()),
        target: old.target_runner_id.clone(),
        attempt: 0,
        timeout_s: old.timeout_s,
    };
    let assign_to = match s.dispatcher.reserve_new(&queued) {
        Ok(r) => r,
        Err(Refusal::Busy { .. } | Refusal::Draining { .. } | Refusal::Offline) => None,
        Err(Refusal::UnsupportedOperation) => {
            return Err(ApiError::unprocessable(
                "unsupported_operation",
                format!(
                    "runner {} does not support operation {}",
                    old.target_runner_id.as_deref().unwrap_or_default(),
                    old.operation_code
                ),
            ))
        }
        Err(Refusal::DatasetNotOnRunner(d)) => {
            return Err(ApiError::unprocessable(
                "unknown_dataset",
                format!(
                    "runner {} does not declare a dataset named {d:?}",
                    old.target_runner_id.as_deref().unwrap_or_default()
                ),
            ))
        }
    };
    let new = NewTask {
        id: task_id.clone(),
        operation_code: old.operation_code,
        params_json: old.params.to_string(),
        target_runner_id: old.target_runner_id.clone(),
        assign_to: assign_to.clone(),
        timeout_s: old.timeout_s,
        max_attempts: old.max_attempts,
        retried_from: Some(id.clone()),
    };
    let p = Prepared {
        queued,
        new,
        assign_to,
        started,
    };
    if let Err(e) = s.store.write(WriteOp::CreateTask(p.new.clone())).await {
        unreserve(&s, &p).await;
        return Err(e.into());
    }
    let assign_to = p.assign_to.clone();
    let status = place(&s, p).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "task_id": task_id,
            "status": status.as_str(),
            "runner_id": assign_to,
            "retried_from": id,
        })),
    ))
}
