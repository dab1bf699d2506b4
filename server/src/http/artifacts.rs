//! `/api/v1/tasks/{id}/artifacts`: runners upload a task's large outputs here (streamed,
//! size-capped, SHA-256 checked, fenced by attempt); clients list them and download them with
//! an API key or a short-lived signed URL.
//!
//! Bytes go to the blob store, rows to the store; this module only checks who may do what.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{bearer_header, ApiQuery, Caller};
use super::openapi::ErrorBody;
use super::ts;
use crate::auth::{AuthError, TokenKind};
use crate::blobs::BlobError;
use crate::socket::RunnerAuth;
use crate::store::{now_ms, Artifact, Scope};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tasks/{id}/artifacts", get(list))
        .route(
            "/api/v1/tasks/{id}/artifacts/{name}",
            axum::routing::put(upload).get(download),
        )
        .route(
            "/api/v1/tasks/{id}/artifacts/{name}/signed-url",
            post(signed_url),
        )
}

/// Header carrying the uploader's SHA-256 (lowercase hex) of the body.
pub const SHA256_HEADER: &str = "x-dap-sha256";
/// Longest lifetime of a signed download URL.
const MAX_URL_TTL_S: i64 = 3600;

fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "invalid_artifact_name",
            "artifact names are 1-100 characters of A-Z, a-z, 0-9, '_', '-', '.' (not starting with '.')",
        ))
    }
}

fn artifact_json(a: &Artifact) -> Value {
    json!({
        "name": a.name,
        "size": a.size,
        "sha256": a.sha256,
        "content_type": a.content_type,
        "attempt": a.attempt,
        "created_at": ts(Some(a.created_at)),
        "url": format!("/api/v1/tasks/{}/artifacts/{}", a.task_id, a.name),
    })
}

/// JSON views of a task's artifacts (also used by the result endpoint).
pub async fn artifacts_json(s: &AppState, task_id: &str) -> Result<Vec<Value>, ApiError> {
    Ok(s.store
        .list_artifacts(task_id)
        .await?
        .iter()
        .map(artifact_json)
        .collect())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct UploadQuery {
    attempt: u32,
}

#[utoipa::path(put, path = "/api/v1/tasks/{id}/artifacts/{name}", tag = "artifacts", security(("runner_jwt" = [])), params(("id" = String, Path, description = "Task id"), ("name" = String, Path, description = "Artifact file name"), UploadQuery,
        ("x-dap-sha256" = String, Header, description = "Hex SHA-256 of the body")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, description = "Stored", body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`stale_attempt`", body = ErrorBody), (status = 413, description = "Over `--max-artifact-bytes`", body = ErrorBody),
        (status = 422, description = "`checksum_mismatch`", body = ErrorBody)))]
async fn upload(
    State(s): State<AppState>,
    RunnerAuth(runner_id): RunnerAuth,
    Path((task_id, name)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    validate_name(&name)?;
    if !s.dispatcher.leases(&runner_id, &task_id, q.attempt) {
        return Err(ApiError::conflict(
            "stale_attempt",
            format!(
                "this runner does not hold attempt {} of task {task_id}",
                q.attempt
            ),
        ));
    }
    let expected = headers
        .get(SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_checksum",
                format!("send the body's SHA-256 as 64 hex characters in {SHA256_HEADER}"),
            )
        })?;
    let max = s.settings.max_artifact_bytes;
    let too_large = || ApiError::PayloadTooLarge {
        code: "artifact_too_large",
        message: format!("artifacts are limited to {max} bytes"),
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 100)
        .unwrap_or("application/octet-stream")
        .to_owned();

    let key = format!("{task_id}/{}/{name}", q.attempt);
    let stored = match s.blobs.put(&key, body.into_data_stream(), max).await {
        Ok(st) => st,
        Err(BlobError::TooLarge(_)) => return Err(too_large()),
        Err(BlobError::Body(e)) => {
            return Err(ApiError::bad_request(
                "upload_interrupted",
                format!("upload interrupted: {e}"),
            ))
        }
        Err(BlobError::Io(e)) => return Err(ApiError::Internal(e.to_string())),
    };
    if stored.sha256 != expected {
        let _ = s.blobs.delete(&key).await;
        return Err(ApiError::unprocessable(
            "checksum_mismatch",
            format!(
                "received {} bytes with SHA-256 {}, not the {expected} announced",
                stored.size, stored.sha256
            ),
        ));
    }
    let artifact = Artifact {
        task_id: task_id.clone(),
        name: name.clone(),
        attempt: q.attempt,
        size: stored.size,
        sha256: stored.sha256,
        content_type,
        blob_key: key.clone(),
        created_at: now_ms(),
    };
    let (recorded, replaced) = s.store.record_artifact(&artifact, &runner_id).await?;
    if !recorded {
        let _ = s.blobs.delete(&key).await;
        return Err(ApiError::conflict(
            "stale_attempt",
            format!(
                "task {task_id} is no longer running attempt {} on this runner",
                q.attempt
            ),
        ));
    }
    if let Some(old) = replaced {
        let _ = s.blobs.delete(&old).await;
    }
    Ok((StatusCode::CREATED, Json(artifact_json(&artifact))))
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}/artifacts", tag = "artifacts", security(("api_key" = [])), params(("id" = String, Path, description = "Task id")),
    responses((status = 200, description = "`{artifacts: [{name, size, sha256, content_type, attempt, url}]}`", body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list(
    State(s): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Read)?;
    if s.store.get_task(&task_id).await?.is_none() {
        return Err(ApiError::not_found(
            "task_not_found",
            format!("no task {task_id}"),
        ));
    }
    let items = artifacts_json(&s, &task_id).await?;
    Ok(Json(json!({ "task_id": task_id, "artifacts": items })))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DownloadQuery {
    token: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}/artifacts/{name}", tag = "artifacts", security(("api_key" = []), ()), params(("id" = String, Path, description = "Task id"), ("name" = String, Path, description = "Artifact file name"), DownloadQuery),
    responses((status = 200, description = "The file, streamed; `x-dap-sha256` header", content_type = "application/octet-stream"), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn download(
    State(s): State<AppState>,
    Path((task_id, name)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    match &q.token {
        Some(t) => {
            let claims = s.jwt.verify(t, TokenKind::ArtifactDownload)?;
            if claims.sub != format!("{task_id}/{name}") {
                return Err(ApiError::Forbidden(
                    "this link is for another artifact".into(),
                ));
            }
        }
        None => {
            let key = bearer_header(&headers).ok_or(AuthError::Missing)?;
            Caller(s.keys.verify(key).await?).require(Scope::Read)?;
        }
    }
    let a = s
        .store
        .get_artifact(&task_id, &name)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "artifact_not_found",
                format!("task {task_id} has no artifact {name:?}"),
            )
        })?;
    let file = s.blobs.open(&a.blob_key).await.map_err(|e| {
        ApiError::Internal(format!("artifact bytes missing for {}: {e}", a.blob_key))
    })?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    let val = |v: String| HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("invalid"));
    h.insert(header::CONTENT_TYPE, val(a.content_type.clone()));
    h.insert(header::CONTENT_LENGTH, val(a.size.to_string()));
    h.insert(
        header::CONTENT_DISPOSITION,
        val(format!("attachment; filename=\"{}\"", a.name)),
    );
    h.insert(header::ETAG, val(format!("\"{}\"", a.sha256)));
    h.insert(SHA256_HEADER, val(a.sha256.clone()));
    Ok(resp)
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SignedUrlQuery {
    ttl_s: Option<i64>,
}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/artifacts/{name}/signed-url", tag = "artifacts", security(("api_key" = [])), params(("id" = String, Path, description = "Task id"), ("name" = String, Path, description = "Artifact file name"), SignedUrlQuery),
    responses((status = 200, description = "`{url, expires_in}`", body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn signed_url(
    State(s): State<AppState>,
    caller: Caller,
    Path((task_id, name)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<SignedUrlQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Read)?;
    let ttl = q.ttl_s.unwrap_or(300);
    if !(1..=MAX_URL_TTL_S).contains(&ttl) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("ttl_s must be between 1 and {MAX_URL_TTL_S}"),
        ));
    }
    if s.store.get_artifact(&task_id, &name).await?.is_none() {
        return Err(ApiError::not_found(
            "artifact_not_found",
            format!("task {task_id} has no artifact {name:?}"),
        ));
    }
    let token = s.jwt.issue(
        TokenKind::ArtifactDownload,
        &format!("{task_id}/{name}"),
        ttl,
        None,
    );
    Ok(Json(json!({
        "url": format!("/api/v1/tasks/{task_id}/artifacts/{name}?token={token}"),
        "expires_in": ttl,
    })))
}
