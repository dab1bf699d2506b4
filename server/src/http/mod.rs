//! The HTTP surface: one module per resource, each with a `router()`, merged by [`router`].
//! Only this layer knows status codes and JSON shapes; it calls the store, the dispatcher and
//! the auth module, and never touches SQL.

pub mod artifacts;
pub mod error;
pub mod events;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod runners;
pub mod tasks;
pub mod webhooks;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::AppState;
pub use error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::scrape))
        .route("/api/v1/openapi.json", get(openapi::spec))
        .merge(tasks::router())
        .merge(runners::router())
        .merge(events::router())
        .merge(artifacts::router())
        .merge(webhooks::router())
        .route(dap_protocol::CONNECT_PATH, get(crate::socket::connect))
        .fallback(not_found)
}

#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "Name, version, API base and protocol version", body = serde_json::Value)))]
async fn root() -> Json<Value> {
    Json(json!({
        "name": "dap-server",
        "description": "Distributed Analysis Platform coordinator",
        "version": env!("CARGO_PKG_VERSION"),
        "api": "/api/v1",
        "protocol_version": dap_protocol::PROTOCOL_VERSION,
    }))
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`{status, runners_connected, queue_depth, sse_subscribers}`", body = serde_json::Value),
        (status = 500, description = "The database does not answer", body = openapi::ErrorBody)))]
async fn healthz(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    s.store.ping().await?;
    Ok(Json(json!({
        "status": "ok",
        "runners_connected": s.dispatcher.connected_runners(),
        "queue_depth": s.dispatcher.queue_depth(),
        "sse_subscribers": s.bus.subscribers(),
    })))
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

/// RFC 3339 (UTC, milliseconds) for an epoch-milliseconds timestamp.
pub fn ts(ms: Option<i64>) -> Value {
    match ms {
        Some(ms) if ms >= 0 => {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
            Value::String(humantime::format_rfc3339_millis(t).to_string())
        }
        _ => Value::Null,
    }
}
