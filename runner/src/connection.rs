//! The runner's link to the server: exchange the credential for a socket JWT, open the
//! WebSocket (outbound only), greet, then read assignments and cancels while a writer task drains
//! the [`Outbox`]; reconnect forever with exponential backoff and full jitter.
//!
//! It gives up only when the server says the credential is no good (401 on the token exchange,
//! close code 4001), that another process holds it (4004) or that it cannot speak our protocol
//! (4002). It does not run tasks (that is [`crate::executor`], which keeps going while the link is
//! down) and never logs the runner token or the JWT.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dap_protocol::{
    close_code, Hello, RunnerMessage, ServerMessage, CONNECT_PATH, PROTOCOL_VERSION, TOKEN_PATH,
};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header::AUTHORIZATION, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::catalog::Catalog;
use crate::executor::Executor;
use crate::outbox::Outbox;
use crate::stopping::Stopping;
use crate::{operations, RunnerConfig, RunnerError};

/// First reconnect delay ceiling.
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// Largest reconnect delay by default (`--reconnect-max-delay-ms`).
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Largest reconnect delay while the runner holds work (a running task or a result the server
/// has not acknowledged): well inside the server's grace period (30 s by default), so the
/// runner comes back in time to resume it instead of having it requeued and run twice.
pub const HOLDING_WORK_CAP: Duration = Duration::from_secs(5);
/// A connection that lasted this long was healthy: the next failure starts backing off afresh.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Timeout for the token exchange and for the WebSocket handshake.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for `welcome` after `hello`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
/// Floor for the server's heartbeat interval, so a bogus `0` does not drop every connection.
const MIN_HEARTBEAT: Duration = Duration::from_millis(500);
/// On shutdown, how long to keep sending already-queued results before closing.
const FLUSH_ON_SHUTDOWN: Duration = Duration::from_secs(2);
/// Extra margin when deciding which sent results may have been lost with a dead link.
const RESEND_MARGIN: Duration = Duration::from_secs(5);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The two server URLs derived from the configured base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// `http(s)://host[:port][/prefix]`, without a trailing slash (the REST API's base).
    pub base_url: String,
    /// `http(s)://…/api/v1/runners/token`
    pub token_url: String,
    /// `ws(s)://…/api/v1/runners/connect`
    pub connect_url: String,
}

impl Endpoints {
    /// Derive both URLs from `http://host:port[/prefix]`: `ws` for `http`, `wss` for `https`,
    /// keeping any path prefix (for a server behind a reverse proxy under `/dap`).
    pub fn from_server(server: &str) -> Result<Self, String> {
        let server = server.trim();
        let url = reqwest::Url::parse(server).map_err(|e| {
            format!("server URL `{server}` is not valid ({e}); expected e.g. http://127.0.0.1:8080")
        })?;
        let ws_scheme = match url.scheme() {
            "http" => "ws",
            "https" => "wss",
            other => {
                return Err(format!(
                    "server URL must start with http:// or https:// (got `{other}:`)"
                ))
            }
        };
        let host = url
            .host_str()
            .ok_or_else(|| format!("server URL `{server}` has no host"))?;
        if !url.username().is_empty() || url.password().is_some() {
            // Credentials in a URL end up in logs; the runner authenticates with its token.
            return Err("server URL must not contain a user name or password".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "server URL `{server}` must not have a query or fragment"
            ));
        }
        // host_str keeps the brackets of an IPv6 literal, so this is valid for `[::1]` too.
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let prefix = url.path().trim_end_matches('/');
        Ok(Self {
            base_url: format!("{}://{authority}{prefix}", url.scheme()),
            token_url: format!("{}://{authority}{prefix}{TOKEN_PATH}", url.scheme()),
            connect_url: format!("{ws_scheme}://{authority}{prefix}{CONNECT_PATH}"),
        })
    }

    /// True when talking to this server needs TLS.
    pub fn needs_tls(&self) -> bool {
        self.connect_url.starts_with("wss://")
    }
}

/// Exponential backoff with full jitter: the n-th delay is uniform in `0..=min(cap, base·2ⁿ)`,
/// so runners cut off by the same server restart do not all come back at the same instant.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        // 2^attempt overflows quickly; past 2^20 the cap has long been reached anyway.
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay (and one step further up the ladder).
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        self.next_delay_within(rng, self.cap)
    }

    /// [`Backoff::next_delay`], at most `limit` (for a runner that must not stay away long).
    pub fn next_delay_within(&mut self, rng: &mut impl Rng, limit: Duration) -> Duration {
        let ceiling = self.ceiling().min(limit);
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.gen_range(0..=ms))
    }

    /// Back to the first step (after a connection that was healthy for a while).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// What a close code from the server means for us.
#[derive(Debug, PartialEq, Eq)]
pub enum CloseAction {
    /// Reconnect after the usual backoff.
    Reconnect,
    /// Stop the runner with this error.
    Stop(StopReason),
}

/// Why the server told us to stop for good.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum StopReason {
    Revoked,
    Replaced,
    UnsupportedProtocol,
}

impl StopReason {
    fn into_error(self) -> RunnerError {
        match self {
            StopReason::Revoked => RunnerError::Revoked,
            StopReason::Replaced => RunnerError::Replaced,
            StopReason::UnsupportedProtocol => RunnerError::UnsupportedProtocol(PROTOCOL_VERSION),
        }
    }
}

/// Decide on a close code (none when the socket just ended).
pub fn close_action(code: Option<u16>) -> CloseAction {
    match code {
        Some(close_code::REVOKED) => CloseAction::Stop(StopReason::Revoked),
        // Reconnecting would evict the other holder of our credential, which would evict us…
        Some(close_code::REPLACED) => CloseAction::Stop(StopReason::Replaced),
        // Retrying cannot make the server learn our protocol.
        Some(close_code::UNSUPPORTED_PROTOCOL) => {
            CloseAction::Stop(StopReason::UnsupportedProtocol)
        }
        _ => CloseAction::Reconnect,
    }
}

/// Why one dial attempt failed.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("the server refused the runner token (401)")]
    Unauthorized,
    #[error("token exchange failed: {0}")]
    Token(String),
    #[error("WebSocket connection failed: {0}")]
    Socket(String),
}

/// How a connected session ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
    Stop(StopReason),
}

/// Answer of `POST /api/v1/runners/token`.
#[derive(serde::Deserialize)]
struct SocketToken {
    token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Connect, serve and reconnect until stopping is complete (see [`Stopping`]) or the server
/// refuses us for good.
pub async fn run(
    config: &RunnerConfig,
    trust: &crate::tls::Trust,
    catalog: &Catalog,
    executor: &Executor,
    outbox: &Arc<Outbox>,
    stopping: Stopping,
) -> Result<(), RunnerError> {
    let endpoints = Endpoints::from_server(&config.server).map_err(RunnerError::Config)?;
    let http = trust
        .http_client(
            reqwest::Client::builder()
                .timeout(DIAL_TIMEOUT)
                .connect_timeout(DIAL_TIMEOUT)
                .user_agent(concat!("dap-runner/", env!("CARGO_PKG_VERSION"))),
        )
        .map_err(RunnerError::Config)?;
    let connector = trust.ws_connector().map_err(RunnerError::Config)?;
    let link = Link {
        config,
        catalog,
        executor,
        outbox,
    };
    let mut stopping = stopping;
    let mut backoff = Backoff::new(BACKOFF_BASE, config.reconnect_max_delay);

    loop {
        let dial = async {
            let jwt = fetch_socket_token(&http, &endpoints, &config.token).await?;
            open_socket(&endpoints, &jwt, connector.clone()).await
        };
        let dialled = tokio::select! {
            _ = stopping.done(executor, outbox, false) => return Ok(()),
            r = dial => r,
        };
        let problem = match dialled {
            Err(DialError::Unauthorized) => return Err(RunnerError::Unauthorized),
            Err(e) => e.to_string(),
            Ok(socket) => {
                let began = Instant::now();
                match link.session(socket, &mut stopping).await {
                    SessionEnd::Shutdown => return Ok(()),
                    SessionEnd::Stop(reason) => return Err(reason.into_error()),
                    SessionEnd::Lost(why) => {
                        if began.elapsed() >= STABLE_AFTER {
                            backoff.reset();
                        }
                        format!("connection lost: {why}")
                    }
                }
            }
        };
        let holding_work = !executor.is_idle() || !outbox.unacknowledged().is_empty();
        let limit = if holding_work {
            HOLDING_WORK_CAP
        } else {
            Duration::MAX
        };
        let delay = backoff.next_delay_within(&mut rand::thread_rng(), limit);
        // One line per attempt: during a long outage this repeats every ≤30 s, no more.
        tracing::warn!(
            server = %config.server,
            attempt = backoff.attempt(),
            "{problem}; retrying in {:.1}s",
            delay.as_secs_f64()
        );
        tokio::select! {
            _ = stopping.done(executor, outbox, false) => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// An error and its causes on one line ("error sending request: connection refused"), since
/// the outermost message alone rarely says what went wrong.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Step 1: trade the enrolment credential for a short-lived socket JWT.
async fn fetch_socket_token(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    runner_token: &str,
) -> Result<String, DialError> {
    let response = http
        .post(&endpoints.token_url)
        .bearer_auth(runner_token)
        .send()
        .await
        .map_err(|e| DialError::Token(error_chain(&e)))?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(DialError::Unauthorized);
    }
    if !status.is_success() {
        return Err(DialError::Token(format!(
            "{} answered {status}",
            endpoints.token_url
        )));
    }
    let body: SocketToken = response
        .json()
        .await
        .map_err(|e| DialError::Token(format!("unreadable answer: {e}")))?;
    tracing::debug!(expires_in = ?body.expires_in, "got a socket token");
    Ok(body.token)
}

/// Step 2: the WebSocket, authenticated by the JWT on the upgrade request.
async fn open_socket(
    endpoints: &Endpoints,
    jwt: &str,
    connector: tokio_tungstenite::Connector,
) -> Result<Socket, DialError> {
    let mut request = endpoints
        .connect_url
        .as_str()
        .into_client_request()
        .map_err(|e| DialError::Socket(e.to_string()))?;
    let mut value = HeaderValue::from_str(&format!("Bearer {jwt}"))
        .map_err(|_| DialError::Token("the socket token is not a valid header value".into()))?;
    value.set_sensitive(true);
    request.headers_mut().insert(AUTHORIZATION, value);

    // Our connector (not tokio-tungstenite's default) so `--ca-cert` applies to wss:// too;
    // Nagle off: a progress and the completion right after it must not wait for a delayed ACK.
    let connect =
        tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector));
    match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
        Err(_) => Err(DialError::Socket(format!(
            "no handshake within {}s",
            DIAL_TIMEOUT.as_secs()
        ))),
        Ok(Err(WsError::Http(response))) => {
            let status = response.status();
            let hint = if status == StatusCode::UNAUTHORIZED {
                " (socket token refused)"
            } else {
                ""
            };
            Err(DialError::Socket(format!(
                "upgrade answered {status}{hint}"
            )))
        }
        Ok(Err(e)) => Err(DialError::Socket(error_chain(&e))),
        Ok(Ok((socket, _response))) => Ok(socket),
    }
}

/// What a connected session needs.
struct Link<'a> {
    config: &'a RunnerConfig,
    catalog: &'a Catalog,
    executor: &'a Executor,
    outbox: &'a Arc<Outbox>,
}

/// A server frame, as far as the session loop cares.
enum Incoming {
    Message(ServerMessage),
    /// A ping or pong: no content, but proof the link is alive.
    Heartbeat,
    Closed(Option<u16>, String),
    Ended(String),
}

impl Link<'_> {
    fn hello(&self) -> RunnerMessage {
        RunnerMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            name: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            slots: self.config.slots,
            operations: operations::SUPPORTED.to_vec(),
            datasets: self.catalog.infos(),
            running: {
                // Tasks still executing, and results on disk the server has not acknowledged
                // (it keeps their leases until it hears them).
                let mut running = self.executor.running();
                for t in self.outbox.unacknowledged() {
                    if !running.contains(&t) {
                        running.push(t);
                    }
                }
                running
            },
        })
    }

    /// Steps 3–4: greet, then serve until the link ends.
    async fn session(&self, socket: Socket, stopping: &mut Stopping) -> SessionEnd {
        let (mut sink, mut stream) = socket.split();
        if let Err(e) = sink.send(Message::text(self.hello().to_json())).await {
            return SessionEnd::Lost(format!("sending hello: {e}"));
        }

        let first_message = async {
            loop {
                match next_incoming(&mut stream).await {
                    Incoming::Heartbeat => continue,
                    other => return other,
                }
            }
        };
        let first = tokio::select! {
            _ = stopping.done(self.executor, self.outbox, false) => return SessionEnd::Shutdown,
            r = tokio::time::timeout(WELCOME_TIMEOUT, first_message) => r,
        };
        let heartbeat = match first {
            Err(_) => return SessionEnd::Lost("no welcome from the server".into()),
            Ok(Incoming::Message(ServerMessage::Welcome {
                runner_id,
                heartbeat_interval_ms,
            })) => {
                tracing::info!(%runner_id, server = %self.config.server, "connected");
                self.executor.connected();
                let n = self.outbox.resend_unacknowledged();
                if n > 0 {
                    tracing::info!(
                        count = n,
                        "sending results the server has not acknowledged yet"
                    );
                }
                Duration::from_millis(heartbeat_interval_ms).max(MIN_HEARTBEAT)
            }
            Ok(Incoming::Message(other)) => {
                return SessionEnd::Lost(format!("expected welcome, got {other:?}"))
            }
            Ok(Incoming::Closed(code, reason)) => return closed(code, reason),
            Ok(Incoming::Ended(why)) => return SessionEnd::Lost(why),
            // Skipped by `first_message`; listed so the match stays exhaustive without a panic.
            Ok(Incoming::Heartbeat) => return SessionEnd::Lost("expected welcome".into()),
        };
        // The server pings every heartbeat; three silent intervals mean the link is dead even if
        // TCP has not noticed (a NAT forgot us, a laptop slept).
        let dead_after = heartbeat.saturating_mul(3);

        let (close_tx, close_rx) = oneshot::channel();
        let mut writer = tokio::spawn(write_loop(sink, Arc::clone(self.outbox), close_rx));
        // A stopping runner says so on every link, so no node assigns it anything new.
        let mut announced = false;
        let mut watch_stop = stopping.clone();

        let end = loop {
            if !announced && stopping.is_stopping() {
                self.outbox.push(RunnerMessage::Draining);
                announced = true;
            }
            tokio::select! {
                biased;
                _ = stopping.done(self.executor, self.outbox, true) => break SessionEnd::Shutdown,
                _ = watch_stop.started(), if !announced => {}
                w = &mut writer => {
                    let why = match w {
                        Ok(Err(e)) => format!("sending failed: {e}"),
                        Ok(Ok(())) => "writer stopped".to_owned(),
                        Err(e) => format!("writer crashed: {e}"),
                    };
                    break SessionEnd::Lost(why);
                }
                incoming = tokio::time::timeout(dead_after, next_incoming(&mut stream)) => {
                    match incoming {
                        Err(_) => break SessionEnd::Lost(format!(
                            "nothing heard for {:.1}s (3 heartbeats)", dead_after.as_secs_f64()
                        )),
                        Ok(Incoming::Message(ServerMessage::Assign(a))) => self.executor.assign(a),
                        Ok(Incoming::Message(ServerMessage::Cancel { task_id, attempt })) => {
                            self.executor.cancel(&task_id, attempt)
                        }
                        Ok(Incoming::Message(ServerMessage::Ack { task_id, attempt })) => {
                            self.outbox.acknowledged(&task_id, attempt)
                        }
                        Ok(Incoming::Message(ServerMessage::Welcome { .. })) => {
                            tracing::debug!("ignoring a second welcome")
                        }
                        Ok(Incoming::Heartbeat) => {}
                        Ok(Incoming::Closed(code, reason)) => break closed(code, reason),
                        Ok(Incoming::Ended(why)) => break SessionEnd::Lost(why),
                    }
                }
            }
        };

        // Uploads refused while the link is down are retried once it is back (see executor).
        self.executor.disconnected();
        match &end {
            SessionEnd::Shutdown => {
                self.executor.shut_down();
                // Results that are already queued are worth a moment; then say goodbye.
                let flushed = tokio::time::timeout(FLUSH_ON_SHUTDOWN, async {
                    while !self.outbox.is_empty() && !writer.is_finished() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await;
                if flushed.is_err() {
                    tracing::warn!(
                        pending = self.outbox.len(),
                        "shutting down with unsent messages"
                    );
                }
                let _ = close_tx.send(CloseFrame {
                    code: CloseCode::Away,
                    reason: "runner shutting down".into(),
                });
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer).await;
                writer.abort();
                self.outbox.forget_sent();
            }
            SessionEnd::Lost(_) => {
                writer.abort();
                // Results written shortly before the link died may be lost in a dead TCP
                // connection; the server de-duplicates, so sending them again is safe.
                let window = dead_after + RESEND_MARGIN;
                let since = Instant::now()
                    .checked_sub(window)
                    .unwrap_or_else(Instant::now);
                let n = self.outbox.requeue_recent(since);
                if n > 0 {
                    tracing::info!(count = n, "will resend recent results after reconnecting");
                }
            }
            SessionEnd::Stop(_) => writer.abort(),
        }
        end
    }
}

fn closed(code: Option<u16>, reason: String) -> SessionEnd {
    match close_action(code) {
        CloseAction::Stop(reason_code) => {
            tracing::error!(?code, %reason, "the server closed the connection for good");
            SessionEnd::Stop(reason_code)
        }
        CloseAction::Reconnect => SessionEnd::Lost(match code {
            Some(c) if reason.is_empty() => format!("server closed the connection (code {c})"),
            Some(c) => format!("server closed the connection (code {c}: {reason})"),
            None => "server closed the connection".to_owned(),
        }),
    }
}

/// Read frames until one matters. Pings are answered by tungstenite itself (when the stream is
/// read), so they only count as "heard from the server".
async fn next_incoming(stream: &mut futures_util::stream::SplitStream<Socket>) -> Incoming {
    loop {
        match stream.next().await {
            None => return Incoming::Ended("connection closed".into()),
            Some(Err(e)) => return Incoming::Ended(e.to_string()),
            Some(Ok(Message::Text(text))) => {
                match serde_json::from_str::<ServerMessage>(text.as_str()) {
                    Ok(message) => return Incoming::Message(message),
                    // A newer server may send message types we do not know yet; skip them.
                    Err(e) => tracing::warn!("ignoring a server message we cannot read: {e}"),
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return match frame {
                    Some(f) => {
                        Incoming::Closed(Some(u16::from(f.code)), f.reason.as_str().to_owned())
                    }
                    None => Incoming::Closed(None, String::new()),
                }
            }
            Some(Ok(Message::Binary(_))) => tracing::warn!("ignoring a binary frame"),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                // Returning lets the caller's dead-link timer start over.
                return Incoming::Heartbeat;
            }
        }
    }
}

/// The send half: drain the outbox into the socket until told to close or the socket fails.
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<Socket, Message>,
    outbox: Arc<Outbox>,
    mut close: oneshot::Receiver<CloseFrame>,
) -> Result<(), String> {
    loop {
        tokio::select! {
            biased;
            frame = &mut close => {
                let _ = sink.send(Message::Close(frame.ok())).await;
                let _ = sink.close().await;
                return Ok(());
            }
            queued = outbox.peek() => {
                sink.send(Message::text(queued.message.to_json()))
                    .await
                    .map_err(|e| e.to_string())?;
                // Only now is it off our hands (see Outbox: peek → send → ack).
                outbox.ack(queued.seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn endpoints_from_server_urls() {
        let e = Endpoints::from_server("http://127.0.0.1:8080").unwrap();
        assert_eq!(e.base_url, "http://127.0.0.1:8080");
        assert_eq!(e.token_url, "http://127.0.0.1:8080/api/v1/runners/token");
        assert_eq!(e.connect_url, "ws://127.0.0.1:8080/api/v1/runners/connect");
        assert!(!e.needs_tls());

        let e = Endpoints::from_server("https://dap.example.com/base/").unwrap();
        assert_eq!(e.base_url, "https://dap.example.com/base");
        assert_eq!(
            e.token_url,
            "https://dap.example.com/base/api/v1/runners/token"
        );
        assert_eq!(
            e.connect_url,
            "wss://dap.example.com/base/api/v1/runners/connect"
        );
        assert!(e.needs_tls());

        let e = Endpoints::from_server(" http://[::1]:9000/ ").unwrap();
        assert_eq!(e.connect_url, "ws://[::1]:9000/api/v1/runners/connect");

        for bad in [
            "ftp://x",
            "localhost:8080",
            "not a url",
            "http://user:pw@host",
            "http://host/?q=1",
            "ws://host",
        ] {
            assert!(Endpoints::from_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_within_a_limit_stays_under_it_and_keeps_climbing() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..12 {
            assert!(b.next_delay_within(&mut rng, HOLDING_WORK_CAP) <= HOLDING_WORK_CAP);
        }
        assert_eq!(
            b.ceiling(),
            Duration::from_secs(30),
            "the ladder still climbed"
        );
        assert!(
            HOLDING_WORK_CAP * 4 < Duration::from_secs(30),
            "well inside the default grace"
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_full_jitter() {
        let mut b = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        let mut rng = StdRng::seed_from_u64(7);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            let ceiling = b.ceiling();
            let d = b.next_delay(&mut rng);
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(
            ceilings,
            vec![250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000, 30000]
        );
        // Jitter really spreads: many draws at the cap are not all the same.
        let draws: std::collections::HashSet<_> = (0..20).map(|_| b.next_delay(&mut rng)).collect();
        assert!(draws.len() > 10);
        b.reset();
        assert_eq!(b.ceiling(), BACKOFF_BASE);
        // No overflow however long the outage.
        for _ in 0..10_000 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.ceiling(), BACKOFF_CAP);
    }

    #[test]
    fn close_codes() {
        assert_eq!(
            close_action(Some(4001)),
            CloseAction::Stop(StopReason::Revoked)
        );
        assert_eq!(
            close_action(Some(4004)),
            CloseAction::Stop(StopReason::Replaced)
        );
        assert_eq!(
            close_action(Some(4002)),
            CloseAction::Stop(StopReason::UnsupportedProtocol)
        );
        for code in [1000, 1001, 1002, 1008, 1009, 4003] {
            assert_eq!(close_action(Some(code)), CloseAction::Reconnect, "{code}");
        }
        assert_eq!(close_action(None), CloseAction::Reconnect);
    }
}
