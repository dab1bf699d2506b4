//! The runner socket (`GET /api/v1/runners/connect`): authenticates the upgrade with a runner
//! JWT, enforces the abuse limits (connections per credential before the upgrade; message size,
//! message rate and idle time after it), reads the greeting, registers the runner with the
//! dispatcher, then runs one loop that reads progress and results and writes assignments,
//! cancels and pings until the link ends.
//!
//! It translates frames to dispatcher and store calls; it decides nothing about placement and
//! never reads the database except to check that the runner is not revoked.
//!
//! The upgrade is done here (hyper's `upgrade::on` + tokio-tungstenite) rather than with axum's
//! `WebSocketUpgrade`, because after a close frame the server must be able to half-close the TCP
//! connection and discard what the peer is still sending: closing a socket with unread input
//! makes the kernel answer with a reset, which can destroy the close frame in flight, and an
//! oversized or flooding runner always has unread input. axum does not expose the raw stream.

use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dap_protocol::{close_code, Hello, RunnerMessage, ServerMessage, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::auth::{AuthError, TokenKind};
use crate::dispatcher::Outbound;
use crate::http::extract::bearer;
use crate::http::ApiError;
use crate::limits::{ConnectionGuard, TokenBucket};
use crate::store::WriteOp;
use crate::AppState;

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_SLOTS: u32 = 1024;
/// After our close frame: how long we keep reading (and discarding) what the peer still sends,
/// so that our close frame is not lost to a reset, and how much of it at most.
const DRAIN_FOR: Duration = Duration::from_secs(3);
const DRAIN_MAX_BYTES: u64 = 64 << 20;
/// tungstenite's read buffer per socket. Its default (128 KiB) is zero-filled on the first
/// read, so every idle runner cost ~136 KiB of resident memory. Runner messages are small
/// (progress, results are usually well under 4 KiB); a larger one is still read whole: the
/// buffer grows to the frame's length (up to the message cap), read 4 KiB per call.
const READ_BUFFER_BYTES: usize = 4 << 10;

/// A runner authenticated by its socket JWT (checked before the upgrade).
pub struct RunnerAuth(pub String);

impl FromRequestParts<AppState> for RunnerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        // Browsers always send Origin on WebSocket upgrades and runners never do: refusing it
        // keeps a web page from riding a runner token (cross-site WebSocket hijacking).
        if parts.headers.contains_key(axum::http::header::ORIGIN) {
            return Err(ApiError::Forbidden(
                "runner endpoints do not accept browser requests (Origin header present)".into(),
            ));
        }
        // A fenced cluster node cannot keep a runner's tasks (and cannot read its credential):
        // the runner is sent to another node before anything else is looked at.
        if s.dispatcher.is_fenced() {
            return Err(ApiError::Unavailable {
                code: "node_unavailable",
                message: "this cluster node has lost its database; connect to another node".into(),
            });
        }
        let token = bearer(parts).ok_or(AuthError::Missing)?;
        let claims = s.jwt.verify(token, TokenKind::Runner)?;
        match s.store.get_runner(&claims.sub).await? {
            Some(r) if r.revoked_at.is_none() => Ok(RunnerAuth(r.id)),
            Some(_) => Err(AuthError::Revoked.into()),
            None => Err(AuthError::Invalid.into()),
        }
    }
}

fn header_has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Checks the RFC 6455 upgrade headers; returns the `Sec-WebSocket-Accept` value.
fn accept_key(h: &HeaderMap) -> Result<String, ApiError> {
    let bad = |m: &str| ApiError::bad_request("not_a_websocket_upgrade", m.to_owned());
    if !header_has_token(h, header::CONNECTION, "upgrade")
        || !header_has_token(h, header::UPGRADE, "websocket")
    {
        return Err(bad("this endpoint needs a WebSocket upgrade"));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(bad("Sec-WebSocket-Version must be 13"));
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| bad("Sec-WebSocket-Key is missing"))?;
    Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

#[utoipa::path(get, path = "/api/v1/runners/connect", tag = "runners", security(("runner_jwt" = [])),
    description = "The runner WebSocket (HTTP/1.1 upgrade). Messages are the JSON of `dap-protocol`; close codes 1001 server stopping, 1012 cluster node lost its database (reconnect elsewhere), 4001 revoked, 4002 protocol, 4004 replaced.",
    responses((status = 101, description = "Switching protocols"), (status = 401, body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`node_unavailable`: a cluster node that lost its database", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "Browser request (Origin header)", body = crate::http::openapi::ErrorBody)))]
pub async fn connect(
    State(s): State<AppState>,
    RunnerAuth(runner_id): RunnerAuth,
    mut req: Request,
) -> Result<Response, ApiError> {
    let accept = accept_key(req.headers())?;
    let guard = s.runner_conns.try_acquire(&runner_id).ok_or_else(|| {
        ApiError::TooManyRequests {
            code: "too_many_connections",
            message: format!(
                "runner {runner_id} already has {} open connections (the limit); close one or wait for it to time out",
                s.runner_conns.max()
            ),
            retry_after_s: 5,
        }
    })?;
    let upgrade = hyper::upgrade::on(&mut req);
    let limits = s.settings.limits;
    let sockets = s.sockets.clone();
    sockets.spawn(async move {
        let io = match upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(%runner_id, error = %e, "runner upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .max_message_size(Some(limits.runner_max_message_bytes))
            .max_frame_size(Some(limits.runner_max_message_bytes));
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        serve(s, runner_id, ws, guard).await;
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    Ok(resp)
}

/// How a session ends.
#[derive(Debug)]
enum End {
    /// The peer closed or the link broke: nothing worth sending.
    Gone,
    /// Close with this code and reason.
    Close(u16, String),
}

/// Maps a read error to how the session ends: an oversized message is answered with 1009.
fn end_for(e: WsError, max: usize) -> End {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { size, .. }) => End::Close(
            close_code::TOO_BIG,
            format!("message of {size} bytes is larger than the limit of {max} bytes"),
        ),
        WsError::Protocol(p) => End::Close(close_code::PROTOCOL_ERROR, p.to_string()),
        _ => End::Gone,
    }
}

/// Sends a close frame, half-closes, and reads and discards what the peer still sends until it
/// closes too (bounded by [`DRAIN_FOR`] and [`DRAIN_MAX_BYTES`]), so the close frame arrives.
async fn close_and_drain(mut ws: Ws, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: truncate(reason.to_owned(), 120).into(),
    };
    let deadline = Instant::now() + DRAIN_FOR;
    if tokio::time::timeout_at(deadline, ws.close(Some(frame)))
        .await
        .is_err()
    {
        return;
    }
    let io = ws.get_mut();
    let _ = tokio::time::timeout_at(deadline, io.shutdown()).await;
    let mut buf = vec![0u8; 64 * 1024];
    let mut drained = 0u64;
    while drained < DRAIN_MAX_BYTES {
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => drained += n as u64,
            _ => break,
        }
    }
}

async fn read_hello(ws: &mut Ws, s: &AppState) -> Result<Hello, End> {
    let limits = s.settings.limits;
    let wait = HELLO_TIMEOUT.min(limits.runner_idle_timeout);
    let deadline = Instant::now() + wait;
    let text = loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => break t,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(_))) => {
                return Err(End::Close(
                    close_code::EXPECTED_HELLO,
                    "first message must be hello".into(),
                ))
            }
            Ok(Some(Err(e))) => return Err(end_for(e, limits.runner_max_message_bytes)),
            Ok(None) => return Err(End::Gone),
            Err(_) => {
                return Err(End::Close(
                    close_code::EXPECTED_HELLO,
                    format!("no hello within {} s", wait.as_secs_f64()),
                ));
            }
        }
    };
    let hello = match serde_json::from_str::<RunnerMessage>(text.as_str()) {
        Ok(RunnerMessage::Hello(h)) => h,
        Ok(_) => {
            return Err(End::Close(
                close_code::EXPECTED_HELLO,
                "first message must be hello".into(),
            ))
        }
        Err(e) => {
            return Err(End::Close(
                close_code::PROTOCOL_ERROR,
                format!("invalid hello: {e}"),
            ))
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(End::Close(
            close_code::UNSUPPORTED_PROTOCOL,
            format!(
                "protocol version {} is not supported (server speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            ),
        ));
    }
    if hello.slots == 0 || hello.slots > MAX_SLOTS {
        return Err(End::Close(
            close_code::PROTOCOL_ERROR,
            format!("slots must be 1..={MAX_SLOTS}"),
        ));
    }
    Ok(hello)
}

async fn serve(s: AppState, runner_id: String, mut ws: Ws, _guard: ConnectionGuard) {
    let hello = match read_hello(&mut ws, &s).await {
        Ok(h) => h,
        Err(End::Gone) => return,
        Err(End::Close(code, reason)) => {
            tracing::warn!(%runner_id, code, %reason, "runner greeting refused");
            close_and_drain(ws, code, &reason).await;
            return;
        }
    };
    let heartbeat = s.settings.heartbeat;
    // Register before the welcome: a client that creates a task the moment the runner says it
    // is connected must find it registered. What registration pushes (assignments, cancels)
    // waits in the channel and goes out after the welcome.
    let (tx, rx) = mpsc::unbounded_channel();
    // The session keeps a weak sender for acks of the results it records (weak: when the
    // dispatcher drops this link, the channel still closes).
    let acks = tx.downgrade();
    let conn_id = s.dispatcher.register(&runner_id, &hello, tx).await;
    let welcome = ServerMessage::Welcome {
        runner_id: runner_id.clone(),
        heartbeat_interval_ms: heartbeat.as_millis() as u64,
    };
    if ws
        .send(Message::Text(welcome.to_json().into()))
        .await
        .is_err()
    {
        s.dispatcher.unregister(&runner_id, conn_id).await;
        return;
    }
    tracing::info!(%runner_id, name = %hello.name, slots = hello.slots, "runner connected");
    let end = session(&s, &runner_id, &mut ws, acks, rx).await;
    // Unregister before the (possibly slow) close: nothing more may be pushed to this link.
    s.dispatcher.unregister(&runner_id, conn_id).await;
    match end {
        End::Gone => tracing::info!(%runner_id, "runner disconnected"),
        End::Close(code, reason) => {
            tracing::info!(%runner_id, code, %reason, "runner connection closed by the server");
            close_and_drain(ws, code, &reason).await;
        }
    }
}

/// The connected phase: one loop reads runner messages and writes what the dispatcher queued,
/// so limits (rate, silence) and writes are judged in one place.
async fn session(
    s: &AppState,
    runner_id: &str,
    ws: &mut Ws,
    tx: mpsc::WeakUnboundedSender<Outbound>,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
) -> End {
    let limits = s.settings.limits;
    let heartbeat = s.settings.heartbeat;
    // Three missed heartbeats (pongs answer our pings) and the link is considered dead; the
    // idle timeout bounds silence independently of the heartbeat setting.
    let dead_after = heartbeat * 3;
    let idle = limits.runner_idle_timeout;
    let silence = dead_after.min(idle);
    // A write that cannot complete for as long (the peer stopped reading) also ends the link.
    let write_timeout = silence;
    let mut bucket = TokenBucket::new(limits.runner_rate_per_s, limits.runner_burst);
    let mut shutdown = s.shutdown.clone();
    let mut ping = tokio::time::interval(heartbeat);
    ping.tick().await;
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            m = ws.next() => {
                let m = match m {
                    None => return End::Gone,
                    Some(Err(e)) => return end_for(e, limits.runner_max_message_bytes),
                    Some(Ok(m)) => m,
                };
                last_heard = Instant::now();
                if bucket.as_mut().is_some_and(|b| !b.try_take()) {
                    tracing::warn!(%runner_id, "runner over its message rate; closing");
                    return End::Close(
                        close_code::POLICY,
                        format!(
                            "more than {} messages/s (burst {})",
                            limits.runner_rate_per_s, limits.runner_burst
                        ),
                    );
                }
                let text = match m {
                    Message::Text(t) => t,
                    Message::Close(_) => {
                        // Complete the closing handshake tungstenite started.
                        let _ = tokio::time::timeout(write_timeout, ws.flush()).await;
                        return End::Gone;
                    }
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                    Message::Binary(_) => {
                        return End::Close(
                            close_code::PROTOCOL_ERROR,
                            "binary frames are not part of the protocol".into(),
                        )
                    }
                };
                let msg = match serde_json::from_str::<RunnerMessage>(text.as_str()) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(%runner_id, error = %e, "invalid runner message");
                        return End::Close(close_code::PROTOCOL_ERROR, format!("invalid message: {e}"));
                    }
                };
                if let RunnerMessage::Hello(_) = msg {
                    return End::Close(close_code::PROTOCOL_ERROR, "hello may only be sent once".into());
                }
                handle(s, runner_id, &tx, msg).await;
            }
            m = rx.recv() => {
                let Some(mut m) = m else { return End::Gone };
                // Feed everything already waiting, then flush once.
                loop {
                    match m {
                        Outbound::Send(msg) => {
                            let fed = tokio::time::timeout(
                                write_timeout,
                                ws.feed(Message::Text(msg.to_json().into())),
                            )
                            .await;
                            if !matches!(fed, Ok(Ok(()))) {
                                return End::Gone;
                            }
                        }
                        Outbound::Close(code, reason) => {
                            let _ = tokio::time::timeout(write_timeout, ws.flush()).await;
                            return End::Close(code, reason);
                        }
                    }
                    match rx.try_recv() {
                        Ok(next) => m = next,
                        Err(_) => break,
                    }
                }
                if !matches!(tokio::time::timeout(write_timeout, ws.flush()).await, Ok(Ok(()))) {
                    return End::Gone;
                }
            }
            _ = async { let _ = shutdown.wait_for(|v| *v).await; } => {
                return End::Close(close_code::GOING_AWAY, "server shutting down; reconnect".into());
            }
            _ = ping.tick() => {
                let sent = tokio::time::timeout(write_timeout, ws.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return End::Gone;
                }
            }
            _ = tokio::time::sleep_until(last_heard + silence) => {
                if idle <= dead_after {
                    tracing::warn!(%runner_id, "runner sent nothing for {idle:?}; closing");
                    return End::Close(
                        close_code::IDLE_TIMEOUT,
                        format!("nothing received for {} s", idle.as_secs_f64()),
                    );
                }
                tracing::warn!(%runner_id, "runner silent for {dead_after:?}; dropping link");
                return End::Gone;
            }
        }
    }
}

async fn handle(
    s: &AppState,
    runner_id: &str,
    tx: &mpsc::WeakUnboundedSender<Outbound>,
    msg: RunnerMessage,
) {
    match msg {
        // Refused by the caller before it gets here.
        RunnerMessage::Hello(_) => {}
        RunnerMessage::Progress(p) => {
            if p.percent > 100 || !s.dispatcher.holds(runner_id, &p.task_id, p.attempt) {
                tracing::debug!(%runner_id, task_id = %p.task_id, "progress ignored (fenced or out of range)");
                return;
            }
            let op = WriteOp::Progress {
                task_id: p.task_id,
                runner_id: runner_id.to_owned(),
                attempt: p.attempt,
                percent: p.percent,
                stage: p.stage.map(|s| truncate(s, 200)),
                message: p.message.map(|s| truncate(s, 1000)),
            };
            // Queued in order behind earlier messages; nobody waits for the commit.
            let _ = s.store.writer().enqueue(op).await;
        }
        RunnerMessage::Completed(c) => {
            finish(s, runner_id, tx, c.task_id, c.attempt, Ok(c.result_data)).await;
        }
        RunnerMessage::Failed(f) => {
            let mut e = f.error;
            e.code = truncate(e.code, 64);
            e.message = truncate(e.message, 2000);
            finish(s, runner_id, tx, f.task_id, f.attempt, Err(e)).await;
        }
        RunnerMessage::Draining => s.dispatcher.drain(runner_id),
        RunnerMessage::HandBack(h) => {
            // Requeued (committed) before the ack, like a result; a hand back of an attempt
            // this runner no longer holds changes nothing and is acknowledged all the same.
            let d = std::sync::Arc::clone(&s.dispatcher);
            let runner_id = runner_id.to_owned();
            let tx = tx.clone();
            tokio::spawn(async move {
                d.hand_back(&runner_id, &h.task_id, h.attempt).await;
                if let Some(tx) = tx.upgrade() {
                    let _ = tx.send(Outbound::Send(ServerMessage::Ack {
                        task_id: h.task_id,
                        attempt: h.attempt,
                    }));
                }
            });
        }
    }
}

/// Record a result, then acknowledge it to the runner (which then forgets it); a result of an
/// attempt this runner does not hold is refused for good and acknowledged at once.
async fn finish(
    s: &AppState,
    runner_id: &str,
    tx: &mpsc::WeakUnboundedSender<Outbound>,
    task_id: String,
    attempt: u32,
    result: Result<serde_json::Value, dap_protocol::TaskError>,
) {
    let ack = {
        let tx = tx.clone();
        let task_id = task_id.clone();
        move || {
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(Outbound::Send(ServerMessage::Ack { task_id, attempt }));
            }
        }
    };
    if !s.dispatcher.holds(runner_id, &task_id, attempt) {
        tracing::debug!(%runner_id, %task_id, attempt, "result of a superseded or finished attempt refused");
        ack();
        return;
    }
    let op = WriteOp::Finish {
        task_id: task_id.clone(),
        runner_id: runner_id.to_owned(),
        attempt,
        result,
    };
    let Ok(done) = s.store.writer().enqueue(op).await else {
        return;
    };
    // The runner has finished the attempt, so its slot is free now: release it (and refill it
    // from the queue) at once rather than after the commit. The refill's assignment is queued
    // to the writer behind this result, so both usually commit in the same transaction and a
    // busy runner's slot waits for one commit per task, not two. The ack still waits for the
    // result's own commit. Neither holds up this socket's reads.
    let s = s.clone();
    let runner_id = runner_id.to_owned();
    tokio::spawn(async move {
        let acked = async {
            match done.await {
                Ok(Ok(outcome)) => {
                    if outcome == crate::store::Outcome::Applied(false) {
                        tracing::info!(%runner_id, %task_id, attempt, "result refused: the attempt was superseded meanwhile");
                    }
                    ack()
                }
                // Not acknowledged: the runner sends it again after its next reconnect.
                Ok(Err(e)) => tracing::error!(error = %e, %task_id, "recording a result failed"),
                Err(_) => {}
            }
        };
        tokio::join!(s.dispatcher.release(&runner_id, &task_id, attempt), acked);
    });
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
