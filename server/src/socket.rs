//! The runner socket (`GET /api/v1/runners/connect`): authenticates the upgrade with a runner
//! JWT, reads the greeting, registers the runner with the dispatcher, then runs a send half
//! (assignments, cancels, pings) and a receive half (progress, results) until either ends.
//!
//! It translates frames to dispatcher and store calls; it decides nothing about placement and
//! never reads the database except to check that the runner is not revoked.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::Response;
use dap_protocol::{close_code, Hello, RunnerMessage, ServerMessage, PROTOCOL_VERSION};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::auth::{AuthError, TokenKind};
use crate::dispatcher::Outbound;
use crate::http::extract::bearer;
use crate::http::ApiError;
use crate::store::WriteOp;
use crate::AppState;

/// Largest frame a runner may send (results travel inline up to this size).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_SLOTS: u32 = 1024;

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
        let token = bearer(parts).ok_or(AuthError::Missing)?;
        let claims = s.jwt.verify(token, TokenKind::Runner)?;
        match s.store.get_runner(&claims.sub).await? {
            Some(r) if r.revoked_at.is_none() => Ok(RunnerAuth(r.id)),
            Some(_) => Err(AuthError::Revoked.into()),
            None => Err(AuthError::Invalid.into()),
        }
    }
}

#[utoipa::path(get, path = "/api/v1/runners/connect", tag = "runners", security(("runner_jwt" = [])),
    description = "The runner WebSocket (HTTP/1.1 upgrade). Messages are the JSON of `dap-protocol`; close codes 4001 revoked, 4002 protocol, 4004 replaced.",
    responses((status = 101, description = "Switching protocols"), (status = 401, body = crate::http::openapi::ErrorBody),
        (status = 403, description = "Browser request (Origin header)", body = crate::http::openapi::ErrorBody)))]
pub async fn connect(
    State(s): State<AppState>,
    RunnerAuth(runner_id): RunnerAuth,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| serve(s, runner_id, socket))
}

async fn close(mut sink: SplitSink<WebSocket, Message>, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
}

async fn read_hello(stream: &mut SplitStream<WebSocket>) -> Result<Hello, (u16, String)> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, stream.next()).await;
    let text = match first {
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(_) => {
            return Err((
                close_code::EXPECTED_HELLO,
                "first message must be hello".into(),
            ))
        }
        Err(_) => {
            return Err((close_code::EXPECTED_HELLO, "no hello within 10 s".into()));
        }
    };
    let hello = match serde_json::from_str::<RunnerMessage>(text.as_str()) {
        Ok(RunnerMessage::Hello(h)) => h,
        Ok(_) => {
            return Err((
                close_code::EXPECTED_HELLO,
                "first message must be hello".into(),
            ))
        }
        Err(e) => return Err((close_code::PROTOCOL_ERROR, format!("invalid hello: {e}"))),
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err((
            close_code::UNSUPPORTED_PROTOCOL,
            format!(
                "protocol version {} is not supported (server speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            ),
        ));
    }
    if hello.slots == 0 || hello.slots > MAX_SLOTS {
        return Err((
            close_code::PROTOCOL_ERROR,
            format!("slots must be 1..={MAX_SLOTS}"),
        ));
    }
    Ok(hello)
}

async fn serve(s: AppState, runner_id: String, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let hello = match read_hello(&mut stream).await {
        Ok(h) => h,
        Err((code, reason)) => {
            tracing::warn!(%runner_id, code, %reason, "runner greeting refused");
            close(sink, code, &reason).await;
            return;
        }
    };
    let heartbeat = s.settings.heartbeat;
    // Register before the welcome: a client that creates a task the moment the runner says it
    // is connected must find it registered. What registration pushes (assignments, cancels)
    // waits in the channel and goes out after the welcome.
    let (tx, rx) = mpsc::unbounded_channel();
    let conn_id = s.dispatcher.register(&runner_id, &hello, tx.clone()).await;
    let welcome = ServerMessage::Welcome {
        runner_id: runner_id.clone(),
        heartbeat_interval_ms: heartbeat.as_millis() as u64,
    };
    if sink
        .send(Message::Text(welcome.to_json().into()))
        .await
        .is_err()
    {
        s.dispatcher.unregister(&runner_id, conn_id).await;
        return;
    }
    tracing::info!(%runner_id, name = %hello.name, slots = hello.slots, "runner connected");

    let mut send_task = tokio::spawn(send_loop(sink, rx, heartbeat, s.shutdown.clone()));
    let mut recv_task = tokio::spawn(recv_loop(
        s.clone(),
        runner_id.clone(),
        stream,
        tx,
        heartbeat,
    ));
    // When the send half ends it has sent any close frame it was asked to; when the receive
    // half ends the peer is gone (or silent), so there is nothing left worth sending.
    tokio::select! {
        _ = &mut send_task => recv_task.abort(),
        _ = &mut recv_task => send_task.abort(),
    }
    tracing::info!(%runner_id, "runner disconnected");
    s.dispatcher.unregister(&runner_id, conn_id).await;
}

async fn send_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    heartbeat: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut ping = tokio::time::interval(heartbeat);
    ping.tick().await;
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(mut m) = m else { break };
                // Feed everything already waiting, then flush once.
                loop {
                    match m {
                        Outbound::Send(msg) => {
                            if sink.feed(Message::Text(msg.to_json().into())).await.is_err() {
                                return;
                            }
                        }
                        Outbound::Close(code, reason) => {
                            let _ = sink.flush().await;
                            close(sink, code, &reason).await;
                            return;
                        }
                    }
                    match rx.try_recv() {
                        Ok(next) => m = next,
                        Err(_) => break,
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            _ = async { let _ = shutdown.wait_for(|v| *v).await; } => {
                close(sink, close_code::GOING_AWAY, "server shutting down; reconnect").await;
                return;
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn recv_loop(
    s: AppState,
    runner_id: String,
    mut stream: SplitStream<WebSocket>,
    tx: mpsc::UnboundedSender<Outbound>,
    heartbeat: Duration,
) {
    // Three missed heartbeats (pongs answer our pings) and the link is considered dead.
    let dead_after = heartbeat * 3;
    loop {
        let msg = match tokio::time::timeout(dead_after, stream.next()).await {
            Err(_) => {
                tracing::warn!(%runner_id, "runner silent for {dead_after:?}; dropping link");
                return;
            }
            Ok(None) | Ok(Some(Err(_))) => return,
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Binary(_) => {
                let _ = tx.send(Outbound::Close(
                    close_code::PROTOCOL_ERROR,
                    "binary frames are not part of the protocol".into(),
                ));
                continue;
            }
        };
        let msg = match serde_json::from_str::<RunnerMessage>(text.as_str()) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%runner_id, error = %e, "invalid runner message");
                let _ = tx.send(Outbound::Close(
                    close_code::PROTOCOL_ERROR,
                    format!("invalid message: {e}"),
                ));
                continue;
            }
        };
        handle(&s, &runner_id, msg, &tx).await;
    }
}

async fn handle(
    s: &AppState,
    runner_id: &str,
    msg: RunnerMessage,
    tx: &mpsc::UnboundedSender<Outbound>,
) {
    match msg {
        RunnerMessage::Hello(_) => {
            let _ = tx.send(Outbound::Close(
                close_code::PROTOCOL_ERROR,
                "hello may only be sent once".into(),
            ));
        }
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
            finish(s, runner_id, c.task_id, c.attempt, Ok(c.result_data)).await;
        }
        RunnerMessage::Failed(f) => {
            let mut e = f.error;
            e.code = truncate(e.code, 64);
            e.message = truncate(e.message, 2000);
            finish(s, runner_id, f.task_id, f.attempt, Err(e)).await;
        }
    }
}

async fn finish(
    s: &AppState,
    runner_id: &str,
    task_id: String,
    attempt: u32,
    result: Result<serde_json::Value, dap_protocol::TaskError>,
) {
    if !s.dispatcher.holds(runner_id, &task_id, attempt) {
        tracing::debug!(%runner_id, %task_id, attempt, "result of a superseded or finished attempt refused");
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
    // Free the slot once the result is durable, without holding up this socket's reads.
    let s = s.clone();
    let runner_id = runner_id.to_owned();
    tokio::spawn(async move {
        if let Ok(Err(e)) = done.await {
            tracing::error!(error = %e, %task_id, "recording a result failed");
        }
        s.dispatcher.release(&runner_id, &task_id, attempt).await;
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
