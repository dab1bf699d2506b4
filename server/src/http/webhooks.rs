//! `/api/v1/webhooks` (admin scope): subscribe a URL to event types, read the delivery log,
//! redeliver. The secret is shown once at creation (generated `whsec_…` unless supplied).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::openapi::ErrorBody;
use super::ts;
use crate::store::webhooks::Webhook;
use crate::store::{now_ms, Scope, WEBHOOK_EVENT_TYPES};
use crate::webhooks::{check_target, new_secret};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/webhooks", post(create).get(list))
        .route(
            "/api/v1/webhooks/{id}",
            get(get_one).patch(update).delete(remove),
        )
        .route("/api/v1/webhooks/{id}/deliveries", get(deliveries))
        .route(
            "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            post(redeliver),
        )
}

fn hook_json(h: &Webhook) -> Value {
    json!({
        "id": h.id,
        "url": h.url,
        "events": h.events,
        "enabled": h.enabled,
        "disabled_reason": h.disabled_reason,
        "created_at": ts(Some(h.created_at)),
        "updated_at": ts(Some(h.updated_at)),
    })
}

fn validate_events(events: &[String]) -> Result<(), ApiError> {
    if events.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "events must name at least one event type (or \"*\")",
        ));
    }
    for e in events {
        if e != "*" && !WEBHOOK_EVENT_TYPES.contains(&e.as_str()) {
            return Err(ApiError::unprocessable(
                "invalid_request",
                format!(
                    "unknown event type {e:?}: use {} or \"*\"",
                    WEBHOOK_EVENT_TYPES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn validate_url(s: &AppState, url: &str) -> Result<(), ApiError> {
    check_target(url, s.settings.webhooks.allow_private)
        .map(|_| ())
        .map_err(|m| ApiError::unprocessable("target_not_allowed", m))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateHook {
    url: String,
    #[serde(default = "all_events")]
    events: Vec<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn all_events() -> Vec<String> {
    vec!["*".into()]
}
fn yes() -> bool {
    true
}

#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", security(("api_key" = [])), request_body = CreateHook,
    responses((status = 201, description = "The subscription with its signing `secret` (shown once)", body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody),
        (status = 422, description = "`invalid_request`, `target_not_allowed`", body = ErrorBody)))]
async fn create(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateHook>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Scope::Admin)?;
    validate_url(&s, &req.url)?;
    validate_events(&req.events)?;
    let secret = match req.secret {
        Some(sec) if sec.len() >= 24 && sec.len() <= 256 => sec,
        Some(_) => {
            return Err(ApiError::unprocessable(
                "invalid_request",
                "a supplied secret must be 24-256 characters (or omit it to get a generated whsec_ secret)",
            ))
        }
        None => new_secret(),
    };
    let now = now_ms();
    let h = Webhook {
        id: format!("wh_{}", uuid::Uuid::now_v7().simple()),
        url: req.url,
        events: req.events,
        secret: secret.clone(),
        enabled: req.enabled,
        disabled_reason: None,
        created_at: now,
        updated_at: now,
    };
    s.store.create_webhook(&h).await?;
    let mut v = hook_json(&h);
    v["secret"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(v)))
}

#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks", security(("api_key" = [])),
    responses((status = 200, body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody)))]
async fn list(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Admin)?;
    let hooks: Vec<Value> = s
        .store
        .list_webhooks()
        .await?
        .iter()
        .map(hook_json)
        .collect();
    Ok(Json(json!({ "webhooks": hooks })))
}

async fn load(s: &AppState, id: &str) -> Result<Webhook, ApiError> {
    s.store
        .get_webhook(id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook_not_found", format!("no webhook {id}")))
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}", tag = "webhooks", security(("api_key" = [])), params(("id" = String, Path, description = "Webhook id")),
    responses((status = 200, body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_one(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Admin)?;
    Ok(Json(hook_json(&load(&s, &id).await?)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateHook {
    url: Option<String>,
    events: Option<Vec<String>>,
    enabled: Option<bool>,
}

#[utoipa::path(patch, path = "/api/v1/webhooks/{id}", tag = "webhooks", security(("api_key" = [])), params(("id" = String, Path, description = "Webhook id")), request_body = UpdateHook,
    responses((status = 200, body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateHook>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Admin)?;
    let mut h = load(&s, &id).await?;
    if let Some(url) = req.url {
        validate_url(&s, &url)?;
        h.url = url;
    }
    if let Some(events) = req.events {
        validate_events(&events)?;
        h.events = events;
    }
    if let Some(enabled) = req.enabled {
        h.enabled = enabled;
        if enabled {
            h.disabled_reason = None;
        }
    }
    s.store.update_webhook(&h).await?;
    Ok(Json(hook_json(&load(&s, &id).await?)))
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks", security(("api_key" = [])), params(("id" = String, Path, description = "Webhook id")),
    responses((status = 204, description = "Deleted"), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    if !s.store.delete_webhook(&id).await? {
        return Err(ApiError::not_found(
            "webhook_not_found",
            format!("no webhook {id}"),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeliveriesQuery {
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks", security(("api_key" = [])), params(("id" = String, Path, description = "Webhook id"), DeliveriesQuery),
    responses((status = 200, description = "Delivery log with each attempt", body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn deliveries(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Admin)?;
    load(&s, &id).await?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let items: Vec<Value> = s
        .store
        .list_deliveries(&id, limit)
        .await?
        .into_iter()
        .map(|(d, attempts)| {
            json!({
                "id": d.id,
                "webhook_id": d.webhook_id,
                "message_id": format!("msg_{}", d.event_id),
                "event_id": d.event_id,
                "event_type": d.event_type,
                "task_id": d.task_id,
                "status": d.status,
                "attempts": d.attempts,
                "next_attempt_at": ts(d.next_attempt_at),
                "last_status_code": d.last_status_code,
                "last_error": d.last_error,
                "last_latency_ms": d.last_latency_ms,
                "created_at": ts(Some(d.created_at)),
                "delivered_at": ts(d.delivered_at),
                "attempt_log": attempts.iter().map(|a| json!({
                    "attempt": a.attempt,
                    "at": ts(Some(a.at)),
                    "status_code": a.status_code,
                    "latency_ms": a.latency_ms,
                    "error": a.error,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({ "webhook_id": id, "deliveries": items })))
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path, description = "Webhook id"), ("delivery_id" = i64, Path, description = "Delivery id")),
    responses((status = 202, description = "Queued to be sent again now", body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn redeliver(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath((id, delivery_id)): ApiPath<(String, i64)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Scope::Admin)?;
    load(&s, &id).await?;
    if !s.store.redeliver(&id, delivery_id).await? {
        return Err(ApiError::not_found(
            "delivery_not_found",
            format!("webhook {id} has no delivery {delivery_id}"),
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": delivery_id, "status": "pending" })),
    ))
}
