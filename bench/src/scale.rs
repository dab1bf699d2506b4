//! Connections at scale, through the release `dap-server` binary started as a child process
//! (its memory is what is measured, so it must not share a process with the clients):
//!
//! - [`idle_connections`]: N registered runners (each its own credential, token exchange,
//!   WebSocket and greeting, exactly as `dap-runner` connects) that then stay idle, answering the
//!   server's pings. Prints the server's resident memory before and after, per connection, and
//!   the dispatch latency to one of the idle runners while all of them are connected.
//! - [`sse_fanout`]: S browser-style subscribers of the SSE feed (each with its own ticket) and
//!   one runner reporting progress; for every event, the time from the runner sending it to each
//!   subscriber receiving it.
//!
//! The clients are deliberately lean (a 4 KiB WebSocket read buffer; SSE subscribers are raw TCP
//! readers that only look for a marker), so the client process's own cost stays small next to
//! the server's. It asserts what would make the numbers meaningless (a connection dropped during
//! the measurement, an event not delivered) and fails instead of printing them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
use dap_protocol::{Completed, Hello, Progress, RunnerMessage, ServerMessage, PROTOCOL_VERSION};
use dap_server::auth::api_keys::create_api_key;
use dap_server::auth::secrets::{random_secret, RUNNER_TOKEN_PREFIX};
use dap_server::events::EventBus;
use dap_server::store::{Scope, Store};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::stack::{rss_bytes, temp_dir, ServerProcess};

type ClientWs = WebSocketStream<TcpStream>;

/// Options of [`idle_connections`].
pub struct IdleArgs {
    pub connections: usize,
    /// Connections being opened at once.
    pub concurrency: usize,
    /// How long to let the connections settle (several heartbeats) before reading the RSS.
    pub settle: Duration,
    /// Tasks pushed to idle runners (one each) while all are connected.
    pub probes: usize,
    pub bin_dir: PathBuf,
}

/// Options of [`sse_fanout`].
pub struct FanoutArgs {
    pub subscribers: usize,
    pub events: usize,
    /// Time between two progress messages (the real runner sends at most one per ~100 ms).
    pub interval: Duration,
    pub bin_dir: PathBuf,
}

/// An API key and runner credentials written straight into a fresh data directory.
struct Seeded {
    key: String,
    credentials: Vec<String>,
}

/// Writes an admin API key and `runners` runner enrolments into the store at `dir`, before the
/// server starts on it.
///
/// Enrolling through `dap-server runner create` or the REST API hashes each credential with
/// argon2id at its default cost (~35 ms of CPU here), and every token exchange verifies it at
/// the same cost: for 10,000 runners that is ~6 minutes on two cores before anything is
/// measured. The rows written here are the same rows `runner create` writes, but their hashes
/// use argon2id's minimum cost; the server verifies a PHC hash with the parameters stored in it,
/// so every runner still goes through the real token exchange and socket authentication, only
/// cheaper. Nothing of this is left in the server once the runners are connected, so the memory
/// measured is unaffected.
async fn seed(dir: &Path, runners: usize) -> Result<Seeded, String> {
    let url = format!("sqlite://{}", dir.join("dap.db").display());
    let store = Store::open(&url, EventBus::new())
        .await
        .map_err(|e| format!("opening the store: {e}"))?;
    let (_, key) = create_api_key(&store, "bench", Scope::Admin)
        .await
        .map_err(|e| format!("creating the API key: {e}"))?;
    let params = argon2::Params::new(argon2::Params::MIN_M_COST, 1, 1, None)
        .map_err(|e| format!("argon2 params: {e}"))?;
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut credentials = Vec::with_capacity(runners);
    for i in 0..runners {
        let id = uuid::Uuid::now_v7().to_string();
        let token = format!("{RUNNER_TOKEN_PREFIX}{id}_{}", random_secret());
        let salt = SaltString::generate(&mut OsRng);
        let hash = hasher
            .hash_password(token.as_bytes(), &salt)
            .map_err(|e| format!("argon2: {e}"))?
            .to_string();
        store
            .create_runner(&id, &format!("bench-{i}"), &hash)
            .await
            .map_err(|e| format!("enrolling runner {i}: {e}"))?;
        credentials.push(token);
    }
    store.close().await;
    Ok(Seeded { key, credentials })
}

/// The soft limit on open files of this process (children inherit it).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn need_open_files(n: usize) -> Result<(), String> {
    let need = n as u64 + 512;
    match open_files_limit() {
        Some(have) if have < need => Err(format!(
            "{n} connections need about {need} open files per process, the limit is {have}: \
             raise it first (`ulimit -n {need}`; `ulimit -Hn` shows how far; bench/run-all.sh does it)"
        )),
        _ => Ok(()),
    }
}

fn server_bin(bin_dir: &Path) -> Result<PathBuf, String> {
    let b = bin_dir.join("dap-server");
    if b.is_file() {
        Ok(b)
    } else {
        Err(format!(
            "{} not found; build it first: cargo build --release -p dap-server",
            b.display()
        ))
    }
}

fn addr_of(base: &str) -> Result<SocketAddr, String> {
    base.trim_start_matches("http://")
        .parse()
        .map_err(|e| format!("server address {base}: {e}"))
}

/// The client's WebSocket settings: a small read buffer, so 10,000 clients stay light (and a
/// busy one does not zero 128 KiB, tungstenite's default, before every read).
pub fn client_ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4 << 10)
}

/// A runner's answer to a no-op assignment: `completed` with `{"noop": true}`.
pub fn noop_completed(task_id: String, attempt: u32) -> Message {
    let done = RunnerMessage::Completed(Completed {
        task_id,
        attempt,
        result_data: json!({ "noop": true }),
    });
    Message::Text(done.to_json().into())
}

/// Connects one runner the way `dap-runner` does: credential → socket JWT, WebSocket with the
/// JWT, `hello`, `welcome`. Returns the socket and the runner id.
async fn connect_runner(
    server: &ServerProcess,
    addr: SocketAddr,
    credential: &str,
    name: &str,
) -> Result<(ClientWs, String), String> {
    let r = server
        .http
        .post(format!("{}{}", server.base, dap_protocol::TOKEN_PATH))
        .bearer_auth(credential)
        .send()
        .await
        .map_err(|e| format!("token exchange: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("token exchange: HTTP {}", r.status()));
    }
    let v: Value = r.json().await.map_err(|e| format!("token exchange: {e}"))?;
    let jwt = v["token"].as_str().ok_or("token exchange: no token")?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let mut req = format!("ws://{addr}{}", dap_protocol::CONNECT_PATH)
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {jwt}")
            .parse()
            .map_err(|e| format!("header: {e}"))?,
    );
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(req, tcp, Some(client_ws_config()))
            .await
            .map_err(|e| format!("WebSocket upgrade: {e}"))?;
    let hello = RunnerMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        name: name.to_owned(),
        version: "dap-bench".into(),
        slots: 1,
        operations: vec![dap_protocol::op::NOOP],
        datasets: vec![],
        running: vec![],
    });
    ws.send(Message::Text(hello.to_json().into()))
        .await
        .map_err(|e| format!("hello: {e}"))?;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str(t.as_str()) {
                Ok(ServerMessage::Welcome { runner_id, .. }) => return Ok((ws, runner_id)),
                other => return Err(format!("expected welcome, got {other:?}")),
            },
            Ok(Some(Ok(_))) => continue,
            other => return Err(format!("expected welcome, got {other:?}")),
        }
    }
}

/// An idle runner: reads (which also answers the server's pings), completes a no-op if one is
/// pushed to it and reports when it arrived; counts itself in `dropped` when the link ends.
async fn idle_runner(
    mut ws: ClientWs,
    index: usize,
    assigned: mpsc::UnboundedSender<(usize, Instant)>,
    dropped: Arc<AtomicUsize>,
) {
    while let Some(Ok(m)) = ws.next().await {
        let Message::Text(t) = m else { continue };
        if let Ok(ServerMessage::Assign(a)) = serde_json::from_str(t.as_str()) {
            let _ = assigned.send((index, Instant::now()));
            if ws.send(noop_completed(a.task_id, a.attempt)).await.is_err() {
                break;
            }
        }
    }
    dropped.fetch_add(1, Ordering::Relaxed);
}

/// Value of an unlabelled gauge in a Prometheus text exposition.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn metric(server: &ServerProcess, name: &str) -> Result<f64, String> {
    let text = server
        .http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .map_err(|e| format!("GET /metrics: {e}"))?
        .text()
        .await
        .map_err(|e| format!("GET /metrics: {e}"))?;
    gauge(&text, name).ok_or_else(|| format!("no {name} in /metrics"))
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| Duration::from_secs_f64(ticks as f64 / clock_ticks_per_s()))
        .ok_or_else(|| format!("unreadable /proc/{pid}/stat"))
}

/// utime + stime in clock ticks; the fields after the command name, which may contain spaces.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of the whole line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `USER_HZ`: 100 on every Linux this runs on (the kernel ABI fixes it for `/proc`).
fn clock_ticks_per_s() -> f64 {
    100.0
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

const KIB: f64 = 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

/// The server's RSS after `settle`, reading it once a second and keeping the last reading.
async fn settled_rss(
    server: &mut ServerProcess,
    settle: Duration,
    dropped: &AtomicUsize,
) -> Result<u64, String> {
    let end = Instant::now() + settle;
    let mut rss = rss_bytes(server.pid())?;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1).min(end - Instant::now())).await;
        server.check_alive()?;
        rss = rss_bytes(server.pid())?;
    }
    match dropped.load(Ordering::Relaxed) {
        0 => Ok(rss),
        n => Err(format!(
            "{n} idle connections were closed while settling; see the server log"
        )),
    }
}

/// Opens `credentials` as idle runners, `concurrency` at a time; their tasks report pushed
/// tasks on `assigned` and count ended links in `dropped`.
async fn open_idle(
    server: &ServerProcess,
    addr: SocketAddr,
    credentials: &[(usize, String)],
    concurrency: usize,
    assigned: &mpsc::UnboundedSender<(usize, Instant)>,
    dropped: &Arc<AtomicUsize>,
) -> Result<Vec<(usize, String, tokio::task::JoinHandle<()>)>, String> {
    let connected: Vec<Result<_, String>> = futures_util::stream::iter(credentials)
        .map(|(i, cred)| async move {
            let (ws, id) = connect_runner(server, addr, cred, &format!("idle-{i}")).await?;
            Ok((*i, id, ws))
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut out = Vec::with_capacity(connected.len());
    for c in connected {
        let (i, id, ws) = c?;
        let handle = tokio::spawn(idle_runner(ws, i, assigned.clone(), dropped.clone()));
        out.push((i, id, handle));
    }
    Ok(out)
}

/// `dap-bench idle-connections`: server RSS per idle runner connection.
pub async fn idle_connections(args: &IdleArgs) -> Result<(), String> {
    let n = args.connections.max(2);
    need_open_files(n)?;
    let bin = server_bin(&args.bin_dir)?;
    let dir = temp_dir("idle")?;
    let started = Instant::now();
    let seeded = seed(dir.path(), n).await?;
    eprintln!(
        "enrolled {n} runners in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Production defaults: heartbeat 3 s, idle timeout 30 s, 2 sockets per credential.
    let mut server = ServerProcess::start(&bin, dir.path(), &[]).await?;
    let addr = addr_of(&server.base)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_bytes(server.pid())?;

    let (assigned_tx, mut assigned_rx) = mpsc::unbounded_channel();
    let dropped = Arc::new(AtomicUsize::new(0));
    let creds: Vec<(usize, String)> = seeded.credentials.into_iter().enumerate().collect();
    let (first, second) = creds.split_at(n / 2);

    // Half, settle, the other half, settle: the difference between the two readings is the cost
    // of one more connection without the server's fixed costs.
    let t0 = Instant::now();
    let mut runners = open_idle(
        &server,
        addr,
        first,
        args.concurrency,
        &assigned_tx,
        &dropped,
    )
    .await?;
    let first_secs = t0.elapsed().as_secs_f64();
    eprintln!("{} idle runners connected; settling", runners.len());
    let rss_half = settled_rss(&mut server, args.settle, &dropped).await?;
    let t1 = Instant::now();
    runners.extend(
        open_idle(
            &server,
            addr,
            second,
            args.concurrency,
            &assigned_tx,
            &dropped,
        )
        .await?,
    );
    let connect_secs = first_secs + t1.elapsed().as_secs_f64();
    eprintln!("{} idle runners connected; settling", runners.len());
    let rss_after = settled_rss(&mut server, args.settle, &dropped).await?;
    let connected = metric(&server, "dap_runners_connected").await?;
    if connected as usize != n {
        return Err(format!(
            "the server counts {connected} connected runners, expected {n}"
        ));
    }

    // The key's first use runs its argon2 check (cached afterwards): not part of a dispatch.
    server
        .http
        .get(format!("{}/api/v1/tasks?limit=1", server.base))
        .bearer_auth(&seeded.key)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("GET /api/v1/tasks: {e}"))?;
    // While all are connected: push a no-op to one idle runner at a time.
    let mut dispatch = Vec::new();
    for k in 0..args.probes {
        let (idx, runner_id, _) = &runners[(k * 7919) % runners.len()];
        let t = Instant::now();
        let r = server
            .http
            .post(format!("{}/api/v1/tasks", server.base))
            .bearer_auth(&seeded.key)
            .json(&json!({ "operation_code": dap_protocol::op::NOOP, "runner_id": runner_id }))
            .send()
            .await
            .map_err(|e| format!("POST /api/v1/tasks: {e}"))?;
        if r.status() != 201 {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            return Err(format!("POST /api/v1/tasks: HTTP {status}: {body}"));
        }
        loop {
            let got = tokio::time::timeout(Duration::from_secs(30), assigned_rx.recv())
                .await
                .map_err(|_| "a pushed task did not arrive within 30 s".to_owned())?
                .ok_or("assignment channel closed")?;
            if got.0 == *idx {
                dispatch.push(got.1.duration_since(t).as_secs_f64() * 1000.0);
                break;
            }
        }
    }
    if std::env::var_os("DAP_BENCH_VERBOSE").is_some() {
        let each: Vec<String> = dispatch.iter().map(|ms| format!("{ms:.2}")).collect();
        eprintln!("dispatch probes in order (ms): {}", each.join(" "));
    }
    dispatch.sort_by(f64::total_cmp);
    if dropped.load(Ordering::Relaxed) != 0 {
        return Err("idle connections were closed during the dispatch probes".into());
    }

    let delta = rss_after.saturating_sub(rss_before) as f64;
    let marginal = rss_after.saturating_sub(rss_half) as f64 / (n - n / 2) as f64;
    println!("idle_connections: {n} count");
    println!(
        "idle_connect_rate: {:.0} connections/s",
        n as f64 / connect_secs
    );
    println!("idle_rss_baseline: {:.1} MiB", rss_before as f64 / MIB);
    println!("idle_rss_total: {:.1} MiB", rss_after as f64 / MIB);
    println!("idle_rss_per_connection: {:.1} KiB", delta / n as f64 / KIB);
    println!(
        "idle_rss_per_connection_marginal: {:.1} KiB",
        marginal / KIB
    );
    if !dispatch.is_empty() {
        println!("idle_dispatch_p50: {:.2} ms", percentile(&dispatch, 0.5));
        println!("idle_dispatch_max: {:.2} ms", dispatch[dispatch.len() - 1]);
    }
    for (_, _, h) in &runners {
        h.abort();
    }
    drop(server);
    Ok(())
}

/// The marker a subscriber looks for in the raw stream: the progress message names its index.
const FANOUT_MARKER: &[u8] = b"\"message\":\"fanout-";

/// Finds complete markers in `buf`, returns the event indices found and how many bytes of `buf`
/// may be discarded (everything before a marker that may still be incomplete).
fn scan_markers(buf: &[u8]) -> (Vec<usize>, usize) {
    let mut found = Vec::new();
    let mut pos = 0;
    while let Some(off) = find(&buf[pos..], FANOUT_MARKER) {
        let start = pos + off + FANOUT_MARKER.len();
        let digits = buf[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        match buf.get(start + digits) {
            Some(b'"') if digits > 0 => {
                let idx = std::str::from_utf8(&buf[start..start + digits])
                    .ok()
                    .and_then(|s| s.parse().ok());
                if let Some(idx) = idx {
                    found.push(idx);
                }
                pos = start + digits + 1;
            }
            // Not all there yet: keep it from the marker on.
            None => return (found, pos + off),
            // Something else after the marker: skip it.
            Some(_) => pos = start,
        }
    }
    // Keep a tail that could be the start of a marker.
    let keep = FANOUT_MARKER.len().min(buf.len() - pos);
    (found, buf.len() - keep)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Opens the SSE feed with `ticket` over a raw TCP connection; returns the stream once the
/// `200` header block has arrived, with any body bytes already read.
async fn open_feed(addr: SocketAddr, ticket: &str) -> Result<(TcpStream, Vec<u8>), String> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("SSE connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let req = format!(
        "GET /api/v1/events?ticket={ticket} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    tcp.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("SSE request: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tcp
            .read(&mut chunk)
            .await
            .map_err(|e| format!("SSE response: {e}"))?;
        if n == 0 {
            return Err("SSE response: connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 200") {
                let head = String::from_utf8_lossy(&buf[..end]);
                return Err(format!("SSE response: {head}"));
            }
            return Ok((tcp, buf.split_off(end + 4)));
        }
    }
}

/// Reads the feed until `events` markers were seen (or the stream ends) and returns when each
/// arrived, by event index.
async fn subscriber(mut tcp: TcpStream, mut buf: Vec<u8>, events: usize) -> Vec<Option<Instant>> {
    let mut seen = vec![None; events];
    let mut left = events;
    let mut chunk = vec![0u8; 8192];
    let mut at = Instant::now();
    loop {
        let (found, consumed) = scan_markers(&buf);
        for i in found {
            if let Some(slot @ None) = seen.get_mut(i) {
                *slot = Some(at);
                left -= 1;
            }
        }
        buf.drain(..consumed);
        if left == 0 {
            return seen;
        }
        match tcp.read(&mut chunk).await {
            Ok(n) if n > 0 => {
                at = Instant::now();
                buf.extend_from_slice(&chunk[..n]);
            }
            _ => return seen,
        }
    }
}

/// `dap-bench sse-fanout`: one progress event to many SSE subscribers.
pub async fn sse_fanout(args: &FanoutArgs) -> Result<(), String> {
    let subs = args.subscribers.max(1);
    let events = args.events.max(1);
    need_open_files(subs)?;
    let bin = server_bin(&args.bin_dir)?;
    let dir = temp_dir("fanout")?;
    let seeded = seed(dir.path(), 1).await?;
    let server = ServerProcess::start(&bin, dir.path(), &[]).await?;
    let addr = addr_of(&server.base)?;
    let (mut ws, runner_id) =
        connect_runner(&server, addr, &seeded.credentials[0], "fanout").await?;

    // Every subscriber is a browser with its own ticket (a ticket holds at most 4 streams).
    let mut tasks = Vec::with_capacity(subs);
    for _ in 0..subs {
        let r = server
            .http
            .post(format!("{}/api/v1/sse-tickets", server.base))
            .bearer_auth(&seeded.key)
            .send()
            .await
            .map_err(|e| format!("POST /api/v1/sse-tickets: {e}"))?;
        let v: Value = r
            .json()
            .await
            .map_err(|e| format!("POST /api/v1/sse-tickets: {e}"))?;
        let ticket = v["ticket"].as_str().ok_or("no ticket")?;
        let (tcp, rest) = open_feed(addr, ticket).await?;
        tasks.push(tokio::spawn(subscriber(tcp, rest, events)));
    }
    let open = metric(&server, "dap_sse_subscribers").await?;
    if (open as usize) < subs {
        return Err(format!(
            "the server counts {open} SSE streams, expected {subs}"
        ));
    }

    let r = server
        .http
        .post(format!("{}/api/v1/tasks", server.base))
        .bearer_auth(&seeded.key)
        .json(&json!({ "operation_code": dap_protocol::op::NOOP, "runner_id": runner_id }))
        .send()
        .await
        .map_err(|e| format!("POST /api/v1/tasks: {e}"))?;
    if r.status() != 201 {
        return Err(format!("POST /api/v1/tasks: HTTP {}", r.status()));
    }
    let assignment = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if let Ok(ServerMessage::Assign(a)) = serde_json::from_str(t.as_str()) {
                    break a;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => return Err(format!("no assignment: {other:?}")),
        }
    };
    // Let the `task.assigned` event reach everyone before the timed events start.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let server_cpu0 = cpu_time(server.pid())?;
    let own_cpu0 = cpu_time(std::process::id())?;
    let mut sent = Vec::with_capacity(events);
    let mut next = tokio::time::Instant::now();
    for i in 0..events {
        tokio::time::sleep_until(next).await;
        next += args.interval;
        let p = RunnerMessage::Progress(Progress {
            task_id: assignment.task_id.clone(),
            attempt: assignment.attempt,
            percent: (1 + i * 98 / events) as u8,
            stage: Some("fanout".into()),
            message: Some(format!("fanout-{i}")),
        });
        let text = p.to_json();
        sent.push(Instant::now());
        ws.send(Message::Text(text.into()))
            .await
            .map_err(|e| format!("progress: {e}"))?;
    }

    let mut latencies = Vec::with_capacity(subs * events);
    let mut per_event: Vec<Vec<f64>> = vec![Vec::with_capacity(subs); events];
    let mut missing = 0usize;
    for t in tasks {
        let seen = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .map_err(|_| "subscribers did not receive every event within 30 s".to_owned())?
            .map_err(|e| format!("subscriber: {e}"))?;
        for (i, at) in seen.into_iter().enumerate() {
            match at {
                Some(at) => {
                    let ms = at.duration_since(sent[i]).as_secs_f64() * 1000.0;
                    latencies.push(ms);
                    per_event[i].push(ms);
                }
                None => missing += 1,
            }
        }
    }
    let server_cpu = cpu_time(server.pid())? - server_cpu0;
    let own_cpu = cpu_time(std::process::id())? - own_cpu0;
    let done = noop_completed(assignment.task_id.clone(), assignment.attempt);
    let _ = ws.send(done).await;
    if missing > 0 {
        return Err(format!(
            "{missing} of {} deliveries never arrived",
            subs * events
        ));
    }
    latencies.sort_by(f64::total_cmp);
    if std::env::var_os("DAP_BENCH_VERBOSE").is_some() {
        for (i, mut l) in per_event.into_iter().enumerate() {
            l.sort_by(f64::total_cmp);
            eprintln!(
                "event {i}: first {:.1} p50 {:.1} last {:.1} ms",
                l[0],
                percentile(&l, 0.5),
                l[l.len() - 1]
            );
        }
    }
    println!("sse_fanout_subscribers: {subs} count");
    println!("sse_fanout_events: {events} count");
    println!("sse_fanout_p50: {:.2} ms", percentile(&latencies, 0.5));
    println!("sse_fanout_p99: {:.2} ms", percentile(&latencies, 0.99));
    println!(
        "sse_fanout_max: {:.2} ms",
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "sse_fanout_server_cpu_per_event: {:.2} ms",
        server_cpu.as_secs_f64() * 1000.0 / events as f64
    );
    println!(
        "sse_fanout_client_cpu_per_event: {:.2} ms",
        own_cpu.as_secs_f64() * 1000.0 / events as f64
    );
    drop(server);
    drop(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_across_reads() {
        let a = b"data: {\"id\":7,\"message\":\"fanout-12\",\"x\":1}\n\ndata: {\"message\":\"fan";
        let (found, consumed) = scan_markers(a);
        assert_eq!(found, vec![12]);
        let mut rest = a[consumed..].to_vec();
        rest.extend_from_slice(b"out-3");
        let (found, consumed) = scan_markers(&rest);
        assert!(found.is_empty(), "digits may continue");
        let mut rest = rest[consumed..].to_vec();
        rest.extend_from_slice(b"4\"}\n\n");
        let (found, _) = scan_markers(&rest);
        assert_eq!(found, vec![34]);
        let (found, consumed) = scan_markers(b"keep-alive\n\n");
        assert!(found.is_empty());
        assert!(consumed <= 12);
    }

    #[test]
    fn gauges_and_percentiles() {
        let m = "# HELP dap_runners_connected x\ndap_runners_connected 10000\ndap_runners_connected_x 1\n";
        assert_eq!(gauge(m, "dap_runners_connected"), Some(10000.0));
        assert_eq!(gauge(m, "dap_queue_depth"), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "42 (dap server) S 1 42 42 0 -1 4194560 500 0 0 0 170 30 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_cpu_ticks(stat), Some(200));
        assert!(cpu_time(std::process::id()).is_ok());
    }

    #[test]
    fn open_files_limit_is_read() {
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
