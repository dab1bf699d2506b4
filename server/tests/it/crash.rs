//! Crash safety with the real binary: `kill -9` after a 201 loses nothing, and tasks left
//! assigned by the dead process are dispatched again when a runner reconnects.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_dap-server");

/// A `dap-server` child process, SIGKILLed when dropped so a failing test leaks no server.
struct ServerProc(Child);

impl ServerProc {
    /// `kill -9` and reap.
    fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }
    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `dap-server serve` on port 0 and returns the child and its address.
fn start(dir: &Path) -> (ServerProc, std::net::SocketAddr) {
    start_with_env(dir, &[])
}

fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> (ServerProc, std::net::SocketAddr) {
    let mut child = ServerProc(
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .envs(env.iter().copied())
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
                    let addr = addr.split_whitespace().next().unwrap().to_owned();
                    let _ = tx.send(addr);
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

fn cli(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
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

/// Enrols a runner through the REST API of the server at `base`; its credential.
async fn enrol(base: &str, key: &str, name: &str) -> String {
    let (st, v) = call(
        reqwest::Method::POST,
        format!("{base}/api/v1/runners"),
        key,
        Some(json!({ "name": name })),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn kill_9_after_201_then_restart_keeps_and_dispatches_tasks() {
    let dir = temp_dir("crash");
    let key = cli(
        &dir,
        &["apikey", "create", "--name", "ci", "--scope", "admin"],
    );
    assert!(
        key.starts_with("dap_") && !key.contains('\n'),
        "key alone on stdout"
    );

    let (mut child, addr) = start(&dir);
    let base = format!("http://{addr}");
    let cred = enrol(&base, &key, "r").await;
    let mut runner = ProtoRunner::connect(addr, &cred, 1, &[]).await;

    let (st, a) = call(
        reqwest::Method::POST,
        format!("{base}/api/v1/tasks"),
        &key,
        Some(json!({"operation_code": 1})),
    )
    .await;
    assert_eq!((st, a["status"].as_str()), (201, Some("assigned")));
    let held = runner.next_assignment(5).await;
    let (st, b) = call(
        reqwest::Method::POST,
        format!("{base}/api/v1/tasks"),
        &key,
        Some(json!({"operation_code": 1})),
    )
    .await;
    assert_eq!((st, b["status"].as_str()), (201, Some("queued")));

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(runner);

    let (mut child, addr) = start(&dir);
    let base = format!("http://{addr}");
    // The assigned task is kept for its runner's grace period; the queued one is still queued.
    for (t, status) in [(&a, "assigned"), (&b, "queued")] {
        let id = t["task_id"].as_str().unwrap();
        let (st, v) = call(
            reqwest::Method::GET,
            format!("{base}/api/v1/tasks/{id}"),
            &key,
            None,
        )
        .await;
        assert_eq!(st, 200, "task {id} survived the crash");
        assert_eq!(v["status"], status);
    }
    // The runner comes back without the task (it was lost with the old connection), so it is
    // requeued at once and pushed again as attempt 2.
    let mut runner = ProtoRunner::connect(addr, &cred, 1, &[]).await;
    let first = runner.next_assignment(5).await;
    assert_eq!(first.task_id, held.task_id);
    assert_eq!(
        first.attempt, 2,
        "a new attempt fences the one the dead server handed out"
    );
    runner.complete(&first, json!({"n": 1})).await;
    let second = runner.next_assignment(5).await;
    assert_eq!(second.task_id, b["task_id"].as_str().unwrap());
    runner.complete(&second, json!({"n": 2})).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, v) = call(
            reqwest::Method::GET,
            format!("{base}/api/v1/tasks?status=completed"),
            &key,
            None,
        )
        .await;
        if v["total"] == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn kill_9_right_after_completion_still_delivers_the_webhook_after_restart() {
    use crate::webhooks::Receiver;
    let dir = temp_dir("crash-hook");
    let key = cli(
        &dir,
        &["apikey", "create", "--name", "ci", "--scope", "admin"],
    );
    let env = [
        ("DAP_WEBHOOK_ALLOW_PRIVATE", "true"),
        ("DAP_WEBHOOK_RETRY_SCALE", "0.05"),
    ];
    // The receiver's port is chosen now but nothing listens there until after the crash, so
    // the delivery cannot have happened before the kill.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let hook_url = format!("http://127.0.0.1:{port}/hook");

    let (mut child, addr) = start_with_env(&dir, &env);
    let base = format!("http://{addr}");
    let (st, hook) = call(
        reqwest::Method::POST,
        format!("{base}/api/v1/webhooks"),
        &key,
        Some(json!({"url": hook_url, "events": ["task.completed"]})),
    )
    .await;
    assert_eq!(st, 201, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_owned();
    let cred = enrol(&base, &key, "r").await;
    let mut runner = ProtoRunner::connect(addr, &cred, 1, &[]).await;
    let (_, t) = call(
        reqwest::Method::POST,
        format!("{base}/api/v1/tasks"),
        &key,
        Some(json!({"operation_code": 1})),
    )
    .await;
    let task_id = t["task_id"].as_str().unwrap().to_owned();
    let a = runner.next_assignment(5).await;
    runner.complete(&a, json!({"row_count": 1})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, v) = call(
            reqwest::Method::GET,
            format!("{base}/api/v1/tasks/{task_id}"),
            &key,
            None,
        )
        .await;
        if v["status"] == "completed" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(runner);

    let (recv, _) = Receiver::start_on(Receiver::default(), &format!("127.0.0.1:{port}")).await;
    let (mut child, _addr) = start_with_env(&dir, &env);
    recv.wait_for(1, 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = recv.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "delivered exactly once after the restart");
    let wh = standardwebhooks::Webhook::new(&secret).unwrap();
    wh.verify(got[0].1.as_bytes(), &got[0].0).unwrap();
    let body: Value = serde_json::from_str(&got[0].1).unwrap();
    assert_eq!(body["data"]["task_id"], task_id.as_str());
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sigterm_closes_runner_sockets_with_1001_exits_cleanly_and_the_runner_resumes_after() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let dir = temp_dir("sigterm");
    let key = cli(
        &dir,
        &["apikey", "create", "--name", "ci", "--scope", "admin"],
    );
    // No heartbeat pings during the test. These sockets are only read after the SIGTERM: a
    // ping waiting unread makes tungstenite write its pong before reading the close frame, and
    // on a machine so loaded that this test is not scheduled for the server's 3 s close drain,
    // that write met a closed socket (broken pipe) and hid the close frame behind the error.
    let (mut child, addr) = start_with_env(&dir, &[("DAP_HEARTBEAT_MS", "600000")]);
    let base = format!("http://{addr}");
    let cred = enrol(&base, &key, "r").await;
    let mut runner = ProtoRunner::connect(addr, &cred, 1, &[]).await;
    let (st, t) = call(
        reqwest::Method::POST,
        format!("{base}/api/v1/tasks"),
        &key,
        Some(json!({"operation_code": 1})),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    let a = runner.next_assignment(5).await;
    runner.progress(&a, 50, "half way").await;
    // More idle runners: every one of them must get its close frame before the process exits
    // (without waiting for the sockets, some saw a reset instead).
    let mut idle = Vec::new();
    for i in 0..16 {
        let cred = enrol(&base, &key, &format!("idle-{i}")).await;
        idle.push(ProtoRunner::connect(addr, &cred, 1, &[]).await);
    }

    let t0 = std::time::Instant::now();
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // The runner is told to go elsewhere (1001), not just dropped.
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), runner.ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => break u16::from(frame.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, dap_protocol::close_code::GOING_AWAY);
    drop(runner);
    for mut r in idle {
        let code = loop {
            match tokio::time::timeout(Duration::from_secs(10), r.ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(frame))))) => break u16::from(frame.code),
                Ok(Some(Ok(_))) => continue,
                other => panic!("an idle runner got no close frame: {other:?}"),
            }
        };
        assert_eq!(code, dap_protocol::close_code::GOING_AWAY);
    }
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "server still up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    eprintln!(
        "SIGTERM → runners told 1001 and the process exited in {:?}",
        t0.elapsed()
    );
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(addr).is_err());

    // Back up: the runner resumes its task (same attempt, progress kept) and finishes it.
    let (mut child, addr) = start(&dir);
    let mut runner = ProtoRunner::connect_with(
        addr,
        &cred,
        1,
        &[],
        vec![dap_protocol::RunningTask {
            task_id: a.task_id.clone(),
            attempt: a.attempt,
        }],
    )
    .await;
    assert!(runner.next(0).await.is_none(), "nothing to cancel or redo");
    runner.complete(&a, json!({"ok": true})).await;
    runner.wait_ack(&a.task_id, 1, 5).await;
    let (_, t) = call(
        reqwest::Method::GET,
        format!("http://{addr}/api/v1/tasks/{}", a.task_id),
        &key,
        None,
    )
    .await;
    assert_eq!(
        (t["status"].as_str(), t["attempt"].as_u64()),
        (Some("completed"), Some(1)),
        "{t}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
