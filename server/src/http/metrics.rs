//! `GET /metrics`: the Prometheus text exposition of [`crate::metrics::Metrics`].
//!
//! Open unless the server was started with `--metrics-token`; then only a request carrying
//! `Authorization: Bearer <that token>` gets it (401 otherwise). API keys are not accepted here,
//! so a Prometheus config never holds a key that could also create tasks.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::extract::bearer_header;
use crate::AppState;

#[utoipa::path(get, path = "/metrics", tag = "operations", security((), ("metrics_token" = [])),
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"),
        (status = 401, description = "`--metrics-token` is set and was not sent", body = super::openapi::ErrorBody)))]
pub async fn scrape(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(expected) = &s.settings.metrics_token {
        let presented = bearer_header(&headers).ok_or_else(|| {
            ApiError::Unauthorized("this server's /metrics needs its metrics token".into())
        })?;
        // Compare digests, so the comparison takes the same time wherever the strings differ.
        if Sha256::digest(presented.as_bytes()) != Sha256::digest(expected.0.as_bytes()) {
            return Err(ApiError::Unauthorized("wrong metrics token".into()));
        }
    }
    let body = s
        .metrics
        .render(&s)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body))
}
