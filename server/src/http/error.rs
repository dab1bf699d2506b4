//! `ApiError`: every failure a handler can answer with, mapped to a status code and the JSON
//! body `{"error":{"code","message"}}`. Internal causes are logged here and answered with a
//! generic message, never echoed.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::auth::AuthError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no, malformed, expired, revoked or wrong-kind credential.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a valid credential without the scope the route needs.
    #[error("{0}")]
    Forbidden(String),
    /// 400: the request could not be parsed (bad JSON syntax, bad query string).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 404
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// 409: the request conflicts with current state (busy runner, finished task).
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        details: Option<Value>,
    },
    /// 413: an upload larger than the configured cap.
    #[error("{message}")]
    PayloadTooLarge { code: &'static str, message: String },
    /// 429: a connection limit is reached (runner sockets per credential, SSE streams per
    /// ticket); the client may retry after `retry_after_s`.
    #[error("{message}")]
    TooManyRequests {
        code: &'static str,
        message: String,
        retry_after_s: u32,
    },
    /// 415
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 503: this server cannot serve the request now (e.g. a cluster node without its
    /// database); another node, or a retry later, can.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    /// 422: well-formed but invalid (unknown operation, bad params).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// 500: logged with its cause, answered generically.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::NotFound {
            code,
            message: message.into(),
        }
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
            details: None,
        }
    }
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unprocessable {
            code,
            message: message.into(),
        }
    }
}

impl ApiError {
    /// The same error about one item of a request (e.g. `tasks[3]` of a batch): its message
    /// starts with `what`, and a conflict's details also carry `index`.
    pub fn at(self, what: &str, index: usize) -> Self {
        let name = |m: String| format!("{what}: {m}");
        match self {
            Self::BadRequest { code, message } => Self::BadRequest {
                code,
                message: name(message),
            },
            Self::NotFound { code, message } => Self::NotFound {
                code,
                message: name(message),
            },
            Self::Conflict {
                code,
                message,
                details,
            } => {
                let mut details = match details {
                    Some(Value::Object(d)) => d,
                    _ => serde_json::Map::new(),
                };
                details.insert("index".into(), Value::from(index));
                Self::Conflict {
                    code,
                    message: name(message),
                    details: Some(Value::Object(details)),
                }
            }
            Self::Unprocessable { code, message } => Self::Unprocessable {
                code,
                message: name(message),
            },
            other => other,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut retry_after = None;
        let (status, code, message, details) = match self {
            Self::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m, None),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m, None),
            Self::BadRequest { code, message } => (StatusCode::BAD_REQUEST, code, message, None),
            Self::NotFound { code, message } => (StatusCode::NOT_FOUND, code, message, None),
            Self::Conflict {
                code,
                message,
                details,
            } => (StatusCode::CONFLICT, code, message, details),
            Self::PayloadTooLarge { code, message } => {
                (StatusCode::PAYLOAD_TOO_LARGE, code, message, None)
            }
            Self::TooManyRequests {
                code,
                message,
                retry_after_s,
            } => {
                retry_after = Some(retry_after_s);
                (StatusCode::TOO_MANY_REQUESTS, code, message, None)
            }
            Self::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                m,
                None,
            ),
            Self::Unprocessable { code, message } => {
                (StatusCode::UNPROCESSABLE_ENTITY, code, message, None)
            }
            Self::Unavailable { code, message } => {
                (StatusCode::SERVICE_UNAVAILABLE, code, message, None)
            }
            Self::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal server error".to_owned(),
                    None,
                )
            }
        };
        let mut err = json!({ "code": code, "message": message });
        if let Some(Value::Object(d)) = details {
            err.as_object_mut().expect("literal object").extend(d);
        }
        let mut resp = (status, Json(json!({ "error": err }))).into_response();
        if let Some(s) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => Self::Unauthorized("missing bearer credential".into()),
            AuthError::Invalid => Self::Unauthorized("invalid credential".into()),
            AuthError::Revoked => Self::Unauthorized("credential revoked".into()),
            AuthError::Expired => Self::Unauthorized("token expired".into()),
            AuthError::WrongKind => Self::Unauthorized("wrong kind of credential".into()),
            AuthError::Scope(s) => Self::Forbidden(format!("this route needs the {s} scope")),
            AuthError::Store(e) => e.into(),
            AuthError::KeyFile(e) => Self::Internal(e.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonSyntaxError(e) => {
                Self::bad_request("invalid_json", format!("malformed JSON: {}", e.body_text()))
            }
            JsonRejection::JsonDataError(e) => {
                Self::unprocessable("invalid_request", e.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => {
                Self::UnsupportedMediaType("expected Content-Type: application/json".into())
            }
            other => Self::bad_request("invalid_request", other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request("invalid_path", r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request("invalid_query", r.body_text())
    }
}
