//! Multi-node operation (`--cluster`): two or three real `dap-server` processes on one fresh
//! PostgreSQL database, runners on different nodes. Needs `DAP_TEST_POSTGRES_URL` (prints
//! "skipped" without it, fails when `CI` is set).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dap_protocol::{RunningTask, ServerMessage};
use dap_server::store::Backend;
use serde_json::{json, Value};

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_dap-server");

/// One `dap-server --cluster` child process, SIGKILLed when dropped. Its log goes to
/// `<dir>/node-<n>.log`.
struct Node {
    child: Child,
    addr: std::net::SocketAddr,
    log: PathBuf,
}

impl Node {
    fn start(n: usize, dir: &Path, db: &str, env: &[(&str, &str)]) -> Self {
        Self::start_as(n, dir, db, env, true)
    }

    /// A node with or without `--cluster` (a single server, for comparison).
    fn start_as(n: usize, dir: &Path, db: &str, env: &[(&str, &str)], cluster: bool) -> Self {
        let log = dir.join(format!("node-{n}.log"));
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--database", db])
            .args(cluster.then_some("--cluster"))
            .arg("--data-dir")
            .arg(dir)
            .envs(env.iter().copied())
            .env("DAP_LOG", "info,sqlx::postgres::notice=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut file = std::fs::File::create(&log).unwrap();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if !sent {
                    if let Some(addr) = line.split("addr=").nth(1) {
                        let addr = addr.split_whitespace().next().unwrap().to_owned();
                        let _ = tx.send(addr);
                        sent = true;
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "node {n} printed no address: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Self {
            child,
            addr: addr.parse().unwrap(),
            log,
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `kill -9` and reap.
    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- {} ----\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A fresh database, a shared data directory (signing key) and an admin key.
struct Cluster {
    dir: PathBuf,
    db: TestDb,
    key: String,
    http: reqwest::Client,
}

impl Cluster {
    /// `None` (skipped) without `DAP_TEST_POSTGRES_URL`.
    async fn new(tag: &str) -> Option<Self> {
        postgres_url()?;
        let dir = temp_dir(tag);
        let db = TestDb::new(Backend::Postgres, &dir).await;
        let out = Command::new(BIN)
            .args(["apikey", "create", "--name", "ci", "--scope", "admin"])
            .args(["--database", &db.url])
            .arg("--data-dir")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Some(Self {
            dir,
            db,
            key,
            http: reqwest::Client::new(),
        })
    }

    fn node(&self, n: usize, env: &[(&str, &str)]) -> Node {
        Node::start(n, &self.dir, &self.db.url, env)
    }

    async fn call(
        &self,
        node: &Node,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", node.base());
        let mut req = match method {
            "POST" => self.http.post(url),
            _ => self.http.get(url),
        }
        .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn enrol(&self, node: &Node, name: &str) -> String {
        let (st, v) = self
            .call(
                node,
                "POST",
                "/api/v1/runners",
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    async fn create(&self, node: &Node, body: Value) -> Value {
        let (st, v) = self.call(node, "POST", "/api/v1/tasks", Some(body)).await;
        assert_eq!(st, 201, "{v}");
        v
    }

    /// Creates a task through `node`; its id.
    async fn create_id(&self, node: &Node, body: Value) -> String {
        let v = self.create(node, body).await;
        v["task_id"].as_str().unwrap().to_owned()
    }

    async fn task(&self, node: &Node, id: &str) -> Value {
        let (st, v) = self
            .call(node, "GET", &format!("/api/v1/tasks/{id}"), None)
            .await;
        assert_eq!(st, 200, "{v}");
        v
    }

    /// Polls `node` until every task in `ids` is completed; panics after `secs`.
    async fn wait_completed(&self, node: &Node, ids: &[String], secs: u64) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut done = Vec::new();
        for id in ids {
            loop {
                let t = self.task(node, id).await;
                if t["status"] == "completed" {
                    done.push(t);
                    break;
                }
                if Instant::now() >= deadline {
                    let (_, events) = self
                        .call(node, "GET", &format!("/api/v1/tasks/{id}/events"), None)
                        .await;
                    panic!("task {id} not completed in {secs} s: {t}\nevents: {events:#}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        done
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Counts of what a [`work`] loop did.
#[derive(Debug, Default)]
struct Worked {
    /// (task, attempt) of every assignment received.
    assigned: Vec<(String, u32)>,
    /// Most assignments held at once.
    max_held: usize,
}

/// Runs `runner`: holds each assignment for `hold`, then completes it, until `done` reaches
/// `until` and it holds nothing; never holds more than `slots` (asserted). Gives the runner
/// back (open) so that its last results are not lost to a reset.
async fn work(
    mut runner: ProtoRunner,
    slots: usize,
    hold: Duration,
    done: Arc<AtomicUsize>,
    until: usize,
) -> (Worked, ProtoRunner) {
    let mut held: Vec<(Instant, dap_protocol::Assignment)> = Vec::new();
    let mut w = Worked::default();
    while done.load(Ordering::SeqCst) < until || !held.is_empty() {
        let wait = held
            .iter()
            .map(|(due, _)| due.saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(Duration::from_millis(50));
        match next_server_message_within(&mut runner.ws, wait).await {
            Some(ServerMessage::Assign(a)) => {
                w.assigned.push((a.task_id.clone(), a.attempt));
                held.push((Instant::now() + hold, a));
                w.max_held = w.max_held.max(held.len());
                assert!(
                    held.len() <= slots,
                    "runner holds {} tasks with {slots} slots",
                    held.len()
                );
            }
            Some(_) => {}
            None => {}
        }
        let now = Instant::now();
        let (due, rest): (Vec<_>, Vec<_>) = held.into_iter().partition(|(at, _)| *at <= now);
        held = rest;
        for (_, a) in due {
            runner.complete(&a, json!({ "ok": true })).await;
            done.fetch_add(1, Ordering::SeqCst);
        }
    }
    (w, runner)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test]
async fn cluster_mode_is_refused_on_sqlite() {
    let dir = temp_dir("cluster-sqlite");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--cluster",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster mode needs a PostgreSQL database"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tasks handled on node B (its runner) appear on node A's SSE feed, and both feeds carry the
/// same events: every event of the log, ids increasing, none twice.
#[tokio::test]
async fn every_nodes_events_reach_every_nodes_feed_in_log_order() {
    let Some(c) = Cluster::new("cluster-sse").await else {
        return;
    };
    let a = c.node(1, &[]);
    let b = c.node(2, &[]);
    let cred = c.enrol(&a, "on-b").await;
    let mut runner = ProtoRunner::connect(b.addr, &cred, 1, &[]).await;

    const TASKS: usize = 20;
    let feeds: Vec<_> = [&a, &b]
        .iter()
        .map(|n| {
            let url = format!("{}/api/v1/events", n.base());
            let key = c.key.clone();
            tokio::spawn(async move {
                read_sse(&url, Some(&key), Some(0), 30, |evs| {
                    evs.iter().filter(|e| e.1 == "task.completed").count() == TASKS
                })
                .await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for i in 0..TASKS {
        // Alternate the node the task is created on; the runner is on B either way.
        let node = if i % 2 == 0 { &b } else { &a };
        let t = c.create(node, json!({ "operation_code": 1 })).await;
        let got = runner.next_assignment(10).await;
        assert_eq!(got.task_id, t["task_id"].as_str().unwrap());
        runner.progress(&got, 50, "half").await;
        runner.complete(&got, json!({ "i": i })).await;
        runner.wait_ack(&got.task_id, 1, 10).await;
        ids.push(got.task_id);
    }
    let mut streams = Vec::new();
    for f in feeds {
        streams.push(f.await.unwrap());
    }
    let (on_a, on_b) = (&streams[0], &streams[1]);
    for s in [on_a, on_b] {
        assert!(
            s.windows(2).all(|w| w[0].0 < w[1].0),
            "ids increase, no duplicates"
        );
        for id in &ids {
            let kinds: Vec<&str> = s
                .iter()
                .filter(|e| e.2["task_id"] == id.as_str())
                .map(|e| e.1.as_str())
                .collect();
            assert_eq!(
                kinds,
                [
                    "task.created",
                    "task.assigned",
                    "task.progress",
                    "task.completed"
                ],
                "task {id}"
            );
        }
    }
    let a_ids: Vec<i64> = on_a.iter().map(|e| e.0).collect();
    let b_ids: Vec<i64> = on_b.iter().map(|e| e.0).collect();
    assert_eq!(a_ids, b_ids, "both nodes' feeds carry the same events");

    // Live, not only replayed: a feed opened now on A sees B's next event.
    let url = format!("{}/api/v1/events", a.base());
    let key = c.key.clone();
    let live = tokio::spawn(async move {
        read_sse(&url, Some(&key), None, 10, |evs| {
            evs.iter().any(|e| e.1 == "task.completed")
        })
        .await
    });
    // Create only once A counts the subscriber.
    wait_sse_subscribers(&c.http, &a.base(), 1).await;
    c.create(&b, json!({ "operation_code": 1 })).await;
    let got = runner.next_assignment(10).await;
    let t0 = Instant::now();
    runner.complete(&got, json!({})).await;
    let live = live.await.unwrap();
    eprintln!(
        "cluster: B's task.completed reached A's live feed {:?} after the runner sent it",
        t0.elapsed()
    );
    assert!(live.iter().any(|e| e.2["task_id"] == got.task_id.as_str()));
}

/// A task created on node A while the only runner is on node B is pushed to it by B within a
/// few milliseconds (measured over 200 tasks, next to the same-node push for comparison).
#[tokio::test]
async fn a_task_created_on_one_node_is_pushed_to_a_runner_on_another() {
    let Some(c) = Cluster::new("cluster-push").await else {
        return;
    };
    let a = c.node(1, &[]);
    let b = c.node(2, &[]);
    let cred = c.enrol(&a, "on-b").await;
    let mut runner = ProtoRunner::connect(b.addr, &cred, 1, &[]).await;
    const N: usize = 200;
    let measure = |label: &'static str, on: &'static str| (label, on, Vec::with_capacity(N));
    let mut runs = [
        measure("cross-node (create on A, runner on B)", "a"),
        measure("same node (create on B, runner on B)", "b"),
    ];
    for (_, on, lat) in runs.iter_mut() {
        let node = if *on == "a" { &a } else { &b };
        for _ in 0..N {
            let t0 = Instant::now();
            let t = c.create(node, json!({ "operation_code": 1 })).await;
            let got = runner.next_assignment(10).await;
            lat.push(t0.elapsed());
            assert_eq!(got.task_id, t["task_id"].as_str().unwrap());
            runner.complete(&got, json!({})).await;
            runner.wait_ack(&got.task_id, 1, 10).await;
        }
        lat.sort();
    }
    for (label, _, lat) in &runs {
        eprintln!(
            "cluster push latency, {label}: p50 {:?}, p99 {:?}, max {:?} over {N} tasks",
            percentile(lat, 0.5),
            percentile(lat, 0.99),
            lat[N - 1]
        );
    }
    // "A few milliseconds" on an idle machine; generous for a loaded CI runner.
    assert!(
        percentile(&runs[0].2, 0.5) < Duration::from_millis(100),
        "cross-node p50 {:?}",
        percentile(&runs[0].2, 0.5)
    );
}

/// Runners on both nodes, creates spread over both: no runner ever holds more than its slots,
/// every task runs exactly once (attempt 1, one runner).
#[tokio::test]
async fn slot_limits_hold_with_creates_spread_over_both_nodes() {
    let Some(c) = Cluster::new("cluster-slots").await else {
        return;
    };
    let a = c.node(1, &[]);
    let b = c.node(2, &[]);
    let on_a = ProtoRunner::connect(a.addr, &c.enrol(&a, "on-a").await, 2, &[]).await;
    let on_b = ProtoRunner::connect(b.addr, &c.enrol(&b, "on-b").await, 3, &[]).await;
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 50;
    const TOTAL: usize = CLIENTS * PER_CLIENT;
    let done = Arc::new(AtomicUsize::new(0));
    let hold = Duration::from_millis(5);
    let wa = tokio::spawn(work(on_a, 2, hold, done.clone(), TOTAL));
    let wb = tokio::spawn(work(on_b, 3, hold, done.clone(), TOTAL));
    let c = Arc::new(c);
    let bases = [a.base(), b.base()];
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let c = c.clone();
        let bases = bases.clone();
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..PER_CLIENT {
                let url = format!("{}/api/v1/tasks", bases[(k + i) % 2]);
                let r = c
                    .http
                    .post(url)
                    .bearer_auth(&c.key)
                    .json(&json!({ "operation_code": 1 }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                let v: Value = r.json().await.unwrap();
                ids.push(v["task_id"].as_str().unwrap().to_owned());
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for cl in clients {
        ids.extend(cl.await.unwrap());
    }
    let ((wa, _ra), (wb, _rb)) = tokio::time::timeout(Duration::from_secs(45), async {
        (wa.await.unwrap(), wb.await.unwrap())
    })
    .await
    .expect("every task ran within 45 s");
    eprintln!(
        "cluster slots: runner on A ran {} (at most {} at once, 2 slots), runner on B ran {} (at most {} at once, 3 slots)",
        wa.assigned.len(),
        wa.max_held,
        wb.assigned.len(),
        wb.max_held
    );
    let mut all: Vec<(String, u32)> = wa.assigned.into_iter().chain(wb.assigned).collect();
    all.sort();
    let distinct: HashSet<&String> = all.iter().map(|(t, _)| t).collect();
    assert_eq!(distinct.len(), all.len(), "no task was assigned twice");
    assert!(all.iter().all(|(_, att)| *att == 1));
    let mut want = ids.clone();
    want.sort();
    let got: Vec<String> = all.into_iter().map(|(t, _)| t).collect();
    assert_eq!(got, want, "every created task ran");
    c.wait_completed(&a, &ids, 15).await;
}

/// A task targeted at a runner connected to another node: pushed there through that node;
/// refused with 409 `runner_busy` (from presence, best-effort) while it is busy, unless queued.
#[tokio::test]
async fn a_task_for_a_runner_on_another_node_is_pushed_there_or_refused_when_busy() {
    let Some(c) = Cluster::new("cluster-target").await else {
        return;
    };
    // Presence is refreshed every grace / 4: 500 ms here.
    let env = [("DAP_RUNNER_GRACE_MS", "2000")];
    let a = c.node(1, &env);
    let b = c.node(2, &env);
    let mut runner = ProtoRunner::connect(b.addr, &c.enrol(&a, "on-b").await, 1, &["sales"]).await;
    let rid = runner.runner_id.clone();
    // Presence is written when the runner registers on B.
    let first = c
        .create(&a, json!({ "operation_code": 1, "runner_id": rid }))
        .await;
    assert_eq!(first["status"], "queued", "{first}");
    let got = runner.next_assignment(10).await;
    assert_eq!(got.task_id, first["task_id"].as_str().unwrap());
    // What the runner cannot run is refused on A from its stored greeting.
    let (st, v) = c
        .call(
            &a,
            "POST",
            "/api/v1/tasks",
            Some(json!({ "operation_code": 100, "runner_id": rid, "params": { "dataset": "other" } })),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (422, Some("unknown_dataset")),
        "{v}"
    );
    // Busy once B has reported it: presence is refreshed every 500 ms here (best-effort: a
    // create in between is accepted and waits for the slot like a queued task). Wait for that
    // report in the table rather than for a fixed time, which a loaded machine can outlast.
    let pool = sqlx::PgPool::connect(&c.db.url).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let running: Option<i64> = sqlx::query_scalar(
            "SELECT running FROM runner_presence WHERE runner_id = $1 AND connected",
        )
        .bind(&rid)
        .fetch_optional(&pool)
        .await
        .unwrap();
        if running == Some(1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B never reported the runner busy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool.close().await;
    let (st, v) = c
        .call(
            &a,
            "POST",
            "/api/v1/tasks",
            Some(json!({ "operation_code": 1, "runner_id": rid })),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("runner_busy")),
        "{v}"
    );
    let queued = c
        .create(
            &a,
            json!({ "operation_code": 1, "runner_id": rid, "queue": true }),
        )
        .await;
    assert!(
        runner.next(1).await.is_none(),
        "nothing pushed while the slot is taken"
    );
    runner.complete(&got, json!({})).await;
    let next = runner.next_assignment(10).await;
    assert_eq!(next.task_id, queued["task_id"].as_str().unwrap());
}

/// kill -9 of the node two runners are connected to: the runner that reconnects to the other
/// node resumes the task it lists (same attempt) and has the one it lost requeued; the tasks of
/// the runner that never comes back are requeued by the sweeper after the grace period; every
/// 201-acknowledged task completes.
#[tokio::test]
async fn killing_a_node_loses_no_acknowledged_task() {
    let Some(c) = Cluster::new("cluster-death").await else {
        return;
    };
    let env = [("DAP_RUNNER_GRACE_MS", "2000")];
    let mut a = c.node(1, &env);
    let b = c.node(2, &env);
    let cred1 = c.enrol(&a, "comes-back").await;
    let cred2 = c.enrol(&a, "never-back").await;
    let cred3 = c.enrol(&a, "on-b").await;
    let mut r1 = ProtoRunner::connect(a.addr, &cred1, 2, &[]).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(c.create_id(&a, json!({ "operation_code": 1 })).await);
    }
    let x1 = r1.next_assignment(10).await;
    let x2 = r1.next_assignment(10).await;
    r1.progress(&x1, 40, "working").await;
    let mut r2 = ProtoRunner::connect(a.addr, &cred2, 1, &[]).await;
    ids.push(c.create_id(&a, json!({ "operation_code": 1 })).await);
    let y = r2.next_assignment(10).await;
    // More than A's runners can take: queued when A dies.
    for i in 0..6 {
        let node = if i % 2 == 0 { &a } else { &b };
        ids.push(c.create_id(node, json!({ "operation_code": 1 })).await);
    }
    // Let the progress commit before the kill.
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.task(&b, &x1.task_id).await["progress"] != 40 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    a.kill_9();
    let killed = Instant::now();
    drop(r1);
    drop(r2);

    // r1 reconnects to B still running x1 (it lost x2); r3 joins B with free slots.
    let mut r1 = ProtoRunner::connect_with(
        b.addr,
        &cred1,
        2,
        &[],
        vec![RunningTask {
            task_id: x1.task_id.clone(),
            attempt: x1.attempt,
        }],
    )
    .await;
    let r3 = ProtoRunner::connect(b.addr, &cred3, 4, &[]).await;
    // Everything but x1 runs on r3 (r1 keeps a slot for x1 and may take others too).
    let done = Arc::new(AtomicUsize::new(0));
    let w3 = tokio::spawn(work(
        r3,
        4,
        Duration::from_millis(5),
        done.clone(),
        ids.len() - 1,
    ));
    let mut r1_got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while done.load(Ordering::SeqCst) < ids.len() - 1 {
        assert!(
            Instant::now() < deadline,
            "tasks not all run after the kill"
        );
        match r1.next(0).await {
            Some(ServerMessage::Assign(t)) => {
                r1_got.push((t.task_id.clone(), t.attempt));
                r1.complete(&t, json!({})).await;
                done.fetch_add(1, Ordering::SeqCst);
            }
            Some(ServerMessage::Cancel { task_id, .. }) => {
                panic!("x1 was resumed, not cancelled ({task_id})")
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let (w3, _r3) = w3.await.unwrap();
    r1.complete(&x1, json!({ "resumed": true })).await;
    r1.wait_ack(&x1.task_id, x1.attempt, 10).await;

    let tasks = c.wait_completed(&b, &ids, 20).await;
    eprintln!(
        "cluster node death: all {} acknowledged tasks completed {:?} after the kill",
        ids.len(),
        killed.elapsed()
    );
    let by_id: HashMap<&str, &Value> = tasks
        .iter()
        .map(|t| (t["task_id"].as_str().unwrap(), t))
        .collect();
    assert_eq!(
        by_id[x1.task_id.as_str()]["attempt"],
        1,
        "x1 resumed, same attempt"
    );
    assert_eq!(
        by_id[x2.task_id.as_str()]["attempt"],
        2,
        "x2 requeued when r1 came back without it"
    );
    assert_eq!(
        by_id[y.task_id.as_str()]["attempt"],
        2,
        "y requeued by the sweeper"
    );
    let ran: BTreeMap<String, u32> = w3.assigned.into_iter().chain(r1_got).collect();
    assert!(ran.contains_key(&y.task_id) && ran.contains_key(&x2.task_id));
}

/// The sweeper race. A runner holds a task on node A; A is killed and the runner stays away
/// for longer than a grace period, so a sweeper (on B or C) reads the task as orphaned. Before
/// that sweeper's requeue commits, the runner reconnects to B listing the task, and B resumes
/// it on the same attempt. The requeue must then change nothing: the task completes once, on
/// its first attempt, and is never requeued. Every sweeper waits 3 s between its read and its
/// requeue (`DAP_TEST_SWEEP_DELAY_MS`, test-only), so the reconnect lands in that window every
/// time.
#[tokio::test]
async fn a_sweep_racing_a_runner_that_resumes_on_another_node_changes_nothing() {
    let Some(c) = Cluster::new("cluster-sweep-race").await else {
        return;
    };
    let delay = Duration::from_millis(3000);
    let env = [
        ("DAP_RUNNER_GRACE_MS", "1000"),
        ("DAP_TEST_SWEEP_DELAY_MS", "3000"),
    ];
    let mut a = c.node(1, &env);
    let b = c.node(2, &env);
    let c3 = c.node(3, &env);
    let cred = c.enrol(&a, "late").await;
    let mut r = ProtoRunner::connect(a.addr, &cred, 1, &[]).await;
    let id = c.create_id(&a, json!({ "operation_code": 1 })).await;
    let x = r.next_assignment(10).await;
    assert_eq!((x.task_id.as_str(), x.attempt), (id.as_str(), 1));

    a.kill_9();
    drop(r);
    // Stay away until a sweeper has read the task as orphaned (it logs that, then waits).
    let swept = |n: &Node| {
        std::fs::read_to_string(&n.log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("no node has reported") && l.contains(&id))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !swept(&b) && !swept(&c3) {
        assert!(
            Instant::now() < deadline,
            "no sweeper found the orphaned task"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let read_at = Instant::now();
    let mut r = ProtoRunner::connect_with(
        b.addr,
        &cred,
        1,
        &[],
        vec![RunningTask {
            task_id: x.task_id.clone(),
            attempt: x.attempt,
        }],
    )
    .await;
    assert!(
        read_at.elapsed() < delay / 2,
        "the reconnect took {:?}: outside the sweep's window",
        read_at.elapsed()
    );
    // Hold the task until every sweeper that read it has tried its requeue (at most one sweep
    // interval after the first read, plus the delay), then finish it.
    while read_at.elapsed() < delay + Duration::from_millis(1500) {
        if let Some(m) = r.next(1).await {
            assert!(
                !matches!(m, ServerMessage::Cancel { .. } | ServerMessage::Assign(_)),
                "the resumed runner was told {m:?}"
            );
        }
    }
    r.complete(&x, json!({ "once": true })).await;
    r.wait_ack(&x.task_id, x.attempt, 10).await;

    let (_, h) = c
        .call(&b, "GET", &format!("/api/v1/tasks/{id}/events"), None)
        .await;
    let kinds: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default())
        .collect();
    assert!(!kinds.contains(&"task.requeued"), "requeued: {h:#}");
    let t = c.task(&b, &id).await;
    assert_eq!(t["status"], "completed", "{t}\nevents: {kinds:?}");
    assert_eq!(t["attempt"], 1, "{t}");
    let (_, res) = c
        .call(&b, "GET", &format!("/api/v1/tasks/{id}/result"), None)
        .await;
    assert_eq!(res["result_data"], json!({ "once": true }), "{res}");
}

/// A task cancelled through node A while it runs on a runner connected to node B: B's runner
/// is told to stop (B learns of the cancel from the shared log).
#[tokio::test]
async fn a_cancel_on_one_node_stops_the_task_on_a_runner_of_another() {
    let Some(c) = Cluster::new("cluster-cancel").await else {
        return;
    };
    let a = c.node(1, &[]);
    let b = c.node(2, &[]);
    let cred = c.enrol(&a, "on-b").await;
    let mut runner = ProtoRunner::connect(b.addr, &cred, 1, &[]).await;
    let t = c.create(&a, json!({ "operation_code": 1 })).await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    let got = runner.next_assignment(10).await;
    assert_eq!(got.task_id, id);
    runner.progress(&got, 10, "working").await;

    let t0 = Instant::now();
    let (st, v) = c
        .call(&a, "POST", &format!("/api/v1/tasks/{id}/cancel"), None)
        .await;
    assert!(st == 200 || st == 202, "{st} {v}");
    match runner.next(10).await {
        Some(ServerMessage::Cancel { task_id, attempt }) => {
            assert_eq!((task_id.as_str(), attempt), (id.as_str(), 1));
        }
        other => panic!("expected a cancel on node B's runner, got {other:?}"),
    }
    eprintln!(
        "cancel on A → B's runner told to stop after {:?}",
        t0.elapsed()
    );
    assert_eq!(c.task(&a, &id).await["status"], "cancelled");
}

/// Three nodes, one webhook (created through node 1 after every node started), runners on all
/// three and tasks created on all three: the receiver, which answers slowly so that deliveries
/// are in flight while every node's worker looks at the outbox, gets exactly one delivery per
/// `task.completed` event, none missing (counted by the `webhook-id` header).
#[tokio::test]
async fn each_webhook_delivery_is_sent_once_by_one_of_three_nodes() {
    use crate::webhooks::Receiver;
    let Some(c) = Cluster::new("cluster-hooks").await else {
        return;
    };
    let env = [("DAP_WEBHOOK_ALLOW_PRIVATE", "true")];
    let nodes = [c.node(1, &env), c.node(2, &env), c.node(3, &env)];
    let (recv, url) = Receiver::start_slow(Duration::from_millis(150)).await;
    let (st, hook) = c
        .call(
            &nodes[0],
            "POST",
            "/api/v1/webhooks",
            Some(json!({ "url": url, "events": ["task.completed"] })),
        )
        .await;
    assert_eq!(st, 201, "{hook}");
    let hook_id = hook["id"].as_str().unwrap().to_owned();

    const TASKS: usize = 60;
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        let cred = c.enrol(node, &format!("on-{k}")).await;
        let runner = ProtoRunner::connect(node.addr, &cred, 2, &[]).await;
        let hold = Duration::from_millis(5);
        workers.push(tokio::spawn(work(runner, 2, hold, done.clone(), TASKS)));
    }
    let mut ids = Vec::new();
    for i in 0..TASKS {
        let t = c
            .create(&nodes[i % 3], json!({ "operation_code": 1 }))
            .await;
        ids.push(t["task_id"].as_str().unwrap().to_owned());
    }
    let mut ran_on = Vec::new();
    for w in workers {
        let (w, _runner) = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("every task ran within 30 s")
            .unwrap();
        ran_on.push(w.assigned.len());
    }
    c.wait_completed(&nodes[1], &ids, 15).await;
    recv.wait_for(TASKS, 30).await;
    // Room for a second copy of any delivery to arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let got = recv.got.lock().unwrap().clone();
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    let mut tasks_seen = HashSet::new();
    for (headers, body) in &got {
        *per_id
            .entry(headers["webhook-id"].to_str().unwrap().to_owned())
            .or_default() += 1;
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["type"], "task.completed");
        tasks_seen.insert(v["data"]["task_id"].as_str().unwrap().to_owned());
    }
    let duplicates: usize = per_id.values().map(|n| n - 1).sum();
    eprintln!(
        "cluster webhooks: {} requests for {TASKS} completions (runners on the three nodes ran {ran_on:?}), {} distinct message ids, {duplicates} duplicates",
        got.len(),
        per_id.len()
    );
    assert_eq!(duplicates, 0, "a delivery was sent twice: {per_id:?}");
    assert_eq!(per_id.len(), TASKS, "one delivery per completion");
    let want: HashSet<String> = ids.into_iter().collect();
    assert_eq!(tasks_seen, want, "every completed task was reported");
    // The delivery log agrees: every delivery delivered at its first attempt, none claimed.
    let (st, log) = c
        .call(
            &nodes[2],
            "GET",
            &format!("/api/v1/webhooks/{hook_id}/deliveries?limit=200"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{log}");
    let items = log["deliveries"].as_array().unwrap();
    assert_eq!(items.len(), TASKS, "{log}");
    assert!(
        items
            .iter()
            .all(|d| d["status"] == "delivered" && d["attempts"] == 1),
        "{log:#}"
    );
}

/// What one [`roaming_runner`] did.
#[derive(Debug, Default)]
struct Roamed {
    /// (task, attempt) of every assignment received: each one is an execution.
    executed: Vec<(String, u32)>,
    /// When each task's result was last sent.
    finished: HashMap<String, Instant>,
    /// Tasks it listed as running (held or result not yet acknowledged) when it reconnected.
    listed_on_reconnect: usize,
    reconnects: usize,
    /// Longest time from noticing the node was gone to being welcomed by another.
    slowest_reconnect: Duration,
}

/// What a roaming runner hears within a wait.
enum Heard {
    Message(ServerMessage),
    Quiet,
    /// The socket ended (its node died).
    Gone,
}

async fn hear(ws: &mut Ws, within: Duration) -> Heard {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    match tokio::time::timeout(within, ws.next()).await {
        Err(_) => Heard::Quiet,
        Ok(Some(Ok(Message::Text(t)))) => Heard::Message(serde_json::from_str(t.as_str()).unwrap()),
        Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => Heard::Gone,
        Ok(Some(Ok(_))) => Heard::Quiet,
    }
}

/// Connects to the first node from `first` on (round robin) that accepts TCP connections.
async fn connect_to_a_live_node(
    nodes: &[std::net::SocketAddr],
    first: usize,
    cred: &str,
    slots: u32,
    running: Vec<RunningTask>,
) -> (usize, ProtoRunner) {
    for k in 0..nodes.len() * 20 {
        let i = (first + k) % nodes.len();
        if tokio::net::TcpStream::connect(nodes[i]).await.is_ok() {
            let r = ProtoRunner::connect_with(nodes[i], cred, slots, &[], running).await;
            return (i, r);
        }
        if i + 1 == nodes.len() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("no live node to connect to");
}

/// A protocol-level runner that behaves like `dap-runner` when its node dies: it reconnects to
/// another node, lists in its greeting every task it holds or whose result the server has not
/// acknowledged, then sends those results again. Holds each assignment for `hold`. Stops once
/// `stop` is set and it holds nothing and has nothing unacknowledged.
async fn roaming_runner(
    nodes: Vec<std::net::SocketAddr>,
    first: usize,
    cred: String,
    slots: usize,
    hold: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Roamed {
    use dap_protocol::{Assignment, Completed, RunnerMessage};
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let completed = |a: &Assignment| {
        Message::Text(
            RunnerMessage::Completed(Completed {
                task_id: a.task_id.clone(),
                attempt: a.attempt,
                result_data: json!({ "ok": true }),
            })
            .to_json()
            .into(),
        )
    };
    let mut out = Roamed::default();
    let (mut at, mut runner) =
        connect_to_a_live_node(&nodes, first, &cred, slots as u32, vec![]).await;
    let mut held: Vec<(Instant, Assignment)> = Vec::new();
    // Results sent and not yet acknowledged, by (task, attempt).
    let mut unacked: BTreeMap<(String, u32), Assignment> = BTreeMap::new();
    loop {
        if stop.load(Ordering::SeqCst) && held.is_empty() && unacked.is_empty() {
            return out;
        }
        let wait = held
            .iter()
            .map(|(due, _)| due.saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(Duration::from_millis(50));
        let mut gone = false;
        match hear(&mut runner.ws, wait).await {
            Heard::Message(ServerMessage::Assign(a)) => {
                let key = (a.task_id.clone(), a.attempt);
                if !out.executed.contains(&key) {
                    out.executed.push(key);
                    held.push((Instant::now() + hold, a));
                    assert!(
                        held.len() <= slots,
                        "runner holds {} tasks with {slots} slots",
                        held.len()
                    );
                }
            }
            Heard::Message(ServerMessage::Ack { task_id, attempt }) => {
                unacked.remove(&(task_id, attempt));
            }
            Heard::Message(ServerMessage::Cancel { task_id, attempt }) => {
                held.retain(|(_, a)| !(a.task_id == task_id && a.attempt == attempt));
                unacked.remove(&(task_id, attempt));
            }
            Heard::Message(_) | Heard::Quiet => {}
            Heard::Gone => gone = true,
        }
        let now = Instant::now();
        let (due, rest): (Vec<_>, Vec<_>) = held.into_iter().partition(|(t, _)| *t <= now);
        held = rest;
        for (_, a) in due {
            if !gone && runner.ws.send(completed(&a)).await.is_err() {
                gone = true;
            }
            out.finished.insert(a.task_id.clone(), Instant::now());
            unacked.insert((a.task_id.clone(), a.attempt), a);
        }
        if gone {
            let running: Vec<RunningTask> = held
                .iter()
                .map(|(_, a)| a)
                .chain(unacked.values())
                .map(|a| RunningTask {
                    task_id: a.task_id.clone(),
                    attempt: a.attempt,
                })
                .collect();
            out.listed_on_reconnect += running.len();
            out.reconnects += 1;
            let t0 = Instant::now();
            (at, runner) =
                connect_to_a_live_node(&nodes, at + 1, &cred, slots as u32, running).await;
            out.slowest_reconnect = out.slowest_reconnect.max(t0.elapsed());
            for a in unacked.values() {
                if runner.ws.send(completed(a)).await.is_err() {
                    break; // gone again: the next turn reconnects
                }
            }
        }
    }
}

/// kill -9 of one of three nodes while clients keep creating tasks on all of them and runners
/// spread over all of them keep running them: the runners of the dead node reconnect to the
/// others, clients move to the survivors, and every task that got a 201 completes, each run by
/// a runner; a task runs twice only if it was requeued (a later attempt).
#[tokio::test]
async fn killing_one_of_three_nodes_under_load_loses_no_acknowledged_task() {
    let Some(c) = Cluster::new("cluster-kill3").await else {
        return;
    };
    let env = [("DAP_RUNNER_GRACE_MS", "2000")];
    let mut nodes = [c.node(1, &env), c.node(2, &env), c.node(3, &env)];
    let addrs: Vec<std::net::SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    const RUNNERS: usize = 6;
    const SLOTS: usize = 2;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut runners = Vec::new();
    for i in 0..RUNNERS {
        let cred = c.enrol(&nodes[0], &format!("r{i}")).await;
        runners.push(tokio::spawn(roaming_runner(
            addrs.clone(),
            i % 3,
            cred,
            SLOTS,
            Duration::from_millis(30),
            stop.clone(),
        )));
    }

    // Clients create for LOAD, round robin over the nodes, each at most one create per PACE
    // (steady load below the runners' capacity, and CPU left for the tests running alongside);
    // a node that fails to answer is dead to that client from then on (a load balancer taking
    // it out).
    const CLIENTS: usize = 3;
    const PACE: Duration = Duration::from_millis(20);
    const LOAD: Duration = Duration::from_secs(5);
    // Off the clients' 20 ms beat, so that tasks are in flight on the dead node's runners.
    const KILL_AFTER: Duration = Duration::from_millis(2010);
    let c = Arc::new(c);
    let started = Instant::now();
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let (c, bases) = (c.clone(), nodes.iter().map(Node::base).collect::<Vec<_>>());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let (mut acked, mut refused) = (Vec::new(), 0usize);
            let mut dead = HashSet::new();
            let mut i = k;
            let mut pace = tokio::time::interval(PACE);
            while started.elapsed() < LOAD {
                pace.tick().await;
                i += 1;
                while dead.contains(&(i % bases.len())) {
                    i += 1;
                }
                let n = i % bases.len();
                let r = http
                    .post(format!("{}/api/v1/tasks", bases[n]))
                    .bearer_auth(&c.key)
                    .json(&json!({ "operation_code": 1 }))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        let v: Value = r.json().await.unwrap();
                        acked.push((v["task_id"].as_str().unwrap().to_owned(), n, Instant::now()));
                    }
                    Ok(r) => panic!("create on node {} answered {}", n + 1, r.status()),
                    Err(_) => {
                        refused += 1;
                        dead.insert(n);
                    }
                }
            }
            (acked, refused)
        }));
    }
    tokio::time::sleep(KILL_AFTER).await;
    nodes[2].kill_9();
    let killed = Instant::now();
    let mut acked = Vec::new();
    let mut unanswered = 0;
    for cl in clients {
        let (a, r) = cl.await.unwrap();
        acked.extend(a);
        unanswered += r;
    }
    let load_ended = Instant::now();
    let ids: Vec<String> = acked.iter().map(|(id, _, _)| id.clone()).collect();
    let on_dead = acked.iter().filter(|(_, n, _)| *n == 2).count();
    let after_kill = acked.iter().filter(|(_, _, at)| *at > killed).count();
    // Done when nothing is queued or in flight any more (counted on a survivor); then every
    // acknowledged task is checked one by one.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut open = 0;
        for status in ["queued", "assigned", "running"] {
            let (st, v) = c
                .call(
                    &nodes[0],
                    "GET",
                    &format!("/api/v1/tasks?status={status}&limit=1"),
                    None,
                )
                .await;
            assert_eq!(st, 200, "{v}");
            open += v["total"].as_u64().unwrap();
        }
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} tasks still open 60 s after the load"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_done = killed.elapsed();
    let tasks = c.wait_completed(&nodes[0], &ids, 10).await;
    stop.store(true, Ordering::SeqCst);
    let mut roamed = Vec::new();
    for r in runners {
        roamed.push(
            tokio::time::timeout(Duration::from_secs(20), r)
                .await
                .expect("runners finish what they hold")
                .unwrap(),
        );
    }

    let final_attempt: HashMap<&str, u64> = tasks
        .iter()
        .map(|t| {
            (
                t["task_id"].as_str().unwrap(),
                t["attempt"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut runs: HashMap<String, Vec<u32>> = HashMap::new();
    for (task, attempt) in roamed.iter().flat_map(|r| r.executed.iter()) {
        runs.entry(task.clone()).or_default().push(*attempt);
    }
    let requeued: Vec<&str> = final_attempt
        .iter()
        .filter(|(_, a)| **a > 1)
        .map(|(t, _)| *t)
        .collect();
    // What was created before the kill (including on the dead node) was done by then.
    let finished: HashMap<&String, Instant> = roamed
        .iter()
        .flat_map(|r| r.finished.iter())
        .map(|(t, at)| (t, *at))
        .collect();
    let before_kill_done = acked
        .iter()
        .filter(|(_, _, at)| *at <= killed)
        .filter_map(|(t, _, _)| finished.get(t))
        .max()
        .map(|at| at.saturating_duration_since(killed));
    let acked_set: HashSet<&String> = ids.iter().collect();
    let ran_unacked = runs.keys().filter(|t| !acked_set.contains(t)).count();
    let mut ran_twice = 0;
    for id in &ids {
        let attempts = runs
            .get(id)
            .unwrap_or_else(|| panic!("task {id} completed but no runner ran it"));
        assert!(
            attempts.contains(&(final_attempt[id.as_str()] as u32)),
            "task {id}: the completed attempt {} was run by a runner ({attempts:?})",
            final_attempt[id.as_str()]
        );
        if attempts.len() > 1 {
            ran_twice += 1;
            assert!(
                final_attempt[id.as_str()] > 1,
                "task {id} ran {attempts:?} but was never requeued"
            );
        }
    }
    eprintln!(
        "cluster kill -9 of 1 of 3 nodes under load: {} tasks acknowledged ({} by the killed node, {} after the kill), \
         {unanswered} creates unanswered (client moved on); all completed {:?} after the kill ({:?} after the load ended; every task created before the kill done {:?} after it); \
         {} requeued (attempt > 1), {ran_twice} run twice; runners reconnected {} times (slowest {:?}, token exchange included) listing {} held/unacknowledged tasks; \
         {ran_unacked} tasks ran whose create was never answered",
        ids.len(),
        on_dead,
        after_kill,
        all_done,
        all_done.saturating_sub(load_ended.duration_since(killed)),
        before_kill_done.unwrap_or_default(),
        requeued.len(),
        roamed.iter().map(|r| r.reconnects).sum::<usize>(),
        roamed.iter().map(|r| r.slowest_reconnect).max().unwrap_or_default(),
        roamed.iter().map(|r| r.listed_on_reconnect).sum::<usize>(),
    );
    assert!(
        on_dead > 0 && after_kill > 0,
        "load on the dead node before and on the others after"
    );
    assert!(
        roamed.iter().map(|r| r.reconnects).sum::<usize>() >= RUNNERS / 3,
        "the dead node's runners reconnected elsewhere"
    );
}

/// A node that loses the database (its PostgreSQL role is locked out and its sessions ended)
/// fences itself within half a grace period: its runner is told 1012 and new runner
/// connections get 503 `node_unavailable`, so the runner moves to the other node before that
/// node's sweeper would count it gone, resumes its task there (same attempt, no requeue), and
/// the task completes once. Without fencing the runner would stay on the cut-off node and its
/// task would be requeued under it.
#[tokio::test]
async fn a_node_that_loses_the_database_sends_its_runners_elsewhere() {
    use futures_util::StreamExt;
    let Some(c) = Cluster::new("cluster-fence").await else {
        return;
    };
    // Node B logs in as a role of its own, so that only B can be cut off.
    let role = format!("dap_node_b_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&c.db.url).await.unwrap();
    sqlx::query(&format!("CREATE ROLE {role} LOGIN SUPERUSER"))
        .execute(&admin)
        .await
        .unwrap();
    let b_url =
        c.db.url
            .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    assert_ne!(b_url, c.db.url, "the test URL names the postgres user");
    let env = [("DAP_RUNNER_GRACE_MS", "2000")];
    let a = c.node(1, &env);
    let b = Node::start(2, &c.dir, &b_url, &env);
    let cred = c.enrol(&a, "moves").await;
    let mut runner = ProtoRunner::connect(b.addr, &cred, 1, &[]).await;
    let id = c.create_id(&a, json!({ "operation_code": 1 })).await;
    let got = runner.next_assignment(10).await;
    assert_eq!(got.task_id, id);
    runner.progress(&got, 30, "working").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.task(&a, &id).await["progress"] != 30 {
        assert!(Instant::now() < deadline, "progress not committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let jwt = runner_jwt(&a.base(), &cred).await.unwrap();

    // Cut B off: no new sessions for its role, and its open ones ended.
    sqlx::query(&format!("ALTER ROLE {role} NOLOGIN"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(&role)
        .execute(&admin)
        .await
        .unwrap();
    let cut = Instant::now();
    let code = loop {
        let left = Duration::from_secs(10).saturating_sub(cut.elapsed());
        match tokio::time::timeout(left, runner.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f))))) => {
                break u16::from(f.code)
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("B did not send its runner away: {other:?}"),
        }
    };
    let told = cut.elapsed();
    assert_eq!(code, dap_protocol::close_code::UNAVAILABLE);
    assert!(
        told < Duration::from_secs(2),
        "told after {told:?}, a grace period"
    );
    drop(runner);
    match ws_connect(b.addr, Some(&jwt)).await {
        Err(503) => {}
        Err(other) => panic!("B answered a runner with {other}, not 503"),
        Ok(_) => panic!("B accepted a runner while cut off"),
    }

    // The runner goes to A, listing its task: resumed there on the same attempt.
    let mut runner = ProtoRunner::connect_with(
        a.addr,
        &cred,
        1,
        &[],
        vec![RunningTask {
            task_id: id.clone(),
            attempt: got.attempt,
        }],
    )
    .await;
    let moved = cut.elapsed();
    // Past the grace period, when a sweeper would have requeued it: still ours, untouched.
    let quiet = runner.next(3).await;
    assert!(quiet.is_none(), "told {quiet:?} after resuming on A");
    runner.complete(&got, json!({ "moved": true })).await;
    runner.wait_ack(&id, got.attempt, 10).await;
    let t = c.task(&a, &id).await;
    assert_eq!(
        (t["status"].as_str(), t["attempt"].as_u64()),
        (Some("completed"), Some(1))
    );
    let (st, history) = c
        .call(&a, "GET", &format!("/api/v1/tasks/{id}/events"), None)
        .await;
    assert_eq!(st, 200);
    let kinds: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"task.requeued"), "{kinds:?}");
    eprintln!("cluster: B told its runner 1012 {told:?} after losing the database; the runner resumed on A {moved:?} after");
    drop(b);
    let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {role}"))
        .execute(&admin)
        .await;
}
