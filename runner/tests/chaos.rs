//! The server killed with SIGKILL 20 times while clients create ≥ 10,000 tasks and four real
//! runners (in-process, the library the binary runs) execute them: every task that got a 201
//! is completed exactly once — none lost, none executed to completion twice.
//!
//! Executions are counted on the runners' side, from their own `task completed` log events
//! (a tracing layer of this test binary; hence one test per file), so a task re-run after a
//! crash shows up even though the server would record only one result. The server is the real
//! `dap-server` binary of this workspace's target directory, restarted on the same port.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dap_runner::{RunnerConfig, StopMode};
use serde_json::{json, Value};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

const KILLS: usize = 20;
const MIN_TASKS: usize = 10_000;
const RUNNERS: usize = 4;

/// Task id → how many times a runner executed it to completion.
type Executions = Arc<Mutex<HashMap<String, u32>>>;

/// Counts `task completed` events of the runner library by task id.
struct CountCompletions(Executions);

#[derive(Default)]
struct Fields {
    message: String,
    task_id: String,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "task_id" {
            self.task_id = value.to_owned();
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "task_id" => self.task_id = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for CountCompletions {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut f = Fields::default();
        event.record(&mut f);
        if f.message == "task completed" && !f.task_id.is_empty() {
            *self.0.lock().unwrap().entry(f.task_id).or_insert(0) += 1;
        }
    }
}

/// The `dap-server` binary next to this test's own target directory (built by
/// `cargo test --workspace`; built here if this package's tests run alone).
fn server_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
    let bin = profile_dir.join("dap-server");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", "dap-server", "--bin", "dap-server"])
            .status()
            .unwrap()
            .success();
        assert!(ok && bin.exists(), "cannot build {}", bin.display());
    }
    bin
}

/// The server as a child process; SIGKILLed when dropped.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(bin: &Path, dir: &Path, listen: &str) -> (ServerProcess, std::net::SocketAddr) {
    let mut child = ServerProcess(
        Command::new(bin)
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(dir)
            // Many small tasks per runner: no per-connection message rate here.
            .env("DAP_RUNNER_RATE", "0")
            .env("DAP_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(addr) = line.split("addr=").nth(1) {
                    let _ = tx.send(addr.split_whitespace().next().unwrap().to_owned());
                    sent = true;
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server printed its address");
    (child, addr.parse().unwrap())
}

fn admin_key(bin: &Path, dir: &Path) -> String {
    let out = Command::new(bin)
        .args([
            "apikey",
            "create",
            "--name",
            "chaos",
            "--scope",
            "admin",
            "--data-dir",
        ])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Option<Value>,
) -> Result<(u16, Value), reqwest::Error> {
    let mut req = client.request(method, url).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_server_20_times_under_10k_tasks_loses_none_and_runs_none_twice() {
    let executions: Executions = Arc::default();
    let subscriber =
        tracing_subscriber::registry().with(CountCompletions(Arc::clone(&executions)).with_filter(
            tracing_subscriber::filter::filter_fn(|m| m.target().starts_with("dap_runner")),
        ));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let bin = server_bin();
    let dir = std::env::temp_dir().join(format!(
        "dap-chaos-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let key = admin_key(&bin, &dir);
    let (server, addr) = start_server(&bin, &dir, "127.0.0.1:0");
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Four real runners, four slots each, coming back fast after every crash.
    let mut stops = Vec::new();
    let mut joins = Vec::new();
    for i in 0..RUNNERS {
        let (st, r) = call(
            &client,
            reqwest::Method::POST,
            format!("{base}/api/v1/runners"),
            &key,
            Some(json!({"name": format!("chaos-{i}")})),
        )
        .await
        .unwrap();
        assert_eq!(st, 201, "{r}");
        let config = RunnerConfig {
            server: base.clone(),
            token: r["token"].as_str().unwrap().to_owned(),
            name: format!("chaos-{i}"),
            slots: 4,
            datasets: vec![],
            show_progress_bars: false,
            state_dir: Some(dir.join(format!("runner-{i}"))),
            keep_outputs_bytes: 0,
            ca_cert: None,
            on_stop: StopMode::Finish,
            drain_timeout: Duration::from_secs(30),
            reconnect_max_delay: Duration::from_millis(400),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        joins.push(tokio::spawn(dap_runner::run(config, async {
            let _ = stopped.await;
        })));
    }

    // Clients create no-op tasks as fast as the server answers, through every crash.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let unanswered = Arc::new(AtomicU64::new(0));
    let other_status = Arc::new(Mutex::new(HashMap::<u16, u64>::new()));
    let creating = Arc::new(AtomicBool::new(true));
    let mut creators = Vec::new();
    for _ in 0..8 {
        let (client, base, key) = (client.clone(), base.clone(), key.clone());
        let (acknowledged, unanswered, other_status, creating) = (
            Arc::clone(&acknowledged),
            Arc::clone(&unanswered),
            Arc::clone(&other_status),
            Arc::clone(&creating),
        );
        creators.push(tokio::spawn(async move {
            while creating.load(Ordering::Relaxed) {
                let r = call(
                    &client,
                    reqwest::Method::POST,
                    format!("{base}/api/v1/tasks"),
                    &key,
                    Some(json!({"operation_code": 1})),
                )
                .await;
                match r {
                    Ok((201, v)) => acknowledged
                        .lock()
                        .unwrap()
                        .push(v["task_id"].as_str().unwrap().to_owned()),
                    Ok((status, _)) => {
                        *other_status.lock().unwrap().entry(status).or_insert(0) += 1
                    }
                    // Refused or cut by the crash: the create may or may not have committed.
                    Err(_) => {
                        unanswered.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }

    // Kill -9 at random moments while tasks flow, restart on the same port.
    let listen = addr.to_string();
    let mut server = server;
    let t0 = Instant::now();
    for kill in 0..KILLS {
        let before = acknowledged.lock().unwrap().len();
        // Some work since the last restart, then a random moment.
        let deadline = Instant::now() + Duration::from_secs(30);
        while acknowledged.lock().unwrap().len() < before + 200 {
            assert!(
                Instant::now() < deadline,
                "no progress after restart {kill}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 400)).await;
        server.0.kill().unwrap(); // SIGKILL
        server.0.wait().unwrap();
        drop(server);
        server = start_server(&bin, &dir, &listen).0;
    }
    let kills_took = t0.elapsed();
    // Keep creating until the load target is met, then stop.
    let deadline = Instant::now() + Duration::from_secs(120);
    while acknowledged.lock().unwrap().len() < MIN_TASKS {
        assert!(Instant::now() < deadline, "load target not reached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    creating.store(false, Ordering::Relaxed);
    for c in creators {
        c.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    // Every acknowledged task completes.
    let deadline = Instant::now() + Duration::from_secs(180);
    let all = loop {
        let mut tasks: HashMap<String, Value> = HashMap::new();
        let mut offset = 0;
        loop {
            let (st, page) = call(
                &client,
                reqwest::Method::GET,
                format!("{base}/api/v1/tasks?limit=500&offset={offset}"),
                &key,
                None,
            )
            .await
            .unwrap();
            assert_eq!(st, 200, "{page}");
            let items = page["tasks"].as_array().unwrap();
            for t in items {
                tasks.insert(t["task_id"].as_str().unwrap().to_owned(), t.clone());
            }
            if items.len() < 500 {
                break;
            }
            offset += 500;
        }
        let pending = tasks
            .values()
            .filter(|t| t["status"] != "completed")
            .count();
        if pending == 0 && tasks.len() >= acknowledged.len() {
            break tasks;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} of {} tasks not completed 180 s after the last crash",
            tasks.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let drained = t0.elapsed();

    let mut lost = Vec::new();
    for id in &acknowledged {
        match all.get(id) {
            Some(t) if t["status"] == "completed" => {}
            other => lost.push((id.clone(), other.cloned())),
        }
    }
    let executions = executions.lock().unwrap().clone();
    let twice: Vec<_> = executions.iter().filter(|(_, n)| **n > 1).collect();
    let never: Vec<_> = all
        .keys()
        .filter(|id| !executions.contains_key(*id))
        .collect();
    let reattempted = all
        .values()
        .filter(|t| t["attempt"].as_u64() > Some(1))
        .count();
    eprintln!(
        "chaos: {KILLS} kill -9 in {kills_took:?}; {} tasks acknowledged with 201, {} stored \
         (creates cut by a crash: {}, other statuses: {:?}); all completed {drained:?} after the \
         first kill; lost {}, executed twice {}, attempt > 1: {reattempted}",
        acknowledged.len(),
        all.len(),
        unanswered.load(Ordering::Relaxed),
        other_status.lock().unwrap(),
        lost.len(),
        twice.len(),
    );
    assert!(lost.is_empty(), "lost: {:?}", &lost[..lost.len().min(5)]);
    assert!(
        twice.is_empty(),
        "executed more than once: {:?}",
        &twice[..twice.len().min(5)]
    );
    assert!(
        never.is_empty(),
        "completed without a runner executing it: {:?}",
        &never[..never.len().min(5)]
    );
    assert!(acknowledged.len() >= MIN_TASKS);

    for s in stops {
        let _ = s.send(());
    }
    for j in joins {
        let r = tokio::time::timeout(Duration::from_secs(30), j)
            .await
            .expect("runner stops")
            .unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
