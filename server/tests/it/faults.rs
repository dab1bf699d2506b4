//! Network faults between a runner and the server, injected by a small TCP proxy of our own:
//! a black-holed (half-open) link is detected within the heartbeat budget, and a link cut for
//! longer than the grace period moves the task to another runner while the late result of the
//! first one is refused.

use std::time::{Duration, Instant};

use dap_protocol::{RunningTask, ServerMessage};
use serde_json::json;

use crate::common::{ProtoRunner, TestServer};
use crate::fault_proxy::{FaultProxy, BLACK_HOLE, CUT, PASS};

async fn runner_state(srv: &TestServer, runner_id: &str) -> String {
    let (_, v) = srv
        .get(&format!("/api/v1/runners/{runner_id}"), &srv.read_key)
        .await;
    v["state"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_black_holed_runner_link_is_detected_within_ten_seconds() {
    // The default heartbeat (3 s): a silent link is declared dead after three of them.
    let srv = TestServer::start().await;
    let proxy = FaultProxy::start(srv.addr).await;
    let (runner_id, cred) = srv.enrol("behind-nat").await;
    let mut r = ProtoRunner::connect(proxy.addr, &cred, 1, &[]).await;
    let (_, v) = srv.create_task(json!({"operation_code": 1})).await;
    let id = v["task_id"].as_str().unwrap().to_owned();
    let a = r.next_assignment(5).await;
    r.progress(&a, 10, "working").await;
    srv.wait_status(&id, "running", 5).await;
    assert_ne!(runner_state(&srv, &runner_id).await, "offline");

    // Half-open: both TCP connections stay up, nothing gets through any more.
    proxy.set(BLACK_HOLE);
    let t0 = Instant::now();
    // Keep the runner's side reading (it would answer pings; they are dropped).
    let reader = tokio::spawn(async move {
        let _ = r.next(30).await;
        r
    });
    loop {
        if runner_state(&srv, &runner_id).await == "offline" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "black hole not detected after {:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let detected = t0.elapsed();
    eprintln!("black-holed runner link detected after {detected:?}");
    // The task is not lost: it waits out the grace period under its lease.
    let t = srv.task(&id).await;
    assert_eq!(t["status"], "running", "{t}");
    reader.abort();
}

#[tokio::test]
async fn a_cut_longer_than_the_grace_period_moves_the_task_and_refuses_the_late_result() {
    // A cut closes the link at once, so no short heartbeat is needed to notice it; a long one
    // keeps the protocol-level runner (which answers pings only while read) from being dropped
    // as silent before the cut on a loaded machine, which would start its grace period early.
    let srv = TestServer::start_with(|c| {
        c.heartbeat = Duration::from_secs(3);
        c.runner_grace = Duration::from_millis(800);
    })
    .await;
    let proxy = FaultProxy::start(srv.addr).await;
    let (_, cred_a) = srv.enrol("a").await;
    let (_, cred_b) = srv.enrol("b").await;
    let mut ra = ProtoRunner::connect(proxy.addr, &cred_a, 1, &[]).await;
    let (_, v) = srv.create_task(json!({"operation_code": 1})).await;
    let id = v["task_id"].as_str().unwrap().to_owned();
    let a1 = ra.next_assignment(5).await;
    ra.progress(&a1, 40, "working").await;
    srv.wait_status(&id, "running", 5).await;
    let mut rb = ProtoRunner::connect(srv.addr, &cred_b, 1, &[]).await;

    proxy.set(CUT);
    let t0 = Instant::now();
    let b2 = rb.next_assignment(10).await;
    let requeued = t0.elapsed();
    eprintln!("cut → requeued to another runner after {requeued:?} (grace 800 ms)");
    assert_eq!((b2.task_id.as_str(), b2.attempt), (id.as_str(), 2));
    assert!(requeued >= Duration::from_millis(800), "{requeued:?}");
    rb.complete(&b2, json!({"from": "b"})).await;
    srv.wait_status(&id, "completed", 5).await;

    // The link heals; a comes back still listing attempt 1 and sends its late result.
    proxy.set(PASS);
    let mut ra = ProtoRunner::connect_with(
        proxy.addr,
        &cred_a,
        1,
        &[],
        vec![RunningTask {
            task_id: id.clone(),
            attempt: 1,
        }],
    )
    .await;
    match ra.next(5).await {
        Some(ServerMessage::Cancel { task_id, attempt }) => {
            assert_eq!((task_id.as_str(), attempt), (id.as_str(), 1));
        }
        other => panic!("expected a cancel of the superseded attempt, got {other:?}"),
    }
    ra.complete(&a1, json!({"from": "a"})).await;
    ra.wait_ack(&id, 1, 5).await;
    let (_, res) = srv.result(&id).await;
    assert_eq!(
        res["result_data"]["from"], "b",
        "the late result was refused"
    );
    let t = srv.task(&id).await;
    assert_eq!(
        (t["status"].as_str(), t["attempt"].as_u64()),
        (Some("completed"), Some(2))
    );
}

#[tokio::test]
async fn a_cut_mid_task_within_the_grace_period_resumes_and_completes_once() {
    let srv = TestServer::start_with(|c| {
        c.heartbeat = Duration::from_millis(300);
        c.runner_grace = Duration::from_secs(10);
    })
    .await;
    let proxy = FaultProxy::start(srv.addr).await;
    let (runner_id, cred) = srv.enrol("flaky-wifi").await;
    let mut r = ProtoRunner::connect(proxy.addr, &cred, 1, &[]).await;
    let (_, v) = srv.create_task(json!({"operation_code": 1})).await;
    let id = v["task_id"].as_str().unwrap().to_owned();
    let a = r.next_assignment(5).await;
    r.progress(&a, 30, "working").await;
    srv.wait_status(&id, "running", 5).await;

    proxy.set(CUT);
    let t0 = Instant::now();
    while runner_state(&srv, &runner_id).await != "offline" {
        assert!(t0.elapsed() < Duration::from_secs(10), "cut not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(r);
    proxy.set(PASS);
    // Back within the grace period, listing the task: same attempt, nothing cancelled.
    let mut r = ProtoRunner::connect_with(
        proxy.addr,
        &cred,
        1,
        &[],
        vec![RunningTask {
            task_id: id.clone(),
            attempt: 1,
        }],
    )
    .await;
    assert!(r.next(0).await.is_none(), "nothing to stop or redo");
    r.progress(&a, 70, "working").await;
    r.complete(&a, json!({"done": true})).await;
    r.wait_ack(&id, 1, 5).await;
    let t = srv.wait_status(&id, "completed", 5).await;
    assert_eq!(t["attempt"], 1, "{t}");

    let (_, h) = srv
        .get(&format!("/api/v1/tasks/{id}/events"), &srv.read_key)
        .await;
    let events = h["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "task.completed").count(),
        1,
        "{kinds:?}"
    );
    let percents: Vec<u64> = events
        .iter()
        .filter_map(|e| e["progress"].as_u64())
        .collect();
    assert_eq!(percents, [0, 0, 30, 70, 100], "{h}");
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "progress went down: {percents:?}"
    );
}
