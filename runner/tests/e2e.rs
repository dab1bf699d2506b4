//! The real runner against the real server, both in-process, over a real socket: operation 100
//! on a CSV file end to end, progress seen on the server, reconnect after a server restart,
//! operation 200 shipping its full output as an artifact, operation 400 exporting an HTML report
//! that is downloaded again, a revoked runner stopping for good, a fetch → filter → model →
//! export pipeline over kept outputs, cancelling a long filter, stopping the runner binary
//! (SIGTERM: drain and finish, hand back, second signal), and the real runner behind a fault
//! proxy (a cut within the grace period resumes, one past it moves the task to another runner).

use std::path::{Path, PathBuf};
use std::time::Duration;

// The server tests' fault proxy, shared by path (this suite uses the cut mode only).
#[allow(dead_code)]
#[path = "../../server/tests/it/fault_proxy.rs"]
mod fault_proxy;

use dap_runner::{DatasetFormat, DatasetSpec, RunnerConfig, RunnerError};
use dap_server::store::Scope;
use dap_server::{auth, build_state, serve, AppState, ServeConfig};
use serde_json::{json, Value};
use tokio::sync::oneshot;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "dap-e2e-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Server {
    addr: std::net::SocketAddr,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<()>,
}

async fn start_server(dir: &Path, addr: Option<std::net::SocketAddr>) -> Server {
    start_server_with(dir, addr, |_| {}).await
}

/// [`start_server`] with the configuration adjusted first.
async fn start_server_with(
    dir: &Path,
    addr: Option<std::net::SocketAddr>,
    tune: impl FnOnce(&mut ServeConfig),
) -> Server {
    let mut config = ServeConfig::for_dir(dir);
    tune(&mut config);
    let state = build_state(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind(addr.unwrap_or(config.listen))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let st = state.clone();
    let join = tokio::spawn(async move {
        serve(dap_server::no_delay(listener), st, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Server {
        addr,
        state,
        stop: Some(stop),
        join,
    }
}

impl Server {
    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.join).await;
        self.state.store.close().await;
    }
    fn url(&self, p: &str) -> String {
        format!("http://{}{p}", self.addr)
    }
}

async fn call(
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn write_csv(dir: &Path) -> PathBuf {
    let p = dir.join("people.csv");
    let mut s = String::from("id,name,age,score\n");
    for i in 0..250 {
        let age = if i % 50 == 7 {
            String::new()
        } else {
            (20 + i % 40).to_string()
        };
        s.push_str(&format!("{i},person {i},{age},{}.5\n", i * 3));
    }
    std::fs::write(&p, s).unwrap();
    p
}

fn runner_config(srv: &Server, token: &str, csv: &Path) -> RunnerConfig {
    RunnerConfig {
        server: srv.url(""),
        token: token.to_owned(),
        name: "e2e".into(),
        slots: 2,
        datasets: vec![DatasetSpec {
            name: "people".into(),
            path: csv.to_owned(),
            format: DatasetFormat::Csv,
            csv: Default::default(),
        }],
        show_progress_bars: false,
        // Each test's CSV sits in its own temp dir: keep the runner's state next to it.
        state_dir: Some(csv.parent().expect("csv in a dir").join("state")),
        keep_outputs_bytes: dap_runner::outputs::DEFAULT_MAX_BYTES,
        ca_cert: None,
        on_stop: dap_runner::StopMode::Finish,
        drain_timeout: dap_runner::DEFAULT_DRAIN_TIMEOUT,
        reconnect_max_delay: dap_runner::connection::BACKOFF_CAP,
    }
}

async fn wait_status(srv: &Server, key: &str, id: &str, want: &[&str], secs: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (_, t) = call(
            reqwest::Method::GET,
            srv.url(&format!("/api/v1/tasks/{id}")),
            key,
            None,
        )
        .await;
        if want.iter().any(|w| t["status"] == *w) {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} stuck: {t}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_runner_online(srv: &Server, key: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = call(reqwest::Method::GET, srv.url("/api/v1/runners"), key, None).await;
        if let Some(r) = v["runners"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["state"] != "offline"))
        {
            return r.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "runner never came online: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real server (data in `dir/srv`) with an admin key, a runner enrolled on it (its token) and
/// the `people` CSV written in `dir`.
struct Enrolled {
    dir: PathBuf,
    csv: PathBuf,
    srv: Server,
    key: String,
    token: String,
    runner_id: String,
}

async fn enrolled(tag: &str) -> Enrolled {
    let dir = temp_dir(tag);
    let csv = write_csv(&dir);
    let srv = start_server(&dir.join("srv"), None).await;
    let (_, key) = auth::api_keys::create_api_key(&srv.state.store, "t", Scope::Admin)
        .await
        .unwrap();
    let (st, r) = call(
        reqwest::Method::POST,
        srv.url("/api/v1/runners"),
        &key,
        Some(json!({"name": "e2e"})),
    )
    .await;
    assert_eq!(st, 201, "{r}");
    let token = r["token"].as_str().unwrap().to_owned();
    let runner_id = r["runner_id"].as_str().unwrap().to_owned();
    Enrolled {
        dir,
        csv,
        srv,
        key,
        token,
        runner_id,
    }
}

/// A real server with an admin key and the real runner (declaring `people`) online.
struct Rig {
    dir: PathBuf,
    srv: Server,
    key: String,
    listed: Value,
    stop_runner: oneshot::Sender<()>,
    runner: tokio::task::JoinHandle<Result<(), RunnerError>>,
}

async fn rig(tag: &str) -> Rig {
    rig_with(tag, |_, _| {}).await
}

/// [`rig`] with the runner's config adjusted first (`configure` gets the config and the temp
/// dir, e.g. to declare another dataset written there).
async fn rig_with(tag: &str, configure: impl FnOnce(&mut RunnerConfig, &Path)) -> Rig {
    let Enrolled {
        dir,
        csv,
        srv,
        key,
        token,
        ..
    } = enrolled(tag).await;
    let (stop_runner, runner_stopped) = oneshot::channel::<()>();
    let mut config = runner_config(&srv, &token, &csv);
    configure(&mut config, &dir);
    let runner = tokio::spawn(dap_runner::run(config, async {
        let _ = runner_stopped.await;
    }));
    let listed = wait_runner_online(&srv, &key).await;
    Rig {
        dir,
        srv,
        key,
        listed,
        stop_runner,
        runner,
    }
}

impl Rig {
    /// Stops the runner and the server and removes the temp dir.
    async fn finish(self) {
        let _ = self.stop_runner.send(());
        let r = tokio::time::timeout(Duration::from_secs(10), self.runner)
            .await
            .expect("the runner stops when asked")
            .expect("the runner task does not panic");
        assert!(r.is_ok(), "{r:?}");
        self.srv.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn fetch_on_csv_end_to_end_with_progress_and_reconnect_after_restart() {
    let Enrolled {
        dir,
        csv,
        srv,
        key,
        token,
        ..
    } = enrolled("fetch").await;

    let (stop_runner, runner_stopped) = oneshot::channel::<()>();
    let runner = tokio::spawn(dap_runner::run(runner_config(&srv, &token, &csv), async {
        let _ = runner_stopped.await;
    }));
    let listed = wait_runner_online(&srv, &key).await;
    // The greeting advertised the dataset with its schema and row count (never its path).
    let ds = &listed["datasets"][0];
    assert_eq!(ds["name"], "people");
    assert_eq!(ds["row_count"], 250);
    let cols: Vec<&str> = ds["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["id", "name", "age", "score"]);
    assert!(
        !listed.to_string().contains(csv.to_str().unwrap()),
        "path must not leak"
    );

    let (st, t) = call(
        reqwest::Method::POST,
        srv.url("/api/v1/tasks"),
        &key,
        Some(json!({
            "operation_code": 100,
            "params": {"dataset": "people", "columns": ["name", "age"], "limit": 3, "offset": 6}
        })),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    let id = t["task_id"].as_str().unwrap().to_owned();
    let done = wait_status(&srv, &key, &id, &["completed", "failed"], 20).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (_, res) = call(
        reqwest::Method::GET,
        srv.url(&format!("/api/v1/tasks/{id}/result")),
        &key,
        None,
    )
    .await;
    let rd = &res["result_data"];
    assert_eq!(rd["row_count"], 250);
    assert_eq!(rd["columns"], json!(["name", "age"]));
    assert_eq!(
        rd["rows"],
        json!([["person 6", 26], ["person 7", null], ["person 8", 28]])
    );

    // Progress was reported and only moved forward, ending at 100.
    let (_, h) = call(
        reqwest::Method::GET,
        srv.url(&format!("/api/v1/tasks/{id}/events")),
        &key,
        None,
    )
    .await;
    let progress: Vec<u64> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "task.progress")
        .map(|e| e["progress"].as_u64().unwrap())
        .collect();
    assert!(!progress.is_empty(), "no progress events: {h}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");

    // Operation 200 (filter) is routed to the runner that advertises it and holds the dataset.
    let (st, t) = call(
        reqwest::Method::POST,
        srv.url("/api/v1/tasks"),
        &key,
        Some(json!({
            "operation_code": 200,
            "params": {"dataset": "people", "where": {"any": [
                {"column": "id", "op": "lt", "value": 2},
                {"column": "age", "op": "is_null"}
            ]}, "select": ["id", "name"], "sort": [{"column": "id", "descending": true}], "limit": 4}
        })),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    let fid = t["task_id"].as_str().unwrap().to_owned();
    let done = wait_status(&srv, &key, &fid, &["completed", "failed"], 20).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (_, res) = call(
        reqwest::Method::GET,
        srv.url(&format!("/api/v1/tasks/{fid}/result")),
        &key,
        None,
    )
    .await;
    // ids 0 and 1, plus the five rows with an empty age (i % 50 == 7), newest first, capped at 4.
    assert_eq!(
        res["result_data"]["rows"],
        json!([
            [207, "person 207"],
            [157, "person 157"],
            [107, "person 107"],
            [57, "person 57"]
        ])
    );
    assert_eq!(res["result_data"]["input_row_count"], 250);

    // Unknown column → a typed failure from the runner, naming the field.
    let (_, t) = call(
        reqwest::Method::POST,
        srv.url("/api/v1/tasks"),
        &key,
        Some(json!({
            "operation_code": 100, "params": {"dataset": "people", "columns": ["nope"]}
        })),
    )
    .await;
    let bad = t["task_id"].as_str().unwrap().to_owned();
    let failed = wait_status(&srv, &key, &bad, &["completed", "failed"], 20).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "invalid_params", "{failed}");
    assert!(failed["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nope"));

    // Restart the server on the same address: the runner reconnects by itself and runs a task
    // created while it was away.
    let addr = srv.addr;
    srv.shutdown().await;
    let srv = start_server(&dir.join("srv"), Some(addr)).await;
    let (st, t) = call(
        reqwest::Method::POST,
        srv.url("/api/v1/tasks"),
        &key,
        Some(json!({
            "operation_code": 100, "params": {"dataset": "people", "limit": 1}
        })),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    let again = t["task_id"].as_str().unwrap().to_owned();
    let done = wait_status(&srv, &key, &again, &["completed", "failed"], 30).await;
    assert_eq!(done["status"], "completed", "{done}");

    let _ = stop_runner.send(());
    let r = tokio::time::timeout(Duration::from_secs(10), runner)
        .await
        .unwrap()
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    srv.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn revoked_runner_stops_with_an_error() {
    let Enrolled {
        dir,
        csv,
        srv,
        key,
        token,
        runner_id: rid,
    } = enrolled("revoke").await;
    let runner = tokio::spawn(dap_runner::run(
        runner_config(&srv, &token, &csv),
        std::future::pending(),
    ));
    wait_runner_online(&srv, &key).await;
    let (st, _) = call(
        reqwest::Method::DELETE,
        srv.url(&format!("/api/v1/runners/{rid}")),
        &key,
        None,
    )
    .await;
    assert_eq!(st, 200);
    let r = tokio::time::timeout(Duration::from_secs(10), runner)
        .await
        .expect("runner stops")
        .unwrap();
    assert!(matches!(r, Err(RunnerError::Revoked)), "{r:?}");
    srv.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn filter_uploads_its_full_output_as_a_csv_artifact() {
    use sha2::{Digest, Sha256};

    let rig = rig("artifact").await;
    let (srv, key) = (&rig.srv, rig.key.clone());

    let (st, t) = call(
        reqwest::Method::POST,
        srv.url("/api/v1/tasks"),
        &key,
        Some(json!({
            "operation_code": 200,
            "params": {"dataset": "people",
                       "where": {"column": "age", "op": "ge", "value": 40},
                       "select": ["id", "name", "age", "score"],
                       "sort": [{"column": "score", "descending": true}],
                       "preview_limit": 5}
        })),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    let id = t["task_id"].as_str().unwrap().to_owned();
    let done = wait_status(srv, &key, &id, &["completed", "failed"], 30).await;
    assert_eq!(done["status"], "completed", "{done}");

    // The same rows, computed from how `write_csv` generated the file: age = 20 + i % 40,
    // empty when i % 50 == 7; score = 3i + 0.5 (distinct, so the order is total).
    let mut expected: Vec<(u32, u32, f64)> = (0..250u32)
        .filter(|i| i % 50 != 7)
        .map(|i| (i, 20 + i % 40, f64::from(i * 3) + 0.5))
        .filter(|(_, age, _)| *age >= 40)
        .collect();
    expected.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap());
    assert!(expected.len() > 5);

    let (st, res) = call(
        reqwest::Method::GET,
        srv.url(&format!("/api/v1/tasks/{id}/result")),
        &key,
        None,
    )
    .await;
    assert_eq!(st, 200, "{res}");
    let rd = &res["result_data"];
    assert_eq!(rd["row_count"], expected.len());
    assert_eq!(rd["truncated"], true);
    assert_eq!(
        rd["rows"].as_array().unwrap().len(),
        5,
        "inline is only the preview"
    );
    assert_eq!(rd["rows"][0][0], expected[0].0);

    let artifacts = res["artifacts"].as_array().unwrap();
    assert_eq!(artifacts.len(), 1, "{res}");
    let a = &artifacts[0];
    assert_eq!(a["name"], "output.csv");
    assert_eq!(a["content_type"], "text/csv");
    assert_eq!(a["attempt"], 1);
    // The runner's own listing in the result agrees with the server's.
    assert_eq!(rd["artifacts"][0]["size"], a["size"]);
    assert_eq!(rd["artifacts"][0]["sha256"], a["sha256"]);

    let resp = reqwest::Client::new()
        .get(srv.url(&format!("/api/v1/tasks/{id}/artifacts/output.csv")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap().to_vec();
    assert_eq!(a["size"], body.len());
    let sha: String = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(a["sha256"], sha.as_str());

    let text = String::from_utf8(body).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("id,name,age,score"));
    let got: Vec<&str> = lines.collect();
    assert_eq!(got.len(), expected.len());
    for (line, (i, age, score)) in got.iter().zip(&expected) {
        assert_eq!(*line, format!("{i},person {i},{age},{score}"), "row {i}");
    }

    rig.finish().await;
}

#[tokio::test]
async fn export_html_report_end_to_end() {
    let rig = rig("export").await;
    let (srv, key) = (&rig.srv, rig.key.clone());
    let listed = rig.listed.clone();
    assert!(
        listed["operations"]
            .as_array()
            .is_some_and(|ops| ops.contains(&json!(400))),
        "{listed}"
    );

    let (st, t) = call(
        reqwest::Method::POST,
        srv.url("/api/v1/tasks"),
        &key,
        Some(json!({
            "operation_code": 400,
            "params": {"dataset": "people", "format": "html", "title": "People aged 50+",
                       "where": {"column": "age", "op": "ge", "value": 50},
                       "preview_rows": 5}
        })),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    let id = t["task_id"].as_str().unwrap().to_owned();
    let done = wait_status(srv, &key, &id, &["completed", "failed"], 30).await;
    assert_eq!(done["status"], "completed", "{done}");

    // From how `write_csv` generated the file: age = 20 + i % 40, empty when i % 50 == 7.
    let ages: Vec<u32> = (0..250u32)
        .filter(|i| i % 50 != 7)
        .map(|i| 20 + i % 40)
        .filter(|age| *age >= 50)
        .collect();
    let mean = f64::from(ages.iter().sum::<u32>()) / ages.len() as f64;

    let (st, res) = call(
        reqwest::Method::GET,
        srv.url(&format!("/api/v1/tasks/{id}/result")),
        &key,
        None,
    )
    .await;
    assert_eq!(st, 200, "{res}");
    let rd = &res["result_data"];
    assert_eq!(rd["format"], "html");
    assert_eq!(rd["artifact"], "report.html");
    assert_eq!(rd["row_count"], ages.len());
    let age = &rd["summary"][2];
    assert_eq!(age["column"], "age");
    assert_eq!(age["count"], ages.len());
    assert!((age["mean"].as_f64().unwrap() - mean).abs() < 1e-9, "{age}");
    assert_eq!(age["min"], 50.0);
    assert_eq!(age["max"], 59.0);
    let artifacts = res["artifacts"].as_array().unwrap();
    assert_eq!(artifacts.len(), 1, "{res}");
    assert_eq!(artifacts[0]["name"], "report.html");
    assert_eq!(artifacts[0]["content_type"], "text/html; charset=utf-8");

    let resp = reqwest::Client::new()
        .get(srv.url(&format!("/api/v1/tasks/{id}/artifacts/report.html")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert_eq!(artifacts[0]["size"], html.len());
    assert!(html.contains("<title>People aged 50+</title>"));
    for c in ["id", "name", "age", "score"] {
        assert!(html.contains(&format!("<th>{c}</th>")), "{c}");
    }
    assert!(html.contains(&format!("{} rows × 4 columns", ages.len())));
    assert!(html.contains("<svg"), "no chart");
    assert!(html.contains("class=\"preview\""), "no preview table");
    // The first matching row is i = 30 (age 50); only the first five rows are shown.
    assert!(html.contains("<td>person 30</td>"));
    assert_eq!(html.matches("<tr><td").count(), 5);
    assert!(!html.contains("http://") && !html.contains("https://"));

    rig.finish().await;
}

#[tokio::test]
async fn linear_regression_end_to_end_recovers_the_generating_line() {
    let rig = rig("model").await;

    // `write_csv` makes score = 3·id + 0.5 exactly, so the fit must recover it.
    let (_, res) = rig
        .run_ok(json!({
            "operation_code": 300,
            "params": {"dataset": "people", "model": "linear_regression",
                       "features": ["id"], "target": "score", "test_fraction": 0.2, "seed": 7}
        }))
        .await;
    let rd = &res["result_data"];
    assert_eq!(
        rd["n_train"].as_u64().unwrap() + rd["n_test"].as_u64().unwrap(),
        250
    );
    let text = rd["parameters"].to_string();
    assert!(
        text.contains("coefficients") || text.contains("coefficient"),
        "{rd}"
    );
    let r2 = rd["metrics"]["r2"]
        .as_f64()
        .unwrap_or_else(|| panic!("{rd}"));
    assert!(r2 > 0.999_999, "{rd}");
    let rmse = rd["metrics"]["rmse"].as_f64().unwrap();
    assert!(rmse < 1e-6, "{rd}");
    // Predictions travel as an artifact.
    assert!(res["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["name"] == "predictions.csv"));

    rig.finish().await;
}

impl Rig {
    /// POST a task; the status and body.
    async fn create(&self, body: Value) -> (u16, Value) {
        call(
            reqwest::Method::POST,
            self.srv.url("/api/v1/tasks"),
            &self.key,
            Some(body),
        )
        .await
    }

    /// Create a task, wait until it completes, and return its id and result.
    async fn run_ok(&self, body: Value) -> (String, Value) {
        run_ok(&self.srv, &self.key, body).await
    }
}

/// Create a task, wait until it completes, and return its id and result.
async fn run_ok(srv: &Server, key: &str, body: Value) -> (String, Value) {
    let (st, t) = call(
        reqwest::Method::POST,
        srv.url("/api/v1/tasks"),
        key,
        Some(body.clone()),
    )
    .await;
    assert_eq!(st, 201, "{body} -> {t}");
    let id = t["task_id"].as_str().unwrap().to_owned();
    let done = wait_status(srv, key, &id, &["completed", "failed"], 60).await;
    assert_eq!(done["status"], "completed", "{body} -> {done}");
    let (_, res) = call(
        reqwest::Method::GET,
        srv.url(&format!("/api/v1/tasks/{id}/result")),
        key,
        None,
    )
    .await;
    (id, res)
}

#[tokio::test]
async fn pipeline_fetch_filter_model_export_reads_kept_outputs_on_the_runner() {
    let rig = rig("pipeline").await;
    let runner_id = rig.listed["runner_id"].as_str().unwrap().to_owned();

    let (fetch, _) = rig
        .run_ok(json!({"operation_code": 100,
                       "params": {"dataset": "people", "columns": ["id", "age", "score"], "limit": 2}}))
        .await;
    // Rows with an age: `write_csv` leaves it empty when i % 50 == 7.
    let (filter, res) = rig
        .run_ok(json!({"operation_code": 200, "params": {
            "input": {"task_id": fetch},
            "where": {"column": "age", "op": "not_null"}}}))
        .await;
    let rd = &res["result_data"];
    assert_eq!(rd["dataset"], format!("task:{fetch}"), "{rd}");
    assert_eq!(rd["input_row_count"], 250, "{rd}");
    assert_eq!(rd["row_count"], 245, "{rd}");
    // The fetch's column choice carried over: `name` is not there.
    assert_eq!(rd["columns"], json!(["id", "age", "score"]), "{rd}");
    let (_, t) = call(
        reqwest::Method::GET,
        rig.srv.url(&format!("/api/v1/tasks/{filter}")),
        &rig.key,
        None,
    )
    .await;
    assert_eq!(t["runner_id"], runner_id.as_str());

    // score = 3·id + 0.5 on every row, so the fit on the filtered rows recovers it.
    let (model, res) = rig
        .run_ok(json!({"operation_code": 300, "params": {
            "input": {"task_id": filter}, "model": "linear_regression",
            "features": ["id"], "target": "score", "seed": 3}}))
        .await;
    let rd = &res["result_data"];
    assert_eq!(
        rd["n_train"].as_u64().unwrap() + rd["n_test"].as_u64().unwrap(),
        245,
        "{rd}"
    );
    assert!(rd["metrics"]["r2"].as_f64().unwrap() > 0.999_999, "{rd}");

    // The report is on the model's predictions.
    let (export, res) = rig
        .run_ok(json!({"operation_code": 400, "params": {
            "input": {"task_id": model}, "format": "html", "title": "Pipeline report"}}))
        .await;
    let rd = &res["result_data"];
    let n_test = rd["row_count"].as_u64().unwrap();
    assert!(n_test > 0 && n_test < 245, "{rd}");
    let html = reqwest::Client::new()
        .get(
            rig.srv
                .url(&format!("/api/v1/tasks/{export}/artifacts/report.html")),
        )
        .bearer_auth(&rig.key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("<title>Pipeline report</title>"), "{html}");
    assert!(html.contains("class=\"preview\""), "no table");
    assert!(html.contains("<svg"), "no chart");
    assert!(
        html.contains(&format!("{n_test} rows")),
        "row count missing"
    );

    // Refusals at the REST door, nothing stored.
    let (_, before) = call(
        reqwest::Method::GET,
        rig.srv.url("/api/v1/tasks"),
        &rig.key,
        None,
    )
    .await;
    for (body, status, code) in [
        (
            json!({"operation_code": 200, "params": {"input": {"task_id": "0000-nope"}}}),
            422,
            "unknown_input",
        ),
        (
            json!({"operation_code": 200, "params": {"input": {"task_id": "../../etc"}}}),
            422,
            "invalid_params",
        ),
        (
            json!({"operation_code": 200, "params": {"input": {"task_id": fetch}, "dataset": "people"}}),
            422,
            "invalid_params",
        ),
        (
            json!({"operation_code": 200, "runner_id": "someone-else", "params": {"input": {"task_id": fetch}}}),
            422,
            "input_on_other_runner",
        ),
    ] {
        let (st, e) = rig.create(body.clone()).await;
        assert_eq!(st, status, "{body} -> {e}");
        assert_eq!(e["error"]["code"], code, "{body} -> {e}");
    }
    // A failed task has no output to read.
    let (st, t) = rig
        .create(
            json!({"operation_code": 200, "params": {"dataset": "people",
                       "where": {"column": "nope", "op": "eq", "value": 1}}}),
        )
        .await;
    assert_eq!(st, 201);
    let failed = t["task_id"].as_str().unwrap().to_owned();
    let done = wait_status(&rig.srv, &rig.key, &failed, &["completed", "failed"], 30).await;
    assert_eq!(done["status"], "failed");
    let (st, e) = rig
        .create(json!({"operation_code": 200, "params": {"input": {"task_id": failed}}}))
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (409, Some("input_not_ready")),
        "{e}"
    );
    let (_, after) = call(
        reqwest::Method::GET,
        rig.srv.url("/api/v1/tasks"),
        &rig.key,
        None,
    )
    .await;
    assert_eq!(
        after["tasks"].as_array().unwrap().len(),
        before["tasks"].as_array().unwrap().len() + 1,
        "only the failing filter was stored"
    );

    // An output the runner no longer holds fails the task with a typed error, and the runner
    // goes on serving.
    let outputs = rig.dir.join("state");
    let mut removed = 0;
    for entry in walk(&outputs) {
        if entry
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&filter))
        {
            std::fs::remove_file(&entry).unwrap();
            removed += 1;
        }
    }
    assert!(
        removed >= 1,
        "the filter's kept output was under {}",
        outputs.display()
    );
    let (st, t) = rig
        .create(json!({"operation_code": 100, "params": {"input": {"task_id": filter}}}))
        .await;
    assert_eq!(st, 201, "{t}");
    let id = t["task_id"].as_str().unwrap().to_owned();
    let done = wait_status(&rig.srv, &rig.key, &id, &["completed", "failed"], 30).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "input_not_available", "{done}");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains(outputs.to_str().unwrap()),
        "path leaked: {message}"
    );
    rig.run_ok(json!({"operation_code": 100, "params": {"dataset": "people", "limit": 1}}))
        .await;

    rig.finish().await;
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn outputs_survive_a_runner_restart_and_a_runner_without_them_says_so() {
    let Enrolled {
        dir,
        csv,
        srv,
        key,
        token,
        ..
    } = enrolled("restart-outputs").await;
    let start = |config: RunnerConfig| {
        let (stop, stopped) = oneshot::channel::<()>();
        let join = tokio::spawn(dap_runner::run(config, async {
            let _ = stopped.await;
        }));
        (stop, join)
    };
    let create = |body: Value| {
        call(
            reqwest::Method::POST,
            srv.url("/api/v1/tasks"),
            &key,
            Some(body),
        )
    };

    let (stop, join) = start(runner_config(&srv, &token, &csv));
    wait_runner_online(&srv, &key).await;
    let (_, t) = create(
        json!({"operation_code": 200, "params": {"dataset": "people",
        "where": {"column": "id", "op": "lt", "value": 10}}}),
    )
    .await;
    let first = t["task_id"].as_str().unwrap().to_owned();
    let done = wait_status(&srv, &key, &first, &["completed", "failed"], 30).await;
    assert_eq!(done["status"], "completed", "{done}");
    let _ = stop.send(());
    join.await.unwrap().unwrap();

    // Restarted with the same state dir: the output is still there.
    let (stop, join) = start(runner_config(&srv, &token, &csv));
    wait_runner_online(&srv, &key).await;
    let (_, res) = run_ok(
        &srv,
        &key,
        json!({"operation_code": 100, "queue": true, "params": {"input": {"task_id": first}}}),
    )
    .await;
    assert_eq!(res["result_data"]["row_count"], 10, "{res}");
    let _ = stop.send(());
    join.await.unwrap().unwrap();

    // A runner that keeps no outputs reports input_not_available and serves the next task.
    let mut config = runner_config(&srv, &token, &csv);
    config.keep_outputs_bytes = 0;
    let (stop, join) = start(config);
    wait_runner_online(&srv, &key).await;
    let (_, t) = create(json!({"operation_code": 100, "queue": true,
        "params": {"input": {"task_id": first}}}))
    .await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    let done = wait_status(&srv, &key, &id, &["completed", "failed"], 30).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "input_not_available", "{done}");
    let (_, t) =
        create(json!({"operation_code": 100, "params": {"dataset": "people", "limit": 1}})).await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    let done = wait_status(&srv, &key, &id, &["completed", "failed"], 30).await;
    assert_eq!(done["status"], "completed", "{done}");
    let _ = stop.send(());
    join.await.unwrap().unwrap();
    srv.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A CSV of `rows` rows with a string column to scan (about 40 bytes a row).
fn write_big_csv(path: &Path, rows: u64) {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(w, "id,region,label,amount").unwrap();
    for i in 0..rows {
        writeln!(
            w,
            "{i},r{},item number {},{}.25",
            i % 17,
            i % 1000,
            i % 9973
        )
        .unwrap();
    }
    w.flush().unwrap();
}

#[tokio::test]
async fn cancelling_a_long_filter_stops_it_within_a_second_and_frees_the_slot() {
    let rig = rig_with("cancel", |config, dir| {
        let big = dir.join("big.csv");
        write_big_csv(&big, 6_000_000);
        config.slots = 1;
        config.datasets.push(DatasetSpec {
            name: "big".into(),
            path: big,
            format: DatasetFormat::Csv,
            csv: Default::default(),
        });
    })
    .await;
    let runner_id = rig.listed["runner_id"].as_str().unwrap().to_owned();
    let (st, t) = rig
        .create(
            json!({"operation_code": 200, "runner_id": runner_id, "params": {"dataset": "big",
            "where": {"any": [{"column": "label", "op": "contains", "value": "number 99"},
                              {"column": "amount", "op": "gt", "value": 9000}]},
            "sort": [{"column": "amount", "descending": true}]}}),
        )
        .await;
    assert_eq!(st, 201, "{t}");
    let id = t["task_id"].as_str().unwrap().to_owned();
    // Let it get into the scan.
    let running = wait_status(&rig.srv, &rig.key, &id, &["running"], 30).await;
    assert!(running["progress"].as_u64().unwrap() < 100, "{running}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = std::time::Instant::now();
    let (st, c) = call(
        reqwest::Method::POST,
        rig.srv.url(&format!("/api/v1/tasks/{id}/cancel")),
        &rig.key,
        None,
    )
    .await;
    assert!(st == 200 || st == 202, "{st} {c}");
    // The slot is free once the runner has stopped the operation: a targeted task that must
    // not be refused as busy.
    let next = loop {
        let (st, t) = rig
            .create(json!({"operation_code": 100, "runner_id": runner_id,
                           "params": {"dataset": "people", "limit": 1}}))
            .await;
        if st == 201 {
            break t;
        }
        assert_eq!(t["error"]["code"], "runner_busy", "{t}");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "slot still taken after {:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let freed = t0.elapsed();
    let done = wait_status(
        &rig.srv,
        &rig.key,
        &id,
        &["cancelled", "completed", "failed"],
        10,
    )
    .await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(freed < Duration::from_secs(1), "slot freed after {freed:?}");
    eprintln!("cancel → slot free: {freed:?}");
    let next = next["task_id"].as_str().unwrap().to_owned();
    let done = wait_status(&rig.srv, &rig.key, &next, &["completed", "failed"], 30).await;
    assert_eq!(done["status"], "completed", "{done}");
    rig.finish().await;
}

#[tokio::test]
async fn bad_inputs_fail_their_task_with_a_typed_code_and_the_runner_serves_on() {
    let rig = rig("bad-inputs").await;
    // `people`: id, name (text), age (empty on some rows), score.
    let cases = [
        (
            json!({"operation_code": 100, "params": {"dataset": "people", "columns": ["nope"]}}),
            "invalid_params",
            "params.columns",
        ),
        (
            json!({"operation_code": 100, "params": {"dataset": "people", "limit": -1}}),
            "invalid_params",
            "params.limit",
        ),
        (
            json!({"operation_code": 200, "params": {"dataset": "people",
            "where": {"column": "age", "op": "like", "value": 3}}}),
            "invalid_params",
            "params.where.op",
        ),
        (
            json!({"operation_code": 200, "params": {"dataset": "people",
            "where": {"column": "name", "op": "gt", "value": 3}}}),
            "invalid_params",
            "params.where",
        ),
        (
            json!({"operation_code": 200, "params": {"dataset": "people",
            "group_by": {"by": ["name"], "aggregations": [{"column": "score", "fn": "avg"}]}}}),
            "invalid_params",
            "params.group_by.aggregations[0].fn",
        ),
        (
            json!({"operation_code": 300, "params": {"dataset": "people", "model": "linear_regression",
            "features": ["name"], "target": "score"}}),
            "invalid_params",
            "params.features",
        ),
        (
            json!({"operation_code": 300, "params": {"dataset": "people", "model": "linear_regression",
            "features": ["id"]}}),
            "invalid_params",
            "params.target",
        ),
        (
            json!({"operation_code": 300, "params": {"dataset": "people", "model": "linear_regression",
            "features": ["id"], "target": "score", "split_column": "id"}}),
            "invalid_params",
            "params.split_column",
        ),
        (
            json!({"operation_code": 300, "params": {"dataset": "people", "model": "kmeans",
            "features": ["id", "score"], "k": 2000}}),
            "invalid_params",
            "params.k",
        ),
        (
            json!({"operation_code": 400, "params": {"dataset": "people", "format": "xlsx"}}),
            "invalid_params",
            "params.format",
        ),
        (
            json!({"operation_code": 400, "params": {"dataset": "../etc/passwd", "format": "csv"}}),
            "",
            "",
        ),
    ];
    for (body, code, field) in cases {
        let (st, t) = rig.create(body.clone()).await;
        if code.is_empty() {
            // Path-like dataset names are refused at the REST door, nothing stored.
            assert_eq!(st, 422, "{body} -> {t}");
            assert_eq!(t["error"]["code"], "path_not_allowed", "{t}");
            continue;
        }
        assert_eq!(st, 201, "{body} -> {t}");
        let id = t["task_id"].as_str().unwrap().to_owned();
        let done = wait_status(&rig.srv, &rig.key, &id, &["completed", "failed"], 30).await;
        assert_eq!(done["status"], "failed", "{body} -> {done}");
        assert_eq!(done["error"]["code"], code, "{body} -> {done}");
        let message = done["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(field),
            "{body}: message {message:?} should name {field}"
        );
    }
    // Too few rows for a model: a data error, not a panic.
    let (_, t) = rig
        .create(
            json!({"operation_code": 300, "params": {"dataset": "people",
            "where": {"column": "id", "op": "lt", "value": 3},
            "model": "linear_regression", "features": ["id"], "target": "score"}}),
        )
        .await;
    // (op 300 takes no `where`: refused as an unknown parameter.)
    let id = t["task_id"].as_str().unwrap().to_owned();
    let done = wait_status(&rig.srv, &rig.key, &id, &["completed", "failed"], 30).await;
    assert_eq!(done["error"]["code"], "invalid_params", "{done}");
    let (few, _) = rig
        .run_ok(
            json!({"operation_code": 200, "params": {"dataset": "people",
            "where": {"column": "id", "op": "lt", "value": 3}}}),
        )
        .await;
    let (_, t) = rig
        .create(
            json!({"operation_code": 300, "params": {"input": {"task_id": few},
            "model": "linear_regression", "features": ["id"], "target": "score"}}),
        )
        .await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    let done = wait_status(&rig.srv, &rig.key, &id, &["completed", "failed"], 30).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "data_error", "{done}");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too few rows"),
        "{done}"
    );

    // And the runner is still serving.
    let (_, res) = rig
        .run_ok(json!({"operation_code": 100, "params": {"dataset": "people", "limit": 2}}))
        .await;
    assert_eq!(res["result_data"]["rows"].as_array().unwrap().len(), 2);
    rig.finish().await;
}

#[tokio::test]
async fn a_result_finished_while_the_server_was_down_survives_a_runner_crash() {
    let Enrolled {
        dir,
        csv,
        srv,
        key,
        token,
        ..
    } = enrolled("journal").await;
    let big = dir.join("big.csv");
    write_big_csv(&big, 6_000_000);
    let addr = srv.addr;
    let config = {
        let mut c = runner_config(&srv, &token, &csv);
        c.datasets.push(DatasetSpec {
            name: "big".into(),
            path: big.clone(),
            format: DatasetFormat::Csv,
            csv: Default::default(),
        });
        c
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let first_runner = tokio::spawn(dap_runner::run(config.clone(), async {
        let _ = stopped.await;
    }));
    wait_runner_online(&srv, &key).await;

    // A fetch of the last rows reads the whole big file: long enough to take the server away.
    let (st, t) = call(
        reqwest::Method::POST,
        srv.url("/api/v1/tasks"),
        &key,
        Some(json!({"operation_code": 100,
                    "params": {"dataset": "big", "offset": 5_999_998, "limit": 5}})),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    let id = t["task_id"].as_str().unwrap().to_owned();
    wait_status(&srv, &key, &id, &["running"], 30).await;
    srv.shutdown().await;

    // The runner finishes without a server: the result lands in its on-disk outbox.
    let find = || {
        walk(&dir.join("state")).into_iter().find(|p| {
            p.parent().is_some_and(|d| d.ends_with("outbox"))
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{id}.")))
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let journal = loop {
        if let Some(p) = find() {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "no journaled result");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Crash: the runner is gone without a goodbye, its memory with it.
    first_runner.abort();
    let _ = first_runner.await;
    drop(stop);

    // Server back on the same address and data; a new runner process with the same state dir.
    let srv = start_server(&dir.join("srv"), Some(addr)).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let runner = tokio::spawn(dap_runner::run(config, async {
        let _ = stopped.await;
    }));
    let done = wait_status(&srv, &key, &id, &["completed", "failed"], 60).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 1, "kept its lease, never requeued: {done}");
    let (_, res) = call(
        reqwest::Method::GET,
        srv.url(&format!("/api/v1/tasks/{id}/result")),
        &key,
        None,
    )
    .await;
    let rows = res["result_data"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{res}");
    assert_eq!(res["result_data"]["row_count"], 6_000_000);
    // Acknowledged → removed from disk.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while journal.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "journal never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    runner.await.unwrap().unwrap();
    srv.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server serving HTTPS itself (`--tls-cert/--tls-key`) with a self-signed certificate made
/// here: the real runner, trusting it through `ca_cert`, connects over `wss://`, runs a filter
/// and uploads its artifact over `https://`; clients without the CA, or speaking plain HTTP to the
/// TLS port, get nowhere.
#[tokio::test]
async fn runner_over_wss_to_a_tls_server_with_a_self_signed_certificate() {
    let dir = temp_dir("tls");
    let csv = write_csv(&dir);
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_pem, key_pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).unwrap();

    let config = ServeConfig::for_dir(&dir.join("srv"));
    let state = build_state(&config).await.unwrap();
    let tls = dap_server::tls::server_config(&cert_pem, &key_pem).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = dap_server::tls::TlsListener::new(tcp, tls).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let st = state.clone();
    let join = tokio::spawn(async move {
        serve(listener, st, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let base = format!("https://127.0.0.1:{}", addr.port());
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let (_, key) = auth::api_keys::create_api_key(&state.store, "t", Scope::Admin)
        .await
        .unwrap();

    // Without the CA the certificate is refused; plain HTTP on the TLS port gets no answer.
    let e = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{e:?}");
    assert!(reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .is_err());

    let r: Value = https
        .post(format!("{base}/api/v1/runners"))
        .bearer_auth(&key)
        .json(&json!({"name": "tls"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = r["token"].as_str().unwrap().to_owned();
    let rc = RunnerConfig {
        server: base.clone(),
        token,
        name: "tls".into(),
        slots: 1,
        datasets: vec![DatasetSpec {
            name: "people".into(),
            path: csv.clone(),
            format: DatasetFormat::Csv,
            csv: Default::default(),
        }],
        show_progress_bars: false,
        state_dir: Some(dir.join("state")),
        keep_outputs_bytes: 0,
        ca_cert: Some(cert_pem.clone()),
        on_stop: dap_runner::StopMode::Finish,
        drain_timeout: dap_runner::DEFAULT_DRAIN_TIMEOUT,
        reconnect_max_delay: dap_runner::connection::BACKOFF_CAP,
    };
    let (stop_runner, runner_stopped) = oneshot::channel::<()>();
    let runner = tokio::spawn(dap_runner::run(rc, async {
        let _ = runner_stopped.await;
    }));

    let created: Value = https
        .post(format!("{base}/api/v1/tasks"))
        .bearer_auth(&key)
        .json(&json!({"operation_code": 200, "queue": true, "params": {
            "dataset": "people",
            "where": {"column": "age", "op": "ge", "value": 40},
        }}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["task_id"].as_str().expect("created").to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let task = loop {
        let t: Value = https
            .get(format!("{base}/api/v1/tasks/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if t["status"] == "completed" || t["status"] == "failed" {
            break t;
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(task["status"], "completed", "{task}");
    // The artifact went up over https:// and comes back intact.
    let res: Value = https
        .get(format!("{base}/api/v1/tasks/{id}/result"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a = &res["artifacts"][0];
    assert_eq!(a["name"], "output.csv", "{res}");
    let body = https
        .get(format!("{base}/api/v1/tasks/{id}/artifacts/output.csv"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(a["size"], body.len());
    assert!(body.starts_with(b"id,name,age,score\n"));

    let _ = stop_runner.send(());
    let r = tokio::time::timeout(Duration::from_secs(10), runner)
        .await
        .expect("the runner stops when asked")
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), join).await;
    state.store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// One CSV big enough that a filter over it runs for seconds, written once per test process.
fn shared_big_csv() -> PathBuf {
    static BIG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIG.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("dap-e2e-big-{}.csv", std::process::id()));
        write_big_csv(&p, 4_000_000);
        p
    })
    .clone()
}

/// A filter over [`shared_big_csv`] (declared as `big`) that takes seconds.
fn long_filter(runner_id: Option<&str>) -> Value {
    let mut body = json!({"operation_code": 200, "params": {"dataset": "big",
        "where": {"any": [{"column": "label", "op": "contains", "value": "number 99"},
                          {"column": "amount", "op": "gt", "value": 9000}]},
        "sort": [{"column": "amount", "descending": true}]}});
    if let Some(r) = runner_id {
        body["runner_id"] = json!(r);
    }
    body
}

/// The real `dap-runner` binary as a child process (killed on drop), logging to a file.
struct RunnerProcess {
    child: std::process::Child,
    log: PathBuf,
}

impl RunnerProcess {
    fn start(srv: &Server, token: &str, dir: &Path, name: &str, extra: &[&str]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dap-runner"));
        for (k, _) in std::env::vars() {
            if k.starts_with("DAP_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["--server", &srv.url(""), "--token", token, "--name", name])
            .args(["--slots", "1", "--no-progress"])
            .arg("--state-dir")
            .arg(dir.join(format!("state-{name}")))
            .arg("--dataset")
            .arg(format!("big={}", shared_big_csv().display()))
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Self {
            child: cmd.spawn().expect("start dap-runner"),
            log,
        }
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits for the process to exit; its exit code.
    async fn exited_within(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "dap-runner still running after {limit:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn runner_state(srv: &Server, key: &str, runner_id: &str) -> String {
    let (_, v) = call(reqwest::Method::GET, srv.url("/api/v1/runners"), key, None).await;
    v["runners"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["runner_id"] == runner_id))
        .map(|r| r["state"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

async fn wait_runner_state(srv: &Server, key: &str, runner_id: &str, want: &str, secs: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let state = runner_state(srv, key, runner_id).await;
        if state == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "runner {runner_id} is {state:?}, not {want:?}, after {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Enrols a runner through the REST API: its id and credential.
async fn enrol_runner(srv: &Server, key: &str, name: &str) -> (String, String) {
    let (st, r) = call(
        reqwest::Method::POST,
        srv.url("/api/v1/runners"),
        key,
        Some(json!({ "name": name })),
    )
    .await;
    assert_eq!(st, 201, "{r}");
    (
        r["runner_id"].as_str().unwrap().to_owned(),
        r["token"].as_str().unwrap().to_owned(),
    )
}

/// POSTs a task, asserts the 201 and returns its id.
async fn create_task(srv: &Server, key: &str, body: Value) -> String {
    let (st, t) = call(
        reqwest::Method::POST,
        srv.url("/api/v1/tasks"),
        key,
        Some(body),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    t["task_id"].as_str().unwrap().to_owned()
}

async fn get_task(srv: &Server, key: &str, id: &str) -> Value {
    call(
        reqwest::Method::GET,
        srv.url(&format!("/api/v1/tasks/{id}")),
        key,
        None,
    )
    .await
    .1
}

#[tokio::test]
async fn sigterm_drains_the_runner_binary_which_finishes_its_task_then_exits() {
    let Enrolled {
        dir,
        srv,
        key,
        token,
        runner_id,
        ..
    } = enrolled("drain-finish").await;
    let mut runner = RunnerProcess::start(&srv, &token, &dir, "finisher", &["--on-stop", "finish"]);
    wait_runner_state(&srv, &key, &runner_id, "idle", 60).await;

    let id = create_task(&srv, &key, long_filter(Some(&runner_id))).await;
    wait_status(&srv, &key, &id, &["running"], 30).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t0 = std::time::Instant::now();
    runner.signal("TERM");
    wait_runner_state(&srv, &key, &runner_id, "draining", 5).await;
    let draining_after = t0.elapsed();
    // Nothing new goes to a draining runner; the refusal says why and names what runs there.
    let (st, refused) = call(
        reqwest::Method::POST,
        srv.url("/api/v1/tasks"),
        &key,
        Some(json!({"operation_code": 100, "runner_id": runner_id,
                    "params": {"dataset": "big", "limit": 1}})),
    )
    .await;
    let task = get_task(&srv, &key, &id).await;
    if task["status"] == "running" {
        assert_eq!(st, 409, "{refused}");
        assert_eq!(refused["error"]["code"], "runner_draining", "{refused}");
        assert_eq!(refused["error"]["running_tasks"], json!([id]), "{refused}");
    } else {
        // The task already finished and the runner is on its way out.
        assert!(st == 409, "{st} {refused}");
    }

    let done = wait_status(&srv, &key, &id, &["completed", "failed", "queued"], 60).await;
    assert_eq!(done["status"], "completed", "{done}\n{}", runner.log_text());
    assert_eq!(done["attempt"], 1, "finished by the same attempt: {done}");
    let code = runner.exited_within(Duration::from_secs(20)).await;
    let exited_after = t0.elapsed();
    assert_eq!(code, Some(0), "{}", runner.log_text());
    wait_runner_state(&srv, &key, &runner_id, "offline", 5).await;
    eprintln!(
        "drain (finish): draining visible after {draining_after:?}, task finished and runner exited after {exited_after:?}"
    );
    let (_, res) = call(
        reqwest::Method::GET,
        srv.url(&format!("/api/v1/tasks/{id}/result")),
        &key,
        None,
    )
    .await;
    assert!(
        res["result_data"]["row_count"].as_u64().unwrap() > 0,
        "{res}"
    );
    srv.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sigterm_with_hand_back_requeues_at_once_to_another_runner() {
    let Enrolled {
        dir,
        srv,
        key,
        token,
        runner_id,
        ..
    } = enrolled("drain-handback").await;
    let mut leaving =
        RunnerProcess::start(&srv, &token, &dir, "leaving", &["--on-stop", "hand-back"]);
    wait_runner_state(&srv, &key, &runner_id, "idle", 60).await;
    let id = create_task(&srv, &key, long_filter(None)).await;
    let running = wait_status(&srv, &key, &id, &["running"], 30).await;
    assert_eq!(running["runner_id"], runner_id.as_str(), "{running}");

    // A second runner comes online with the same dataset.
    let (other_id, other_token) = enrol_runner(&srv, &key, "staying").await;
    let mut staying = RunnerProcess::start(&srv, &other_token, &dir, "staying", &[]);
    wait_runner_state(&srv, &key, &other_id, "idle", 60).await;

    let t0 = std::time::Instant::now();
    leaving.signal("TERM");
    // Requeued and pushed to the other runner without waiting out the 30 s grace period.
    let moved = loop {
        let t = get_task(&srv, &key, &id).await;
        if t["attempt"] == 2 && t["runner_id"] == other_id.as_str() {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not handed over: {t}\n{}",
            leaving.log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let code = leaving.exited_within(Duration::from_secs(10)).await;
    let exited = t0.elapsed();
    assert_eq!(code, Some(0), "{}", leaving.log_text());
    let done = wait_status(&srv, &key, &id, &["completed", "failed"], 60).await;
    assert_eq!(
        done["status"],
        "completed",
        "{done}\n{}",
        staying.log_text()
    );
    assert_eq!(done["attempt"], 2, "{done}");
    assert_eq!(done["runner_id"], other_id.as_str(), "{done}");
    assert!(
        moved < Duration::from_secs(3),
        "hand back took {moved:?} (grace is 30 s)"
    );
    eprintln!("hand back: task on the other runner after {moved:?}; leaving runner exited after {exited:?}");
    staying.signal("TERM");
    assert_eq!(
        staying.exited_within(Duration::from_secs(10)).await,
        Some(0)
    );
    srv.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_second_sigterm_hands_back_what_is_still_running() {
    let Enrolled {
        dir,
        srv,
        key,
        token,
        runner_id,
        ..
    } = enrolled("drain-twice").await;
    let mut runner = RunnerProcess::start(&srv, &token, &dir, "twice", &[]);
    wait_runner_state(&srv, &key, &runner_id, "idle", 60).await;
    let id = create_task(&srv, &key, long_filter(Some(&runner_id))).await;
    wait_status(&srv, &key, &id, &["running"], 30).await;
    runner.signal("TERM");
    wait_runner_state(&srv, &key, &runner_id, "draining", 5).await;
    let t0 = std::time::Instant::now();
    runner.signal("TERM");
    let code = runner.exited_within(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "{}", runner.log_text());
    // Handed back: waiting for its (targeted) runner again, at the next attempt, not failed.
    let t = get_task(&srv, &key, &id).await;
    if t["status"] != "completed" {
        assert_eq!(t["status"], "queued", "{t}\n{}", runner.log_text());
        assert_eq!(t["attempt"], 1, "{t}");
    }
    eprintln!("second SIGTERM → runner exited after {:?}", t0.elapsed());
    srv.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server with a short heartbeat and the given grace period, for the fault tests.
async fn start_server_tuned(dir: &Path, grace: Duration) -> Server {
    start_server_with(dir, None, |config| {
        config.heartbeat = Duration::from_millis(300);
        config.runner_grace = grace;
    })
    .await
}

async fn task_events(srv: &Server, key: &str, id: &str) -> Vec<Value> {
    let (_, h) = call(
        reqwest::Method::GET,
        srv.url(&format!("/api/v1/tasks/{id}/events")),
        key,
        None,
    )
    .await;
    h["events"].as_array().unwrap().clone()
}

/// The real runner (in-process) reaching the server through a fault proxy, with `big` declared.
fn runner_via(
    proxy: &fault_proxy::FaultProxy,
    token: &str,
    dir: &Path,
    name: &str,
) -> RunnerConfig {
    let mut c = RunnerConfig {
        server: format!("http://{}", proxy.addr),
        token: token.to_owned(),
        name: name.to_owned(),
        slots: 1,
        datasets: vec![DatasetSpec {
            name: "big".into(),
            path: shared_big_csv(),
            format: DatasetFormat::Csv,
            csv: Default::default(),
        }],
        show_progress_bars: false,
        state_dir: Some(dir.join(format!("state-{name}"))),
        keep_outputs_bytes: 0,
        ca_cert: None,
        on_stop: dap_runner::StopMode::HandBack,
        drain_timeout: dap_runner::DEFAULT_DRAIN_TIMEOUT,
        reconnect_max_delay: Duration::from_millis(500),
    };
    c.name = name.to_owned();
    c
}

#[tokio::test]
async fn real_runner_cut_off_mid_task_within_grace_resumes_and_completes_once() {
    let dir = temp_dir("fault-cut");
    let srv = start_server_tuned(&dir.join("srv"), Duration::from_secs(20)).await;
    let (_, key) = auth::api_keys::create_api_key(&srv.state.store, "t", Scope::Admin)
        .await
        .unwrap();
    let (runner_id, token) = enrol_runner(&srv, &key, "flaky").await;
    let proxy = fault_proxy::FaultProxy::start(srv.addr).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let runner = tokio::spawn(dap_runner::run(
        runner_via(&proxy, &token, &dir, "flaky"),
        async {
            let _ = stopped.await;
        },
    ));
    wait_runner_state(&srv, &key, &runner_id, "idle", 60).await;

    let id = create_task(&srv, &key, long_filter(None)).await;
    wait_status(&srv, &key, &id, &["running"], 30).await;

    // The link is cut mid-task and stays down for a while; the task keeps running locally.
    proxy.set(fault_proxy::CUT);
    wait_runner_state(&srv, &key, &runner_id, "offline", 5).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.set(fault_proxy::PASS);
    let t0 = std::time::Instant::now();
    wait_runner_state(&srv, &key, &runner_id, "busy", 15).await;
    let back = t0.elapsed();

    let done = wait_status(&srv, &key, &id, &["completed", "failed", "queued"], 60).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 1, "resumed, not requeued: {done}");
    let events = task_events(&srv, &key, &id).await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "task.completed").count(),
        1,
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"task.requeued"), "{kinds:?}");
    let percents: Vec<u64> = events
        .iter()
        .filter_map(|e| e["progress"].as_u64())
        .collect();
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "progress went down: {percents:?}"
    );
    assert_eq!(percents.last(), Some(&100), "{percents:?}");
    eprintln!("real runner, cut mid-task: back and resumed {back:?} after the link returned");

    let _ = stop.send(());
    assert!(runner.await.unwrap().is_ok());
    srv.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn real_runner_cut_off_past_grace_loses_its_task_to_another_which_completes_it_once() {
    let dir = temp_dir("fault-grace");
    let srv = start_server_tuned(&dir.join("srv"), Duration::from_millis(800)).await;
    let (_, key) = auth::api_keys::create_api_key(&srv.state.store, "t", Scope::Admin)
        .await
        .unwrap();
    let enrol = [
        enrol_runner(&srv, &key, "cut-off").await,
        enrol_runner(&srv, &key, "steady").await,
    ];
    let cut_proxy = fault_proxy::FaultProxy::start(srv.addr).await;
    let steady_proxy = fault_proxy::FaultProxy::start(srv.addr).await;
    let (stop_a, stopped_a) = oneshot::channel::<()>();
    let a = tokio::spawn(dap_runner::run(
        runner_via(&cut_proxy, &enrol[0].1, &dir, "cut-off"),
        async {
            let _ = stopped_a.await;
        },
    ));
    wait_runner_state(&srv, &key, &enrol[0].0, "idle", 60).await;
    let id = create_task(&srv, &key, long_filter(None)).await;
    let running = wait_status(&srv, &key, &id, &["running"], 30).await;
    assert_eq!(running["runner_id"], enrol[0].0.as_str());

    let (stop_b, stopped_b) = oneshot::channel::<()>();
    let b = tokio::spawn(dap_runner::run(
        runner_via(&steady_proxy, &enrol[1].1, &dir, "steady"),
        async {
            let _ = stopped_b.await;
        },
    ));
    wait_runner_state(&srv, &key, &enrol[1].0, "idle", 60).await;

    // Cut for longer than the 800 ms grace period: the task moves to the other runner.
    let t0 = std::time::Instant::now();
    cut_proxy.set(fault_proxy::CUT);
    let moved = loop {
        let t = get_task(&srv, &key, &id).await;
        if t["attempt"] == 2 && t["runner_id"] == enrol[1].0.as_str() {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "not requeued: {t}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The first runner comes back still running attempt 1: the server tells it to stop.
    cut_proxy.set(fault_proxy::PASS);
    let done = wait_status(&srv, &key, &id, &["completed", "failed"], 60).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 2, "{done}");
    assert_eq!(done["runner_id"], enrol[1].0.as_str(), "{done}");
    wait_runner_state(&srv, &key, &enrol[0].0, "idle", 20).await;
    // Give a late result of attempt 1 every chance to arrive: it must change nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = task_events(&srv, &key, &id).await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "task.completed").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(get_task(&srv, &key, &id).await["attempt"], 2);
    eprintln!(
        "real runner, cut past grace (800 ms): task running on the other runner after {moved:?}"
    );

    let _ = stop_a.send(());
    let _ = stop_b.send(());
    assert!(a.await.unwrap().is_ok());
    assert!(b.await.unwrap().is_ok());
    srv.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn kill_9_of_the_runner_binary_mid_task_requeues_it_to_another_runner_after_the_grace_period()
{
    let dir = temp_dir("kill-runner");
    let grace = Duration::from_secs(2);
    let srv = start_server_tuned(&dir.join("srv"), grace).await;
    let (_, key) = auth::api_keys::create_api_key(&srv.state.store, "t", Scope::Admin)
        .await
        .unwrap();
    let enrol = [
        enrol_runner(&srv, &key, "doomed").await,
        enrol_runner(&srv, &key, "survivor").await,
    ];
    let doomed = RunnerProcess::start(&srv, &enrol[0].1, &dir, "doomed", &[]);
    wait_runner_state(&srv, &key, &enrol[0].0, "idle", 60).await;
    let id = create_task(&srv, &key, long_filter(None)).await;
    let running = wait_status(&srv, &key, &id, &["running"], 30).await;
    assert_eq!(running["runner_id"], enrol[0].0.as_str());
    let survivor = RunnerProcess::start(&srv, &enrol[1].1, &dir, "survivor", &[]);
    wait_runner_state(&srv, &key, &enrol[1].0, "idle", 60).await;

    let t0 = std::time::Instant::now();
    doomed.signal("KILL");
    let moved = loop {
        let t = get_task(&srv, &key, &id).await;
        if t["attempt"] == 2 && t["runner_id"] == enrol[1].0.as_str() {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "not requeued: {t}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let done = wait_status(&srv, &key, &id, &["completed", "failed"], 60).await;
    assert_eq!(
        done["status"],
        "completed",
        "{done}\n{}",
        survivor.log_text()
    );
    assert_eq!(done["attempt"], 2, "{done}");
    assert!(
        moved >= grace && moved < grace + Duration::from_secs(3),
        "requeued {moved:?} after kill -9 (grace {grace:?})"
    );
    eprintln!(
        "kill -9 of a runner mid-task: on the other runner after {moved:?} (grace {grace:?})"
    );
    drop(doomed);
    drop(survivor);
    srv.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_draining_runner_whose_server_is_gone_hands_back_after_a_bound_and_resends_it_later() {
    let Enrolled {
        dir,
        srv,
        key,
        token,
        runner_id,
        ..
    } = enrolled("drain-offline").await;
    let addr = srv.addr;
    let mut runner = RunnerProcess::start(&srv, &token, &dir, "orphan", &["--on-stop", "finish"]);
    wait_runner_state(&srv, &key, &runner_id, "idle", 60).await;
    let (st, t) = call(
        reqwest::Method::POST,
        srv.url("/api/v1/tasks"),
        &key,
        // A long read with no artifacts (an upload would need the server too).
        Some(json!({"operation_code": 100, "runner_id": runner_id,
                    "params": {"dataset": "big", "offset": 3_999_990, "limit": 5}})),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    let id = t["task_id"].as_str().unwrap().to_owned();
    wait_status(&srv, &key, &id, &["running"], 30).await;

    // The server goes away first, then the runner is asked to stop: it cannot deliver a
    // result to nobody, so it does not wait out the 300 s drain timeout.
    srv.shutdown().await;
    let t0 = std::time::Instant::now();
    runner.signal("TERM");
    let code = runner
        .exited_within(dap_runner::stopping::OFFLINE_WHILE_DRAINING + Duration::from_secs(10))
        .await;
    let took = t0.elapsed();
    assert_eq!(code, Some(0), "{}", runner.log_text());
    eprintln!("draining runner with its server gone exited after {took:?}");
    let journaled = walk(&dir.join("state-orphan"))
        .into_iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("outbox")))
        .count();
    // What the server has not heard waits on disk: the result, if the read finished before the
    // bound, or else the hand-back.
    assert_eq!(journaled, 1, "{}", runner.log_text());
    let handed_back = runner.log_text().contains("handing back");
    let srv = start_server(&dir.join("srv"), Some(addr)).await;
    assert_eq!(get_task(&srv, &key, &id).await["status"], "running");
    // The same runner starts again and sends it first: a result completes attempt 1; a
    // hand-back requeues the task at once (not after the 30 s grace period) and it comes back
    // to this runner as attempt 2.
    let t1 = std::time::Instant::now();
    let _again = RunnerProcess::start(&srv, &token, &dir, "orphan", &[]);
    let done = wait_status(&srv, &key, &id, &["completed", "failed"], 60).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], if handed_back { 2 } else { 1 }, "{done}");
    assert!(t1.elapsed() < Duration::from_secs(25), "{:?}", t1.elapsed());
    srv.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
