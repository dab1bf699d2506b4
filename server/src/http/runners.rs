//! `/api/v1/runners` and `/api/v1/datasets`: enrol runners (credential shown once), list them
//! with live state, revoke them (closing their socket), exchange a runner credential for a
//! socket JWT, and list the datasets runners advertise.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use dap_protocol::{close_code, DatasetInfo};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{bearer, ApiJson, Caller};
use super::openapi::ErrorBody;
use super::ts;
use crate::auth::jwt::RUNNER_TOKEN_TTL_S;
use crate::auth::secrets::{self, RUNNER_TOKEN_PREFIX};
use crate::auth::{AuthError, TokenKind};
use crate::dispatcher::RunnerState;
use crate::store::{Runner, Scope};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/runners", post(enrol).get(list))
        .route("/api/v1/runners/{id}", get(get_one).delete(revoke))
        .route(dap_protocol::TOKEN_PATH, post(token))
        .route("/api/v1/datasets", get(datasets))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Enrol {
    name: String,
}

/// Creates a runner and its credential. Shared by the REST route and the CLI.
pub async fn enrol_runner(
    s: &crate::store::Store,
    name: &str,
) -> Result<(String, String), ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "name must be 1-100 characters",
        ));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let token = format!("{RUNNER_TOKEN_PREFIX}{id}_{}", secrets::random_secret());
    let hash = secrets::hash(token.clone()).await;
    s.create_runner(&id, name, &hash).await?;
    Ok((id, token))
}

#[utoipa::path(post, path = "/api/v1/runners", tag = "runners", security(("api_key" = [])), request_body = Enrol,
    responses((status = 201, description = "`{runner_id, token}`: the credential, shown once", body = serde_json::Value), (status = 422, body = ErrorBody), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody)))]
async fn enrol(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<Enrol>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Scope::Admin)?;
    let (id, token) = enrol_runner(&s.store, &req.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "runner_id": id, "name": req.name.trim(), "token": token })),
    ))
}

fn runner_json(s: &AppState, r: &Runner) -> Value {
    let live = s.dispatcher.live(&r.id);
    let hello = r.hello.as_ref();
    let state = live.as_ref().map_or(RunnerState::Offline, |l| l.state());
    let (slots, operations, datasets, running) = match &live {
        Some(l) => (
            json!(l.slots),
            json!(l.operations),
            json!(l.datasets),
            l.running.clone(),
        ),
        None => (
            hello
                .and_then(|h| h.get("slots"))
                .cloned()
                .unwrap_or(Value::Null),
            hello
                .and_then(|h| h.get("operations"))
                .cloned()
                .unwrap_or_else(|| json!([])),
            hello
                .and_then(|h| h.get("datasets"))
                .cloned()
                .unwrap_or_else(|| json!([])),
            Vec::new(),
        ),
    };
    json!({
        "runner_id": r.id,
        "name": r.name,
        "state": state.as_str(),
        "slots": slots,
        "slots_used": running.len(),
        "current_task": running.first(),
        "current_tasks": running,
        "operations": operations,
        "datasets": datasets,
        "version": hello.and_then(|h| h.get("version")).cloned(),
        "created_at": ts(Some(r.created_at)),
        "connected_at": ts(live.as_ref().map(|l| l.connected_at)),
        "last_seen_at": ts(if live.is_some() { Some(crate::store::now_ms()) } else { r.last_seen_at }),
    })
}

#[utoipa::path(get, path = "/api/v1/runners", tag = "runners", security(("api_key" = [])),
    responses((status = 200, description = "`{runners: [...]}` with live state", body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody)))]
async fn list(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Read)?;
    let runners = s.store.list_runners().await?;
    let items: Vec<Value> = runners.iter().map(|r| runner_json(&s, r)).collect();
    Ok(Json(json!({ "runners": items })))
}

async fn load(s: &AppState, id: &str) -> Result<Runner, ApiError> {
    match s.store.get_runner(id).await? {
        Some(r) if r.revoked_at.is_none() => Ok(r),
        _ => Err(ApiError::not_found(
            "runner_not_found",
            format!("no runner {id}"),
        )),
    }
}

#[utoipa::path(get, path = "/api/v1/runners/{id}", tag = "runners", security(("api_key" = [])), params(("id" = String, Path, description = "Runner id")),
    responses((status = 200, body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody), (status = 404, description = "`runner_not_found`", body = ErrorBody)))]
async fn get_one(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Read)?;
    let r = load(&s, &id).await?;
    Ok(Json(runner_json(&s, &r)))
}

#[utoipa::path(delete, path = "/api/v1/runners/{id}", tag = "runners", security(("api_key" = [])), params(("id" = String, Path, description = "Runner id")),
    responses((status = 200, description = "Revoked; its socket is closed with 4001", body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Admin)?;
    if !s.store.revoke_runner(&id).await? {
        return Err(ApiError::not_found(
            "runner_not_found",
            format!("no runner {id}"),
        ));
    }
    let was_connected =
        s.dispatcher
            .close_runner(&id, close_code::REVOKED, "runner credential revoked");
    Ok(Json(
        json!({ "runner_id": id, "revoked": true, "disconnected": was_connected }),
    ))
}

/// Verifies a runner enrolment credential (`dapr_…`) and returns the runner id.
pub async fn verify_runner_credential(s: &AppState, parts: &Parts) -> Result<String, AuthError> {
    let presented = bearer(parts).ok_or(AuthError::Missing)?;
    let id = secrets::parse_id(presented, RUNNER_TOKEN_PREFIX).ok_or(AuthError::Invalid)?;
    let r = s.store.get_runner(id).await?.ok_or(AuthError::Invalid)?;
    if !secrets::verify(presented.to_owned(), r.hash.clone()).await {
        return Err(AuthError::Invalid);
    }
    if r.revoked_at.is_some() {
        return Err(AuthError::Revoked);
    }
    Ok(r.id)
}

#[utoipa::path(post, path = "/api/v1/runners/token", tag = "runners", security(("runner_credential" = [])),
    responses((status = 200, description = "`{token, expires_in}`: a socket JWT", body = serde_json::Value), (status = 401, body = ErrorBody)))]
async fn token(
    State(s): State<AppState>,
    req: axum::extract::Request,
) -> Result<Json<Value>, ApiError> {
    let (parts, _) = req.into_parts();
    let runner_id = verify_runner_credential(&s, &parts).await?;
    let jwt = s
        .jwt
        .issue(TokenKind::Runner, &runner_id, RUNNER_TOKEN_TTL_S, None);
    Ok(Json(json!({
        "token": jwt,
        "token_type": "Bearer",
        "expires_in": RUNNER_TOKEN_TTL_S,
        "runner_id": runner_id,
    })))
}

/// Datasets advertised by runners (connected ones first-hand, offline ones from their last
/// greeting), merged by name.
#[utoipa::path(get, path = "/api/v1/datasets", tag = "runners", security(("api_key" = [])),
    responses((status = 200, description = "Datasets connected runners advertise", body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody)))]
async fn datasets(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Read)?;
    let mut by_name: BTreeMap<String, (DatasetInfo, Vec<Value>)> = BTreeMap::new();
    for r in s.store.list_runners().await? {
        let live = s.dispatcher.live(&r.id);
        let online = live.is_some();
        let list: Vec<DatasetInfo> = match live {
            Some(l) => l.datasets,
            None => r
                .hello
                .as_ref()
                .and_then(|h| h.get("datasets"))
                .and_then(|d| serde_json::from_value(d.clone()).ok())
                .unwrap_or_default(),
        };
        for d in list {
            let entry = by_name
                .entry(d.name.clone())
                .or_insert_with(|| (d.clone(), Vec::new()));
            entry
                .1
                .push(json!({ "runner_id": r.id, "name": r.name, "online": online }));
        }
    }
    let items: Vec<Value> = by_name
        .into_values()
        .map(|(d, runners)| {
            let mut v = serde_json::to_value(&d).unwrap_or(Value::Null);
            v["runners"] = Value::Array(runners);
            v
        })
        .collect();
    Ok(Json(json!({ "datasets": items })))
}
