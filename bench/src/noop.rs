//! The push-loop benchmarks (`dap-bench` without a subcommand): dispatch latency, no-op round
//! trip and durable throughput on loopback.
//!
//! It starts a real `dap-server` in-process (SQLite in a temp dir, WAL, or the database of
//! `--database`/`DAP_BENCH_DATABASE`, e.g. PostgreSQL) and protocol-level
//! runners that speak the real WebSocket protocol and complete the diagnostic no-op
//! (operation 1) as soon as it arrives, so what is measured is the platform (HTTP, auth cache,
//! dispatcher, durable commits, socket push, SSE), not an analysis. It is not a test: it
//! asserts nothing and is not run by `cargo test`.
//!
//! - `dispatch`: POST /tasks sent → the runner has the assignment (sequential, idle runner).
//!   The POST goes through the same lean hyper client as the throughput runs ([`LeanClient`]);
//!   reqwest's own per-request work added ~0.04 ms that is the client's, not the platform's.
//! - `roundtrip`: POST /tasks sent → the `task.completed` SSE event is received (published
//!   only after the result is committed, so the result is readable at that instant).
//! - `throughput`: concurrent clients create no-op tasks for a while; completed tasks per
//!   second, with 1, 4 and 16 runners; then again with `POST /api/v1/tasks/batch` (`--batch`
//!   tasks per request).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dap_protocol::{Hello, RunnerMessage, ServerMessage, PROTOCOL_VERSION};
use dap_server::store::{Scope, TaskFilter, TaskStatus};
use dap_server::{auth, build_state, serve, AppState, ServeConfig};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::NoopArgs;
use dap_bench::scale::{client_ws_config, noop_completed};

struct Bench {
    state: AppState,
    /// The server's own runtime (threads `dap-srv`), so that its CPU can be told apart from
    /// the client's and the runners' (this process's main runtime).
    _server_rt: ServerRuntime,
    base: String,
    key: String,
    http: reqwest::Client,
    /// Results the server acknowledged to the bench runners (an `ack` is sent only after the
    /// result is committed): the durable completions, counted without querying the store.
    acked: Arc<AtomicU64>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        // DAP_BENCH_KEEP=1 keeps the database for inspection.
        if std::env::var_os("DAP_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("kept {}", self.0.display());
        }
    }
}

/// A runtime shut down in the background when dropped (dropping it inside the main runtime
/// would panic).
struct ServerRuntime(Option<tokio::runtime::Runtime>);
impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

async fn start_server(database: Option<&str>) -> Bench {
    let dir = std::env::temp_dir().join(format!("dap-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut config = ServeConfig::for_dir(&dir);
    if let Some(url) = database {
        config.database_url = url.to_owned();
    }
    // Each bench runner completes thousands of no-ops a second: no per-connection rate limit.
    config.limits.runner_rate_per_s = 0;
    // Two worker threads, as the server would have on this 2-core machine.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dap-srv")
        .enable_all()
        .build()
        .expect("server runtime");
    let (state, addr) = rt
        .spawn(async move {
            let state = build_state(&config).await.expect("server state");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let st = state.clone();
            tokio::spawn(async move {
                serve(dap_server::no_delay(listener), st, std::future::pending()).await
            });
            (state, addr)
        })
        .await
        .expect("server start");
    let (_, key) = auth::api_keys::create_api_key(&state.store, "bench", Scope::Admin)
        .await
        .expect("key");
    Bench {
        state,
        _server_rt: ServerRuntime(Some(rt)),
        base: format!("http://{addr}"),
        key,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()
            .expect("client"),
        acked: Arc::new(AtomicU64::new(0)),
        _dir: TempDir(dir),
    }
}

impl Bench {
    async fn enrol(&self, name: &str) -> String {
        let v: Value = self
            .http
            .post(format!("{}/api/v1/runners", self.base))
            .bearer_auth(&self.key)
            .json(&json!({ "name": name }))
            .send()
            .await
            .expect("enrol")
            .json()
            .await
            .expect("enrol json");
        v["token"].as_str().expect("token").to_owned()
    }

    async fn completed(&self) -> u64 {
        let f = TaskFilter {
            status: Some(TaskStatus::Completed),
            limit: 1,
            ..Default::default()
        };
        self.state.store.list_tasks(&f).await.expect("count").1
    }
}

/// A runner that completes every no-op at once, reports when each assignment arrived and
/// counts the acknowledged results in `b.acked`.
async fn spawn_runner(
    b: &Bench,
    slots: u32,
    arrivals: Option<mpsc::UnboundedSender<(String, Instant)>>,
) -> String {
    let credential = b.enrol("bench-runner").await;
    let tok: Value = b
        .http
        .post(format!("{}{}", b.base, dap_protocol::TOKEN_PATH))
        .bearer_auth(&credential)
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");
    let jwt = tok["token"].as_str().expect("jwt").to_owned();
    let mut req = format!(
        "{}{}",
        b.base.replacen("http", "ws", 1),
        dap_protocol::CONNECT_PATH
    )
    .into_client_request()
    .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {jwt}").parse().expect("header"),
    );
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(client_ws_config()), true)
        .await
        .expect("ws");
    let (mut tx, mut rx) = ws.split();
    let hello = RunnerMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        name: "bench".into(),
        version: "bench".into(),
        slots,
        operations: vec![dap_protocol::op::NOOP],
        datasets: vec![],
        running: vec![],
    });
    tx.send(Message::Text(hello.to_json().into()))
        .await
        .expect("hello");
    let runner_id = match rx.next().await {
        Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()) {
            Ok(ServerMessage::Welcome { runner_id, .. }) => runner_id,
            other => panic!("expected welcome: {other:?}"),
        },
        other => panic!("expected welcome: {other:?}"),
    };
    let acked = b.acked.clone();
    tokio::spawn(async move {
        // Completes every assignment it has read, then writes the results in one flush (as
        // the server writes what it has queued): one write per burst, not per task.
        while let Some(Ok(mut m)) = rx.next().await {
            loop {
                let Message::Text(t) = m else { break };
                let msg = serde_json::from_str(t.as_str());
                if let Ok(ServerMessage::Ack { .. }) = msg {
                    acked.fetch_add(1, Ordering::Relaxed);
                } else if let Ok(ServerMessage::Assign(a)) = msg {
                    if let Some(ch) = &arrivals {
                        let _ = ch.send((a.task_id.clone(), Instant::now()));
                    }
                    if tx.feed(noop_completed(a.task_id, a.attempt)).await.is_err() {
                        return;
                    }
                }
                match rx.next().now_or_never() {
                    Some(Some(Ok(next))) => m = next,
                    _ => break,
                }
            }
            if tx.flush().await.is_err() {
                return;
            }
        }
    });
    runner_id
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

async fn latency(b: &Bench, iterations: usize) -> Figures {
    let (arr_tx, mut arr_rx) = mpsc::unbounded_channel();
    let runner_id = spawn_runner(b, 1, Some(arr_tx)).await;
    // One SSE stream reports completions.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let resp = b
        .http
        .get(format!("{}/api/v1/events", b.base))
        .bearer_auth(&b.key)
        .send()
        .await
        .expect("sse");
    let sse = tokio::spawn(async move {
        use eventsource_stream::Eventsource;
        let mut s = resp.bytes_stream().eventsource();
        while let Some(Ok(ev)) = s.next().await {
            if ev.event == "task.completed" {
                let at = Instant::now();
                if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
                    let id = v["task_id"].as_str().unwrap_or_default().to_owned();
                    let _ = done_tx.send((id, at));
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let body = json!({ "operation_code": dap_protocol::op::NOOP, "runner_id": runner_id });
    let body = bytes::Bytes::from(body.to_string());
    let mut client = LeanClient::connect(b, "/api/v1/tasks").await;
    let warmup = iterations / 10;
    let mut dispatch = Vec::with_capacity(iterations);
    let mut round = Vec::with_capacity(iterations);
    for i in 0..iterations + warmup {
        let t0 = Instant::now();
        let v: Value = serde_json::from_slice(&client.post(body.clone()).await).expect("answer");
        let id = v["task_id"].as_str().expect("task id").to_owned();
        let (got, at) = arr_rx.recv().await.expect("arrival");
        assert_eq!(got, id);
        let (done, done_at) = done_rx.recv().await.expect("completion");
        assert_eq!(done, id);
        // The slot is freed right after the commit; wait for it so the next create is not 409.
        while b
            .state
            .dispatcher
            .live(&runner_id)
            .is_some_and(|l| !l.running.is_empty())
        {
            tokio::task::yield_now().await;
        }
        if i >= warmup {
            dispatch.push(at - t0);
            round.push(done_at - t0);
        }
    }
    dispatch.sort();
    round.sort();
    // SQLite's figures keep their plain names (the headline ones); PostgreSQL's are prefixed.
    let p = match b.state.store.backend() {
        dap_server::store::Backend::Sqlite => "",
        dap_server::store::Backend::Postgres => "postgres_",
    };
    let mut f = Figures::default();
    f.add(
        format!("{p}dispatch_latency_p50"),
        pct(&dispatch, 0.50),
        "ms",
    );
    f.add(
        format!("{p}dispatch_latency_p99"),
        pct(&dispatch, 0.99),
        "ms",
    );
    f.add(format!("{p}noop_round_trip_p50"), pct(&round, 0.50), "ms");
    f.add(format!("{p}noop_round_trip_p99"), pct(&round, 0.99), "ms");
    f.add(
        format!("{p}latency_iterations"),
        dispatch.len() as f64,
        "count",
    );
    // The throughput runs measure the platform, not this client's SSE parsing.
    sse.abort();
    b.state
        .dispatcher
        .close_runner(&runner_id, 1000, "latency run over");
    f
}

/// `batch` 0: each client POSTs one task at a time; otherwise `batch` tasks per
/// `POST /api/v1/tasks/batch`.
async fn throughput(
    b: &Arc<Bench>,
    runners: usize,
    slots: u32,
    clients: usize,
    secs: u64,
    batch: usize,
) -> Figures {
    let mut ids = Vec::new();
    for _ in 0..runners {
        ids.push(spawn_runner(b, slots, None).await);
    }
    let before = b.acked.load(Ordering::Relaxed);
    let stored_before = b.completed().await;
    let cpu_before = thread_cpu();
    let created = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut handles = Vec::new();
    let one = json!({ "operation_code": dap_protocol::op::NOOP });
    let (path, body, per_request) = match batch {
        0 => ("/api/v1/tasks", one, 1),
        n => (
            "/api/v1/tasks/batch",
            json!({ "tasks": vec![one; n] }),
            n as u64,
        ),
    };
    let body = bytes::Bytes::from(body.to_string());
    for _ in 0..clients {
        let mut client = LeanClient::connect(b, path).await;
        let created = created.clone();
        let body = body.clone();
        handles.push(tokio::spawn(async move {
            while Instant::now() < end {
                client.post(body.clone()).await;
                created.fetch_add(per_request, Ordering::Relaxed);
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let target = before + created.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(120);
    while b.acked.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = thread_cpu();
    let done = b.acked.load(Ordering::Relaxed) - before;
    // Outside the measured span: the store agrees (an ack is only sent after the commit).
    let stored = b.completed().await - stored_before;
    assert!(
        stored >= done,
        "{done} results acknowledged but {stored} stored completed"
    );
    let db = match b.state.store.backend() {
        dap_server::store::Backend::Sqlite => "sqlite",
        dap_server::store::Backend::Postgres => "postgres",
    };
    let backend = match batch {
        0 => db.to_owned(),
        n => format!("{db}_batch{n}"),
    };
    let mut f = Figures::default();
    f.add(
        format!("durable_throughput_{backend}_{runners}_runners"),
        done as f64 / elapsed,
        "tasks/s",
    );
    // CPU per task, from the kernel's per-thread accounting: less sensitive than tasks/s to
    // what else the machine runs. `cpu` is everything in this process (client, server,
    // runners); `server_cpu` the server's threads alone (what one DAP server costs per task,
    // without this load generator); `writer` the store's writer thread (the serial part).
    if let (Some(a), Some(z)) = (cpu_before, cpu_after) {
        let per = |x: f64| x * 1e6 / done.max(1) as f64;
        let name = |what: &str| format!("{what}_per_task_{backend}_{runners}_runners");
        f.add(name("cpu"), per(z.total - a.total), "us");
        f.add(name("server_cpu"), per(z.server - a.server), "us");
        if z.writer > 0.0 {
            f.add(name("writer_cpu"), per(z.writer - a.writer), "us");
        }
    }
    // Disconnect these runners so the next run starts clean.
    for id in ids {
        b.state.dispatcher.close_runner(&id, 1000, "bench run over");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    f
}

/// A throughput client: POSTs one prepared body to one path on its own HTTP/1.1 keep-alive
/// connection, through hyper's client connection directly. Not reqwest: its URL parsing,
/// pool and redirect layers cost the load generator CPU on the same two cores the server
/// runs on, and this measures the server.
struct LeanClient {
    send: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    uri: hyper::Uri,
    host: hyper::header::HeaderValue,
    auth: hyper::header::HeaderValue,
}

impl LeanClient {
    async fn connect(b: &Bench, path: &str) -> LeanClient {
        let authority = b.base.trim_start_matches("http://").to_owned();
        let tcp = tokio::net::TcpStream::connect(&authority)
            .await
            .expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        LeanClient {
            send,
            uri: path.parse().expect("path"),
            host: authority.parse().expect("host"),
            auth: format!("Bearer {}", b.key).parse().expect("auth"),
        }
    }

    /// POSTs `body`, expecting 201, and returns the answer.
    async fn post(&mut self, body: bytes::Bytes) -> bytes::Bytes {
        use http_body_util::BodyExt;
        let mut req = hyper::Request::new(http_body_util::Full::new(body));
        *req.method_mut() = hyper::Method::POST;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        h.insert(hyper::header::HOST, self.host.clone());
        h.insert(hyper::header::AUTHORIZATION, self.auth.clone());
        h.insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        self.send.ready().await.expect("connection");
        let resp = self.send.send_request(req).await.expect("create");
        assert_eq!(resp.status(), 201, "create refused ({})", self.uri);
        resp.into_body()
            .collect()
            .await
            .expect("create answer")
            .to_bytes()
    }
}

/// Figures of one run, in the order they were measured: name, value, unit.
#[derive(Default)]
struct Figures(Vec<(String, f64, &'static str)>);

impl Figures {
    fn add(&mut self, name: String, value: f64, unit: &'static str) {
        self.0.push((name, value, unit));
    }

    /// Prints `name: value unit` for each figure of the first run, the median over the `runs`
    /// that have it, with the spread as a comment line when there was more than one.
    fn print_medians(runs: &[Figures]) {
        let Some(first) = runs.first() else { return };
        for (name, _, unit) in &first.0 {
            let mut v: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.0.iter().find(|f| f.0 == *name).map(|f| f.1))
                .collect();
            v.sort_by(f64::total_cmp);
            let decimals = if *unit == "ms" { 3 } else { 0 };
            if v.len() > 1 {
                println!(
                    "# {name}: {:.*} to {:.*} {unit} over {} runs",
                    decimals,
                    v[0],
                    decimals,
                    v[v.len() - 1],
                    v.len()
                );
            }
            println!("{name}: {:.*} {unit}", decimals, v[v.len() / 2]);
        }
    }
}

/// The latency figures, then one throughput run per runner count (and per runner count with
/// batch creates), `--repeat` times, each time on a fresh server; prints each figure's median.
pub async fn run(args: &NoopArgs) {
    let mut runs = Vec::new();
    for _ in 0..args.repeat.max(1) {
        runs.push(run_once(args).await);
    }
    Figures::print_medians(&runs);
}

async fn run_once(args: &NoopArgs) -> Figures {
    let b = Arc::new(start_server(args.database.as_deref()).await);
    let mut all = latency(&b, args.iterations).await;
    for &n in &args.runners {
        let f = throughput(&b, n, args.slots, args.clients, args.seconds, 0).await;
        all.0.extend(f.0);
    }
    if args.batch > 0 {
        // Fewer clients: each request carries `batch` tasks.
        let clients = (args.clients / 8).max(1);
        for &n in &args.runners {
            let f = throughput(&b, n, args.slots, clients, args.seconds, args.batch).await;
            all.0.extend(f.0);
        }
    }
    all
}

/// CPU seconds this process has used: in all, on the server's threads (its runtime, the
/// store's writer, checkpointer and sqlx threads), and on the store's writer thread.
#[derive(Clone, Copy)]
struct Cpu {
    total: f64,
    server: f64,
    writer: f64,
}

/// Reads `/proc/self/task/*/stat` (Linux only; `None` elsewhere). Threads that ended since the
/// last reading are missed, so this is meant for spans in which the runtime's threads live.
fn thread_cpu() -> Option<Cpu> {
    // utime and stime are fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
    const TICK: f64 = 0.01;
    let mut cpu = Cpu {
        total: 0.0,
        server: 0.0,
        writer: 0.0,
    };
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(stat) = std::fs::read_to_string(entry.ok()?.path().join("stat")) else {
            continue;
        };
        // The name is in parentheses and may hold spaces: split after its closing one.
        let (head, rest) = stat.rsplit_once(')')?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        cpu.total += ticks * TICK;
        let name = head.rsplit_once('(').map_or("", |(_, n)| n);
        if ["dap-srv", "dap-store-", "sqlx-sqlite-"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            cpu.server += ticks * TICK;
        }
        if name.starts_with("dap-store-write") {
            cpu.writer += ticks * TICK;
        }
    }
    Some(cpu)
}
