//! A runner that vanishes keeps its tasks for a grace period: back in time, it resumes them
//! (same attempt, progress continuing); too late, they are requeued to another runner (attempt
//! + 1) and its late results are refused; lost too often, the task fails with `runner_lost`.

use std::time::Duration;

use dap_protocol::{RunningTask, ServerMessage};
use serde_json::json;

use crate::common::*;

fn running(a: &dap_protocol::Assignment) -> Vec<RunningTask> {
    vec![RunningTask {
        task_id: a.task_id.clone(),
        attempt: a.attempt,
    }]
}

async fn progress_of(srv: &TestServer, id: &str) -> Vec<u64> {
    let (_, h) = srv
        .get(&format!("/api/v1/tasks/{id}/events"), &srv.read_key)
        .await;
    h["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "task.progress")
        .map(|e| e["progress"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_runner_that_reconnects_within_grace_resumes_its_task() {
    let srv = TestServer::start().await;
    let (rid, cred) = srv.enrol("r").await;
    let mut r = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    let (_, v) = srv.create_task(json!({"operation_code": 1})).await;
    let id = v["task_id"].as_str().unwrap().to_owned();
    let a = r.next_assignment(5).await;
    r.progress(&a, 30, "working").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(r); // the link dies mid-task

    // While it is away the task stays with it, and the runner counts as offline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = srv.task(&id).await;
    assert_eq!(
        (t["status"].as_str(), t["attempt"].as_u64()),
        (Some("running"), Some(1))
    );
    let (_, runner) = srv
        .get(&format!("/api/v1/runners/{rid}"), &srv.read_key)
        .await;
    assert_eq!(runner["state"], "offline");

    // Uploads travel over HTTP and are accepted while the socket is down (the lease holds).
    let jwt = runner_jwt(&srv.url(""), &cred).await.unwrap();
    let body = b"a,b\n1,2\n".to_vec();
    let sum: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let resp = srv
        .http
        .put(srv.url(&format!("/api/v1/tasks/{id}/artifacts/out.csv?attempt=1")))
        .bearer_auth(&jwt)
        .header("x-dap-sha256", sum)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // It comes back listing the task: no new assignment, the slot is still taken by it.
    let mut r = ProtoRunner::connect_with(srv.addr, &cred, 1, &[], running(&a)).await;
    assert!(r.next(1).await.is_none(), "nothing is pushed again");
    let (_, runner) = srv
        .get(&format!("/api/v1/runners/{rid}"), &srv.read_key)
        .await;
    assert_eq!(runner["state"], "busy");
    assert_eq!(runner["current_task"], id.as_str());
    r.progress(&a, 60, "still working").await;
    r.complete(&a, json!({"resumed": true})).await;
    let t = srv.wait_status(&id, "completed", 5).await;
    assert_eq!(t["attempt"], 1, "the same attempt finished");
    assert_eq!(
        progress_of(&srv, &id).await,
        [30, 60],
        "progress continued monotonically"
    );
}

#[tokio::test]
async fn after_the_grace_period_the_task_moves_to_another_runner_and_the_late_result_is_refused() {
    let srv = TestServer::start_with(|c| c.runner_grace = Duration::from_millis(400)).await;
    let (_, cred_a) = srv.enrol("a").await;
    let (_, cred_b) = srv.enrol("b").await;
    let mut ra = ProtoRunner::connect(srv.addr, &cred_a, 1, &[]).await;
    let (_, v) = srv.create_task(json!({"operation_code": 1})).await;
    let id = v["task_id"].as_str().unwrap().to_owned();
    let a1 = ra.next_assignment(5).await;
    let mut rb = ProtoRunner::connect(srv.addr, &cred_b, 1, &[]).await;
    drop(ra);

    // Within the grace period b gets nothing; after it, b gets attempt 2.
    assert!(rb.next(0).await.is_none());
    let b2 = rb.next_assignment(5).await;
    assert_eq!((b2.task_id.as_str(), b2.attempt), (id.as_str(), 2));

    // a comes back still listing attempt 1: it is told to stop it, and its result is refused.
    let mut ra = ProtoRunner::connect_with(srv.addr, &cred_a, 1, &[], running(&a1)).await;
    match ra.next(5).await {
        Some(ServerMessage::Cancel { task_id, attempt }) => {
            assert_eq!((task_id.as_str(), attempt), (id.as_str(), 1));
        }
        other => panic!("expected a cancel of the superseded attempt, got {other:?}"),
    }
    ra.complete(&a1, json!({"from": "a"})).await;
    // Refused for good, so acknowledged: the runner must not keep resending it.
    ra.wait_ack(&id, 1, 5).await;
    assert_eq!(srv.task(&id).await["status"], "assigned");
    rb.complete(&b2, json!({"from": "b"})).await;
    srv.wait_status(&id, "completed", 5).await;
    let (_, res) = srv.result(&id).await;
    assert_eq!(res["result_data"]["from"], "b");
}

#[tokio::test]
async fn a_task_lost_max_attempts_times_fails_with_runner_lost() {
    let srv = TestServer::start_with(|c| {
        c.runner_grace = Duration::from_millis(200);
        c.max_attempts = 2;
    })
    .await;
    let (_, cred) = srv.enrol("flaky").await;
    let mut r = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    let (_, v) = srv.create_task(json!({"operation_code": 1})).await;
    let id = v["task_id"].as_str().unwrap().to_owned();
    let a1 = r.next_assignment(5).await;
    assert_eq!(a1.attempt, 1);
    drop(r);
    srv.wait_status(&id, "queued", 5).await;
    let mut r = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    let a2 = r.next_assignment(5).await;
    assert_eq!(a2.attempt, 2);
    drop(r);
    let t = srv.wait_status(&id, "failed", 5).await;
    assert_eq!(t["error"]["code"], "runner_lost", "{t}");
}

#[tokio::test]
async fn after_a_server_restart_the_runner_resumes_its_task() {
    let srv = TestServer::start().await;
    let (_, cred) = srv.enrol("r").await;
    let key = srv.write_key.clone();
    let mut r = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    let (_, v) = srv.create_task(json!({"operation_code": 1})).await;
    let id = v["task_id"].as_str().unwrap().to_owned();
    let a = r.next_assignment(5).await;
    r.progress(&a, 40, "half").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dir = srv.stop_keep().await;
    drop(r);

    let srv = TestServer::start_in(dir, |_| {}).await;
    let t = srv.task(&id).await;
    assert_eq!(
        t["status"], "running",
        "kept for its runner during the grace period"
    );
    let mut r = ProtoRunner::connect_with(srv.addr, &cred, 1, &[], running(&a)).await;
    assert!(r.next(1).await.is_none());
    r.complete(&a, json!({"survived": "restart"})).await;
    let t = srv.wait_status(&id, "completed", 5).await;
    assert_eq!(t["attempt"], 1);
    let _ = key;
}

#[tokio::test]
async fn a_draining_runner_gets_nothing_new_and_a_hand_back_requeues_at_once_fenced() {
    // Grace 30 s: anything faster than that is the hand back, not the lease expiring.
    let srv = TestServer::start_with(|c| c.runner_grace = Duration::from_secs(30)).await;
    let (rid, cred) = srv.enrol("leaving").await;
    let mut leaving = ProtoRunner::connect(srv.addr, &cred, 2, &[]).await;
    let (_, v) = srv.create_task(json!({"operation_code": 1})).await;
    let id = v["task_id"].as_str().unwrap().to_owned();
    let a = leaving.next_assignment(5).await;
    leaving.progress(&a, 40, "working").await;

    leaving.send(dap_protocol::RunnerMessage::Draining).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, r) = srv
            .get(&format!("/api/v1/runners/{rid}"), &srv.read_key)
            .await;
        if r["state"] == "draining" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // It has a free slot, but a draining runner is refused by name and nothing is stored…
    let before = srv.task_total().await;
    let (st, e) = srv
        .create_task(json!({"operation_code": 1, "runner_id": rid}))
        .await;
    assert_eq!(st, 409, "{e}");
    assert_eq!(e["error"]["code"], "runner_draining", "{e}");
    assert_eq!(e["error"]["running_tasks"], json!([id]), "{e}");
    assert_eq!(srv.task_total().await, before);
    // …and an untargeted task waits in the queue rather than going to it.
    let (st, q) = srv.create_task(json!({"operation_code": 1})).await;
    assert_eq!(st, 201, "{q}");
    let queued_id = q["task_id"].as_str().unwrap().to_owned();
    assert!(
        leaving.next(1).await.is_none(),
        "nothing is pushed to a draining runner"
    );
    assert_eq!(srv.task(&queued_id).await["status"], "queued");

    // A second runner arrives; the leaving one hands its task back.
    let (other, other_cred) = srv.enrol("staying").await;
    let mut staying = ProtoRunner::connect(srv.addr, &other_cred, 2, &[]).await;
    let first = staying.next_assignment(5).await;
    assert_eq!(first.task_id, queued_id);
    let t0 = std::time::Instant::now();
    leaving
        .send(dap_protocol::RunnerMessage::HandBack(
            dap_protocol::HandBack {
                task_id: a.task_id.clone(),
                attempt: a.attempt,
                reason: "runner stopping".into(),
            },
        ))
        .await;
    let moved = staying.next_assignment(5).await;
    let requeue_time = t0.elapsed();
    assert_eq!((moved.task_id.as_str(), moved.attempt), (id.as_str(), 2));
    leaving.wait_ack(&id, 1, 5).await;
    assert!(
        requeue_time < Duration::from_secs(2),
        "hand back → assignment took {requeue_time:?}"
    );
    eprintln!("hand back → next runner assigned: {requeue_time:?}");

    // The handed-back attempt is fenced: its progress and result change nothing.
    leaving.progress(&a, 90, "late").await;
    leaving.complete(&a, json!({"from": "attempt 1"})).await;
    leaving.wait_ack(&id, 1, 5).await;
    staying.progress(&moved, 10, "again").await;
    staying.complete(&moved, json!({"from": "attempt 2"})).await;
    let done = srv.wait_status(&id, "completed", 5).await;
    assert_eq!(done["attempt"], 2, "{done}");
    assert_eq!(done["runner_id"], other.as_str(), "{done}");
    let (_, res) = srv.result(&id).await;
    assert_eq!(res["result_data"], json!({"from": "attempt 2"}), "{res}");
    let (_, h) = srv
        .get(&format!("/api/v1/tasks/{id}/events"), &srv.read_key)
        .await;
    let requeued: Vec<_> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "task.requeued")
        .collect();
    assert_eq!(requeued.len(), 1, "{h}");
    assert_eq!(requeued[0]["reason"], "handed_back", "{h}");
    // A hand back of an attempt it does not hold is acknowledged and changes nothing.
    leaving
        .send(dap_protocol::RunnerMessage::HandBack(
            dap_protocol::HandBack {
                task_id: id.clone(),
                attempt: 2,
                reason: "bogus".into(),
            },
        ))
        .await;
    leaving.wait_ack(&id, 2, 5).await;
    assert_eq!(srv.task(&id).await["status"], "completed");
}

#[tokio::test]
async fn a_hand_back_alone_marks_the_runner_draining_so_the_task_never_returns_to_it() {
    // Regression: a runner stopping with `--on-stop hand-back` sent its hand back before its
    // `draining`; the requeued task went straight back to it (it had a free slot), it handed it
    // back again, and the task only reached another runner on attempt 3.
    let srv = TestServer::start_with(|c| c.runner_grace = Duration::from_secs(30)).await;
    let (rid, cred) = srv.enrol("leaving").await;
    let mut leaving = ProtoRunner::connect(srv.addr, &cred, 2, &[]).await;
    let (_, v) = srv.create_task(json!({"operation_code": 1})).await;
    let id = v["task_id"].as_str().unwrap().to_owned();
    let a = leaving.next_assignment(5).await;

    leaving
        .send(dap_protocol::RunnerMessage::HandBack(
            dap_protocol::HandBack {
                task_id: a.task_id.clone(),
                attempt: a.attempt,
                reason: "runner stopping".into(),
            },
        ))
        .await;
    leaving.wait_ack(&id, 1, 5).await;
    assert!(
        leaving.next(1).await.is_none(),
        "the handed-back task was pushed to the runner that gave it back"
    );
    let t = srv.task(&id).await;
    assert_eq!(
        (t["status"].as_str(), t["runner_id"].as_str()),
        (Some("queued"), None),
        "{t}"
    );
    let (_, r) = srv
        .get(&format!("/api/v1/runners/{rid}"), &srv.read_key)
        .await;
    assert_eq!(r["state"], "draining", "{r}");

    // The next runner to come gets it, as attempt 2.
    let (_, other_cred) = srv.enrol("staying").await;
    let mut staying = ProtoRunner::connect(srv.addr, &other_cred, 1, &[]).await;
    let moved = staying.next_assignment(5).await;
    assert_eq!((moved.task_id.as_str(), moved.attempt), (id.as_str(), 2));
}
