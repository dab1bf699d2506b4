//! The live feed: `GET /api/v1/events` (Server-Sent Events) and `POST /api/v1/sse-tickets`.
//!
//! A stream subscribes to the bus *before* it replays the stored log from `Last-Event-ID`, then
//! goes live and skips any id it already sent, so a reconnecting client sees every event once,
//! in order, without gaps. A subscriber that lags behind the bus falls back to the log.
//! It never writes events; the store writer does.
//!
//! The stream is written here rather than with axum's `Sse`, which formats every event once per
//! subscriber: a live event is encoded into its SSE frame once, by the first stream that sends
//! it, and every other stream sends the same bytes (see [`crate::events::Published`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::{self, error::RecvError};

use super::error::ApiError;
use super::extract::{bearer, ApiQuery, Caller};
use super::openapi::ErrorBody;
use crate::auth::jwt::SSE_TICKET_TTL_S;
use crate::auth::{AuthError, TokenKind};
use crate::events::Published;
use crate::limits::ConnectionGuard;
use crate::store::{Event, Scope, Store};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/events", get(events))
        .route("/api/v1/sse-tickets", post(ticket))
}

/// Events read from the log per replay query.
const REPLAY_PAGE: u32 = 1000;
/// A comment line is sent this often, so proxies and browsers see the stream is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
const KEEP_ALIVE_FRAME: &[u8] = b": keep-alive\n\n";

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TicketRequest {
    #[serde(default)]
    task_id: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/sse-tickets", tag = "events", security(("api_key" = [])), request_body = TicketRequest,
    responses((status = 200, description = "`{ticket, expires_in}` (≤ 60 s, read-only)", body = serde_json::Value), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody)))]
async fn ticket(
    State(s): State<AppState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let p = caller.require(Scope::Read)?;
    // The body is optional: no body means a ticket for the whole feed.
    let req: TicketRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TicketRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("malformed ticket request: {e}"))
        })?
    };
    let t = s.jwt.issue(
        TokenKind::SseTicket,
        &p.key_id,
        SSE_TICKET_TTL_S,
        req.task_id.clone(),
    );
    Ok(Json(json!({
        "ticket": t,
        "expires_in": SSE_TICKET_TTL_S,
        "task_id": req.task_id,
    })))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    ticket: Option<String>,
    task_id: Option<String>,
    /// For clients that cannot set the `Last-Event-ID` header on their first request.
    last_event_id: Option<String>,
}

/// Who may read the feed, and which task they are limited to.
struct FeedAccess {
    task_scope: Option<String>,
    /// The ticket's id when the feed was opened with one.
    ticket_id: Option<String>,
}

async fn authorize(s: &AppState, parts: &Parts, q: &EventsQuery) -> Result<FeedAccess, ApiError> {
    if let Some(ticket) = &q.ticket {
        let claims = s.jwt.verify(ticket, TokenKind::SseTicket)?;
        // Tickets without an id (none are issued) count by their signature.
        let ticket_id = claims
            .jti
            .unwrap_or_else(|| ticket.rsplit('.').next().unwrap_or(ticket).to_owned());
        return Ok(FeedAccess {
            task_scope: claims.task_id,
            ticket_id: Some(ticket_id),
        });
    }
    match bearer(parts) {
        Some(key) => {
            let p = s.keys.verify(key).await?;
            Caller(p).require(Scope::Read)?;
            Ok(FeedAccess {
                task_scope: None,
                ticket_id: None,
            })
        }
        None => Err(AuthError::Missing.into()),
    }
}

#[utoipa::path(get, path = "/api/v1/events", tag = "events", security(("api_key" = []), ("sse_ticket" = [])), params(EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses((status = 200, description = "Server-sent events: `task.*` and `runner.*`", content_type = "text/event-stream"), (status = 401, description = "No or bad credential", body = ErrorBody), (status = 403, description = "Scope too low", body = ErrorBody)))]
async fn events(
    State(s): State<AppState>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (mut parts, _) = req.into_parts();
    let ApiQuery(q) = ApiQuery::<EventsQuery>::from_request_parts(&mut parts, &s).await?;
    let access = authorize(&s, &parts, &q).await?;
    // A ticket opens at most `sse_max_per_ticket` streams at once (a leaked ticket cannot fan
    // out into thousands of subscriptions). Keyed by the ticket's signature, by its random id.
    let slot = match &access.ticket_id {
        Some(key) => {
            Some(s.sse_conns.try_acquire(key).ok_or_else(|| ApiError::TooManyRequests {
                code: "too_many_connections",
                message: format!(
                    "this ticket already has {} open streams (the limit); close one or request another ticket",
                    s.sse_conns.max()
                ),
                retry_after_s: 1,
            })?)
        }
        None => None,
    };
    let task_filter = match (access.task_scope, q.task_id) {
        (Some(scoped), Some(asked)) if scoped != asked => {
            return Err(ApiError::Forbidden(
                "this ticket is limited to another task".into(),
            ))
        }
        (Some(scoped), _) => Some(scoped),
        (None, asked) => asked.filter(|t| !t.is_empty()),
    };
    let header_id = parts
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let last_id = match header_id.or(q.last_event_id).filter(|v| !v.is_empty()) {
        Some(v) => Some(v.trim().parse::<i64>().map_err(|_| {
            ApiError::bad_request("invalid_last_event_id", "Last-Event-ID must be an integer")
        })?),
        None => None,
    };

    // Subscribe before reading the log so nothing committed in between is missed.
    let rx = s.bus.subscribe();
    let (start, replaying) = match last_id {
        Some(id) => (id, true),
        None => (s.store.last_event_id().await?, false),
    };
    let mut shutdown = s.shutdown.clone();
    let feed = Feed {
        store: s.store.clone(),
        rx,
        task_filter,
        last_sent: start,
        replaying,
        buf: VecDeque::new(),
        shutdown: Box::pin(async move {
            let _ = shutdown.wait_for(|v| *v).await;
        }),
        keep_alive: keep_alive_timer(),
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        let frame = f.next_frame().await?;
        Some((Ok::<_, Infallible>(frame), f))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // Tells nginx (and proxies that honour it) not to buffer the stream.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

fn keep_alive_timer() -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// The SSE frame of an event: `id`, `event` and the JSON `data`, which repeats the id for
/// clients that ignore `id:`. The same for every subscriber, so live events are encoded once.
fn encode(e: &Event) -> Bytes {
    let mut out = String::with_capacity(e.json.len() + e.kind.as_str().len() + 48);
    let _ = write!(out, "id: {}\nevent: {}\n", e.id, e.kind.as_str());
    // The stored payload is a JSON object; put the id in it too.
    let data = match e.json.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => format!("{{\"id\":{}}}", e.id),
        Some(rest) => format!("{{\"id\":{},{rest}", e.id),
        None => e.json.clone(),
    };
    // Compact JSON has no raw line breaks; should one appear, each line is its own `data:`
    // field, which SSE clients join with a newline again.
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// What a feed sends next.
enum Next {
    Event(Arc<Published>),
    KeepAlive,
}

struct Feed {
    store: Store,
    rx: broadcast::Receiver<Arc<Published>>,
    task_filter: Option<String>,
    last_sent: i64,
    replaying: bool,
    buf: VecDeque<Arc<Published>>,
    /// Resolves when the server shuts down; made once per stream, not once per event.
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    keep_alive: tokio::time::Interval,
    /// The ticket's place among its concurrent streams, given back when the stream ends.
    _slot: Option<ConnectionGuard>,
}

impl Feed {
    /// The bytes to send next, or `None` when the feed is over.
    async fn next_frame(&mut self) -> Option<Bytes> {
        match self.next().await? {
            Next::Event(p) => Some(p.encoded(encode)),
            Next::KeepAlive => Some(Bytes::from_static(KEEP_ALIVE_FRAME)),
        }
    }

    /// The next event or keep-alive to send, or `None` when the feed is over (bus closed,
    /// store failing, server shutting down).
    async fn next(&mut self) -> Option<Next> {
        loop {
            if let Some(p) = self.buf.pop_front() {
                if p.event.id <= self.last_sent {
                    continue;
                }
                self.last_sent = p.event.id;
                return Some(Next::Event(p));
            }
            if self.replaying {
                let page = match self
                    .store
                    .events_after(self.last_sent, self.task_filter.as_deref(), REPLAY_PAGE)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "SSE replay failed");
                        return None;
                    }
                };
                if page.is_empty() {
                    self.replaying = false;
                } else {
                    self.buf
                        .extend(page.into_iter().map(|e| Arc::new(Published::new(e))));
                }
                continue;
            }
            let received = tokio::select! {
                r = self.rx.recv() => r,
                _ = self.keep_alive.tick() => return Some(Next::KeepAlive),
                _ = &mut self.shutdown => return None,
            };
            match received {
                Ok(p) => {
                    let wanted = match &self.task_filter {
                        Some(t) => p.event.task_id.as_deref() == Some(t.as_str()),
                        None => true,
                    };
                    if wanted {
                        self.buf.push_back(p);
                    }
                }
                // Fell behind the bus: the log has everything, read it from where we are.
                Err(RecvError::Lagged(_)) => self.replaying = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }
}
