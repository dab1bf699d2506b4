//! Test harness: a real `dap-server` on 127.0.0.1:0 (in-process or as a child process), API
//! keys of each scope, a protocol-level runner that speaks the real WebSocket protocol so
//! tests can hold, progress and finish tasks exactly when they want, and a fresh database per
//! test on either backend ([`TestDb`], [`on_both_backends!`]).
//!
//! PostgreSQL comes from `DAP_TEST_POSTGRES_URL` (scripts/postgres-test.sh starts one); each test
//! creates its own database next to it. Without the variable the PostgreSQL half of a test
//! says it is skipped, or fails when `CI` is set. `DAP_TEST_BACKEND=postgres` runs every
//! in-process server of this binary on PostgreSQL.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use dap_protocol::{
    Assignment, ColumnInfo, Completed, DatasetFormat, DatasetInfo, Hello, Progress, RunnerMessage,
    ServerMessage, PROTOCOL_VERSION,
};
use dap_server::store::{Backend, Scope};
use dap_server::{auth, build_state, serve, AppState, ServeConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "dap-test-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Declares `mod sqlite` and `mod postgres` with one `#[tokio::test]` per named `async fn
/// name(backend: Backend)` of the enclosing module, so every such test runs on both backends.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(dap_server::store::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if $crate::common::postgres_url().is_some() {
                        super::$name(dap_server::store::Backend::Postgres).await
                    }
                }
            )*
        }
    };
}

/// The PostgreSQL server the tests may use. `None` (after printing why) when
/// `DAP_TEST_POSTGRES_URL` is unset; under `CI` that is a failure, not a skip.
pub fn postgres_url() -> Option<String> {
    match std::env::var("DAP_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "DAP_TEST_POSTGRES_URL is not set but CI is: the PostgreSQL tests must run in CI \
                 (scripts/postgres-test.sh run -- cargo test)"
            );
            eprintln!("skipped: DAP_TEST_POSTGRES_URL not set (see scripts/postgres-test.sh)");
            None
        }
    }
}

/// A fresh, empty database for one test. SQLite: a file in `dir`. PostgreSQL: a database
/// `dap_t_<random>` created on the server of `DAP_TEST_POSTGRES_URL` and dropped (with its
/// connections) when this is dropped, unless [`keep`](Self::keep) was called.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    /// (maintenance URL, database name) of a database to drop.
    drop_pg: Option<(String, String)>,
}

impl TestDb {
    /// Panics when PostgreSQL is asked for but not configured (callers check
    /// [`postgres_url`] first to skip).
    pub async fn new(backend: Backend, dir: &std::path::Path) -> Self {
        match backend {
            Backend::Sqlite => Self {
                backend,
                url: format!("sqlite://{}", dir.join("dap.db").display()),
                drop_pg: None,
            },
            Backend::Postgres => {
                use sqlx::ConnectOptions;
                let base = postgres_url().expect("DAP_TEST_POSTGRES_URL");
                let name = format!("dap_t_{:016x}", rand::random::<u64>());
                let opts: sqlx::postgres::PgConnectOptions = base.parse().unwrap();
                let mut admin = opts
                    .connect()
                    .await
                    .expect("connect to DAP_TEST_POSTGRES_URL");
                // An ICU en-US collation where the server has ICU: it sorts "B" after "a",
                // unlike SQLite, so a query whose order depends on the database's locale fails
                // here rather than in a deployment.
                let icu = format!(
                    "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu \
                     ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
                );
                if sqlx::Executor::execute(&mut admin, icu.as_str())
                    .await
                    .is_err()
                {
                    let plain = format!("CREATE DATABASE {name}");
                    sqlx::Executor::execute(&mut admin, plain.as_str())
                        .await
                        .unwrap();
                }
                let url = opts.database(&name).to_url_lossy().to_string();
                Self {
                    backend,
                    url,
                    drop_pg: Some((base, name)),
                }
            }
        }
    }

    /// An existing PostgreSQL database `url` (a restarted server's), dropped with this guard.
    pub fn adopt_postgres(url: String) -> Self {
        let base = postgres_url().expect("DAP_TEST_POSTGRES_URL");
        let path = url.split('?').next().unwrap_or_default();
        let name = path.rsplit('/').next().unwrap_or_default().to_owned();
        Self {
            backend: Backend::Postgres,
            url,
            drop_pg: Some((base, name)),
        }
    }

    /// Keeps the database after this guard is gone (a server restarting on it adopts it).
    pub fn keep(mut self) {
        self.drop_pg = None;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((base, name)) = self.drop_pg.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot block on itself: a thread with its
        // own runtime drops the database (FORCE ends the store's lingering connections).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::ConnectOptions;
                let opts: sqlx::postgres::PgConnectOptions = base.parse().unwrap();
                if let Ok(mut admin) = opts.connect().await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::Executor::execute(&mut admin, sql.as_str()).await;
                }
            });
        })
        .join();
    }
}

/// The backend `TestServer::start*` uses unless told otherwise: `DAP_TEST_BACKEND=postgres`
/// runs the whole suite's in-process servers on PostgreSQL.
pub fn default_backend() -> Backend {
    match std::env::var("DAP_TEST_BACKEND").as_deref() {
        Ok("postgres") => Backend::Postgres,
        _ => Backend::Sqlite,
    }
}

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub state: AppState,
    pub dir: PathBuf,
    pub admin_key: String,
    pub write_key: String,
    pub read_key: String,
    pub http: reqwest::Client,
    pub db: Option<TestDb>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::start_in(temp_dir("srv"), tune).await
    }

    /// A server on a fresh database of `backend`.
    pub async fn start_on(backend: Backend) -> Self {
        let dir = temp_dir("srv");
        let db = TestDb::new(backend, &dir).await;
        Self::start_on_db(dir, db, |_| {}).await
    }

    /// Starts a server on an existing data directory (to restart one); a PostgreSQL database
    /// it used is found again through the `postgres-url` file in `dir`.
    pub async fn start_in(dir: PathBuf, tune: impl FnOnce(&mut ServeConfig)) -> Self {
        let marker = dir.join("postgres-url");
        let db = match std::fs::read_to_string(&marker) {
            Ok(url) => TestDb::adopt_postgres(url),
            Err(_) => TestDb::new(default_backend(), &dir).await,
        };
        Self::start_on_db(dir, db, tune).await
    }

    async fn start_on_db(dir: PathBuf, db: TestDb, tune: impl FnOnce(&mut ServeConfig)) -> Self {
        if db.backend == Backend::Postgres {
            std::fs::write(dir.join("postgres-url"), &db.url).unwrap();
        }
        let mut config = ServeConfig::for_dir(&dir);
        config.database_url = db.url.clone();
        tune(&mut config);
        let state = build_state(&config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let st = state.clone();
        let task = tokio::spawn(async move {
            serve(dap_server::no_delay(listener), st, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let key = |scope| {
            let store = state.store.clone();
            async move {
                auth::api_keys::create_api_key(&store, "test", scope)
                    .await
                    .unwrap()
                    .1
            }
        };
        let admin_key = key(Scope::Admin).await;
        let write_key = key(Scope::Write).await;
        let read_key = key(Scope::Read).await;
        Self {
            addr,
            state,
            dir,
            admin_key,
            write_key,
            read_key,
            http: reqwest::Client::new(),
            db: Some(db),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the server gracefully and keeps its data directory (for a restart).
    pub async fn stop_keep(mut self) -> PathBuf {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.state.store.close().await;
        if let Some(db) = self.db.take() {
            db.keep();
        }
        std::mem::take(&mut self.dir)
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Enrols a runner; returns (runner_id, credential).
    pub async fn enrol(&self, name: &str) -> (String, String) {
        let (st, v) = self
            .post("/api/v1/runners", &self.admin_key, json!({ "name": name }))
            .await;
        assert_eq!(st, 201, "{v}");
        (
            v["runner_id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }

    /// See [`wait_sse_subscribers`].
    pub async fn wait_sse_subscribers(&self, n: usize) {
        wait_sse_subscribers(&self.http, &self.url(""), n).await;
    }

    pub async fn create_task(&self, body: Value) -> (u16, Value) {
        self.post("/api/v1/tasks", &self.write_key, body).await
    }

    pub async fn task(&self, id: &str) -> Value {
        let (st, v) = self
            .get(&format!("/api/v1/tasks/{id}"), &self.read_key)
            .await;
        assert_eq!(st, 200, "{v}");
        v
    }

    /// `GET /api/v1/tasks/{id}/result` with the read key: (status, body).
    pub async fn result(&self, id: &str) -> (u16, Value) {
        self.get(&format!("/api/v1/tasks/{id}/result"), &self.read_key)
            .await
    }

    pub async fn task_total(&self) -> u64 {
        let (st, v) = self.get("/api/v1/tasks?limit=1", &self.read_key).await;
        assert_eq!(st, 200, "{v}");
        v["total"].as_u64().unwrap()
    }

    /// Polls until the task reaches `status` (or panics after `secs`).
    pub async fn wait_status(&self, id: &str, status: &str, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let t = self.task(id).await;
            if t["status"] == status {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} did not reach {status}: {t}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Exchanges a runner credential for a socket JWT.
pub async fn runner_jwt(base: &str, credential: &str) -> Result<String, u16> {
    let r = reqwest::Client::new()
        .post(format!("{base}{}", dap_protocol::TOKEN_PATH))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap();
    if !r.status().is_success() {
        return Err(r.status().as_u16());
    }
    let v: Value = r.json().await.unwrap();
    Ok(v["token"].as_str().unwrap().to_owned())
}

/// Opens the runner socket with `bearer` (or none); `Err(status)` when the upgrade is refused.
pub async fn ws_connect(addr: std::net::SocketAddr, bearer: Option<&str>) -> Result<Ws, u16> {
    let mut req = format!("ws://{addr}{}", dap_protocol::CONNECT_PATH)
        .into_client_request()
        .unwrap();
    if let Some(b) = bearer {
        req.headers_mut()
            .insert("authorization", format!("Bearer {b}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

pub fn dataset(name: &str) -> DatasetInfo {
    DatasetInfo {
        name: name.into(),
        format: DatasetFormat::Csv,
        columns: vec![ColumnInfo {
            name: "x".into(),
            dtype: "i64".into(),
        }],
        row_count: Some(3),
    }
}

/// A runner that speaks the protocol over a real socket, driven step by step by the test.
pub struct ProtoRunner {
    pub ws: Ws,
    pub runner_id: String,
    /// `ack`s heard so far (skipped by [`next`](Self::next)), as (task, attempt).
    pub acks: Vec<(String, u32)>,
    /// Other messages heard while [`wait_ack`](Self::wait_ack) waited (the server may push the
    /// next assignment before the ack of the result that freed its slot); `next` returns
    /// them first.
    heard: std::collections::VecDeque<ServerMessage>,
}

impl ProtoRunner {
    pub async fn connect(
        srv_addr: std::net::SocketAddr,
        credential: &str,
        slots: u32,
        datasets: &[&str],
    ) -> Self {
        Self::connect_with(srv_addr, credential, slots, datasets, vec![]).await
    }

    /// Connects with a greeting that lists tasks still running from an earlier connection.
    pub async fn connect_with(
        srv_addr: std::net::SocketAddr,
        credential: &str,
        slots: u32,
        datasets: &[&str],
        running: Vec<dap_protocol::RunningTask>,
    ) -> Self {
        let base = format!("http://{srv_addr}");
        let jwt = runner_jwt(&base, credential).await.expect("token exchange");
        let mut ws = ws_connect(srv_addr, Some(&jwt)).await.expect("upgrade");
        let hello = RunnerMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            name: "proto-runner".into(),
            version: "test".into(),
            slots,
            operations: dap_protocol::op::ALL.to_vec(),
            datasets: datasets.iter().map(|d| dataset(d)).collect(),
            running,
        });
        ws.send(Message::Text(hello.to_json().into()))
            .await
            .unwrap();
        let runner_id = match next_server_message(&mut ws, 5).await {
            Some(ServerMessage::Welcome { runner_id, .. }) => runner_id,
            other => panic!("expected welcome, got {other:?}"),
        };
        Self {
            ws,
            runner_id,
            acks: Vec::new(),
            heard: Default::default(),
        }
    }

    /// The next message other than an `ack` (acks are recorded in [`acks`](Self::acks)).
    pub async fn next(&mut self, secs: u64) -> Option<ServerMessage> {
        if let Some(m) = self.heard.pop_front() {
            return Some(m);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match next_server_message_within(&mut self.ws, left).await {
                Some(ServerMessage::Ack { task_id, attempt }) => self.acks.push((task_id, attempt)),
                other => return other,
            }
        }
    }

    /// Wait until the server acknowledged `task_id`'s `attempt` (its result is committed).
    pub async fn wait_ack(&mut self, task_id: &str, attempt: u32, secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while !self.acks.iter().any(|(t, a)| t == task_id && *a == attempt) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "no ack for {task_id}/{attempt}; acks: {:?}",
                self.acks
            );
            match next_server_message_within(&mut self.ws, left).await {
                Some(ServerMessage::Ack { task_id, attempt }) => self.acks.push((task_id, attempt)),
                Some(other) => self.heard.push_back(other),
                None => panic!("socket ended while waiting for an ack of {task_id}"),
            }
        }
    }

    pub async fn next_assignment(&mut self, secs: u64) -> Assignment {
        match self.next(secs).await {
            Some(ServerMessage::Assign(a)) => a,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    pub async fn send(&mut self, m: RunnerMessage) {
        self.ws
            .send(Message::Text(m.to_json().into()))
            .await
            .unwrap();
    }

    pub async fn progress(&mut self, a: &Assignment, percent: u8, stage: &str) {
        self.send(RunnerMessage::Progress(Progress {
            task_id: a.task_id.clone(),
            attempt: a.attempt,
            percent,
            stage: Some(stage.into()),
            message: None,
        }))
        .await;
    }

    pub async fn complete(&mut self, a: &Assignment, result: Value) {
        self.send(RunnerMessage::Completed(Completed {
            task_id: a.task_id.clone(),
            attempt: a.attempt,
            result_data: result,
        }))
        .await;
    }
}

/// Next protocol message (skipping pings); `None` on close or after `secs` of silence.
pub async fn next_server_message(ws: &mut Ws, secs: u64) -> Option<ServerMessage> {
    next_server_message_within(ws, Duration::from_secs(secs)).await
}

pub async fn next_server_message_within(ws: &mut Ws, within: Duration) -> Option<ServerMessage> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match m {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(other) => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Reads SSE events from `url` with optional `Last-Event-ID` until `until` says stop.
pub async fn read_sse(
    url: &str,
    bearer: Option<&str>,
    last_event_id: Option<i64>,
    secs: u64,
    mut until: impl FnMut(&[(i64, String, Value)]) -> bool,
) -> Vec<(i64, String, Value)> {
    use eventsource_stream::Eventsource;
    let mut req = reqwest::Client::new().get(url);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "SSE refused");
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = resp.bytes_stream().eventsource();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !until(&out) {
        let ev = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(ev))) => ev,
            other => panic!(
                "SSE ended early ({:?}) after {out:?}",
                other.map(|o| o.map(|r| r.err()))
            ),
        };
        let data: Value = serde_json::from_str(&ev.data).unwrap();
        out.push((ev.id.parse().unwrap(), ev.event, data));
    }
    out
}

/// Waits (up to 10 s) until the server at `base` counts `n` SSE subscribers (its `/metrics`
/// gauge): then a stream opened before is subscribed and sees every event from here on (a
/// fixed pause can be outlasted on a loaded machine).
pub async fn wait_sse_subscribers(http: &reqwest::Client, base: &str, n: usize) {
    let want = format!("dap_sse_subscribers {n}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = http.get(format!("{base}/metrics")).send().await.unwrap();
        if r.text().await.unwrap().lines().any(|l| l == want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {n} SSE subscribers"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
