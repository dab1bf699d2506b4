//! Per-task `timeout_s` and `max_attempts`, manual retry, and the invariant that no task stays
//! `assigned`/`running` without a live lease: an attempt that runs too long is cancelled on its
//! runner and requeued (attempt + 1) or failed with `timeout`, also after a server restart.

use std::time::Duration;

use dap_protocol::{Assignment, RunningTask, ServerMessage};
use serde_json::{json, Value};

use crate::common::*;

async fn expect_cancel(r: &mut ProtoRunner, a: &Assignment, secs: u64) {
    match r.next(secs).await {
        Some(ServerMessage::Cancel { task_id, attempt }) => {
            assert_eq!((task_id.as_str(), attempt), (a.task_id.as_str(), a.attempt));
        }
        other => panic!(
            "expected a cancel of {} #{}, got {other:?}",
            a.task_id, a.attempt
        ),
    }
}

/// Every task the store shows as assigned/running is held (leased) by its runner in the
/// dispatcher, connected or within its grace period.
async fn assert_no_running_without_lease(srv: &TestServer) {
    for status in ["assigned", "running"] {
        let (_, v) = srv
            .get(
                &format!("/api/v1/tasks?status={status}&limit=500"),
                &srv.read_key,
            )
            .await;
        for t in v["tasks"].as_array().unwrap() {
            let (id, runner, attempt) = (
                t["task_id"].as_str().unwrap(),
                t["runner_id"].as_str().unwrap(),
                t["attempt"].as_u64().unwrap() as u32,
            );
            assert!(
                srv.state.dispatcher.leases(runner, id, attempt),
                "task {id} is {status} on {runner} #{attempt} without a lease"
            );
        }
    }
}

async fn events_of(srv: &TestServer, id: &str) -> Vec<Value> {
    let (_, h) = srv
        .get(&format!("/api/v1/tasks/{id}/events"), &srv.read_key)
        .await;
    h["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_task_over_its_timeout_is_cancelled_requeued_then_failed_with_timeout() {
    let srv = TestServer::start().await;
    let (_, cred) = srv.enrol("slow").await;
    let mut r = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    // Timed from before the create: the timer starts at the assignment, which may reach this
    // test late on a loaded machine, so timing from its arrival could undercount.
    let started = std::time::Instant::now();
    let (st, v) = srv
        .create_task(json!({"operation_code": 1, "timeout_s": 1, "max_attempts": 2}))
        .await;
    assert_eq!(st, 201, "{v}");
    let id = v["task_id"].as_str().unwrap().to_owned();
    let t = srv.task(&id).await;
    assert_eq!(
        (t["timeout_s"].as_u64(), t["max_attempts"].as_u64()),
        (Some(1), Some(2))
    );

    let a1 = r.next_assignment(5).await;
    r.progress(&a1, 10, "stuck").await;
    expect_cancel(&mut r, &a1, 5).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "cancelled too early: {took:?}"
    );
    // The slot was freed, so the same runner gets attempt 2 at once.
    let a2 = r.next_assignment(5).await;
    assert_eq!((a2.task_id.as_str(), a2.attempt), (id.as_str(), 2));
    // The late result of attempt 1 is refused (fenced); attempt 2 is the live one.
    r.complete(&a1, json!({"late": true})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = srv.task(&id).await;
    assert_eq!(
        (t["status"].as_str(), t["attempt"].as_u64()),
        (Some("assigned"), Some(2))
    );
    assert_no_running_without_lease(&srv).await;

    // Attempt 2 is the last one: it times out into `failed` / `timeout`.
    expect_cancel(&mut r, &a2, 5).await;
    let t = srv.wait_status(&id, "failed", 5).await;
    assert_eq!(t["error"]["code"], "timeout", "{t}");
    let reasons: Vec<Value> = events_of(&srv, &id)
        .await
        .into_iter()
        .filter(|e| e["type"] == "task.requeued")
        .map(|e| e["reason"].clone())
        .collect();
    assert_eq!(reasons, [json!("timeout")]);
    assert_no_running_without_lease(&srv).await;
    // The runner is free again for other work.
    let (st, v) = srv
        .create_task(json!({"operation_code": 1, "runner_id": r.runner_id}))
        .await;
    assert_eq!(st, 201, "{v}");
    let a = r.next_assignment(5).await;
    r.complete(&a, json!({})).await;
    srv.wait_status(&a.task_id, "completed", 5).await;
}

#[tokio::test]
async fn a_task_that_finishes_in_time_is_not_touched_and_max_attempts_applies_to_lost_runners() {
    let srv = TestServer::start_with(|c| c.runner_grace = Duration::from_millis(200)).await;
    let (_, cred) = srv.enrol("r").await;
    let mut r = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    let (_, v) = srv
        .create_task(json!({"operation_code": 1, "timeout_s": 1}))
        .await;
    let id = v["task_id"].as_str().unwrap().to_owned();
    let a = r.next_assignment(5).await;
    r.complete(&a, json!({"fast": true})).await;
    srv.wait_status(&id, "completed", 5).await;
    assert!(r.next(2).await.is_none(), "no cancel after completion");
    assert_eq!(srv.task(&id).await["status"], "completed");

    // max_attempts 1 (server default 3): one lost runner fails it with runner_lost.
    let (_, v) = srv
        .create_task(json!({"operation_code": 1, "max_attempts": 1}))
        .await;
    let id = v["task_id"].as_str().unwrap().to_owned();
    r.next_assignment(5).await;
    drop(r);
    let t = srv.wait_status(&id, "failed", 5).await;
    assert_eq!(t["error"]["code"], "runner_lost");
    assert_eq!(t["attempt"], 1);
}

#[tokio::test]
async fn timeout_and_max_attempts_are_validated_with_typed_422s() {
    let srv = TestServer::start().await;
    for (body, field) in [
        (json!({"operation_code": 1, "timeout_s": 0}), "timeout_s"),
        (
            json!({"operation_code": 1, "timeout_s": 604_801}),
            "timeout_s",
        ),
        (json!({"operation_code": 1, "timeout_s": 1.5}), "timeout_s"),
        (json!({"operation_code": 1, "timeout_s": "10"}), "timeout_s"),
        (json!({"operation_code": 1, "timeout_s": -5}), "timeout_s"),
        (
            json!({"operation_code": 1, "max_attempts": 0}),
            "max_attempts",
        ),
        (
            json!({"operation_code": 1, "max_attempts": 11}),
            "max_attempts",
        ),
        (
            json!({"operation_code": 1, "max_attempts": true}),
            "max_attempts",
        ),
    ] {
        let (st, v) = srv.create_task(body.clone()).await;
        assert_eq!(st, 422, "{body}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{body}: {v}"
        );
    }
    assert_eq!(srv.task_total().await, 0, "nothing stored");
    let (st, v) = srv
        .create_task(json!({"operation_code": 1, "timeout_s": 604_800, "max_attempts": 10}))
        .await;
    assert_eq!(st, 201, "{v}");
}

#[tokio::test]
async fn timeouts_survive_a_restart() {
    let srv = TestServer::start().await;
    let (_, cred_a) = srv.enrol("a").await;
    let (_, cred_b) = srv.enrol("b").await;
    // a resumes its task after the restart; b never comes back for its one.
    let mut ra = ProtoRunner::connect(srv.addr, &cred_a, 1, &[]).await;
    let (_, v) = srv
        .create_task(json!({"operation_code": 1, "timeout_s": 3, "max_attempts": 1}))
        .await;
    let resumed = v["task_id"].as_str().unwrap().to_owned();
    let a = ra.next_assignment(5).await;
    let mut rb = ProtoRunner::connect(srv.addr, &cred_b, 1, &[]).await;
    let (_, v) = srv
        .create_task(json!({"operation_code": 1, "timeout_s": 3, "max_attempts": 2}))
        .await;
    let abandoned = v["task_id"].as_str().unwrap().to_owned();
    let b = rb.next_assignment(5).await;
    assert_eq!(b.task_id, abandoned);
    let dir = srv.stop_keep().await;
    drop((ra, rb));

    // Grace is 30 s: only the re-armed timers can end these attempts within a few seconds.
    let srv = TestServer::start_in(dir, |_| {}).await;
    assert_eq!(srv.task(&resumed).await["timeout_s"], 3);
    let mut ra = ProtoRunner::connect_with(
        srv.addr,
        &cred_a,
        1,
        &[],
        vec![RunningTask {
            task_id: resumed.clone(),
            attempt: 1,
        }],
    )
    .await;
    assert_no_running_without_lease(&srv).await;
    expect_cancel(&mut ra, &a, 10).await;
    let t = srv.wait_status(&resumed, "failed", 5).await;
    assert_eq!(t["error"]["code"], "timeout");
    // b's task timed out in b's grace period: requeued with attempt 2, and a runs it.
    let a2 = ra.next_assignment(5).await;
    assert_eq!((a2.task_id.as_str(), a2.attempt), (abandoned.as_str(), 2));
    let reasons: Vec<Value> = events_of(&srv, &abandoned)
        .await
        .into_iter()
        .filter(|e| e["type"] == "task.requeued")
        .map(|e| e["reason"].clone())
        .collect();
    assert_eq!(reasons, [json!("timeout")]);
    assert_no_running_without_lease(&srv).await;
    ra.complete(&a2, json!({"second": true})).await;
    srv.wait_status(&abandoned, "completed", 5).await;
}

#[tokio::test]
async fn retry_creates_a_new_task_from_a_failed_or_cancelled_one() {
    let srv = TestServer::start().await;
    let (_, cred) = srv.enrol("r").await;
    let mut r = ProtoRunner::connect(srv.addr, &cred, 1, &["sales"]).await;
    let params = json!({"dataset": "sales", "limit": 5});
    let (_, v) = srv
        .create_task(
            json!({"operation_code": 100, "params": params, "runner_id": r.runner_id,
                            "timeout_s": 60, "max_attempts": 2}),
        )
        .await;
    let id = v["task_id"].as_str().unwrap().to_owned();
    let a = r.next_assignment(5).await;

    // Not retryable while it runs, nor once completed; unknown ids are 404.
    let (st, v) = srv
        .post(
            &format!("/api/v1/tasks/{id}/retry"),
            &srv.write_key,
            json!({}),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("task_not_retryable")),
        "{v}"
    );
    let (st, _) = srv
        .post("/api/v1/tasks/nope/retry", &srv.write_key, json!({}))
        .await;
    assert_eq!(st, 404);
    let (st, _) = srv
        .post(
            &format!("/api/v1/tasks/{id}/retry"),
            &srv.read_key,
            json!({}),
        )
        .await;
    assert_eq!(st, 403, "needs the write scope");

    r.send(dap_protocol::RunnerMessage::Failed(dap_protocol::Failed {
        task_id: id.clone(),
        attempt: a.attempt,
        error: dap_protocol::TaskError::new("data_error", "disk on fire"),
    }))
    .await;
    srv.wait_status(&id, "failed", 5).await;
    let before = srv.task_total().await;
    let (st, v) = srv
        .post(
            &format!("/api/v1/tasks/{id}/retry"),
            &srv.write_key,
            json!({}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["retried_from"], id.as_str());
    let new_id = v["task_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, id);
    assert_eq!(srv.task_total().await, before + 1);
    let t = srv.task(&new_id).await;
    assert_eq!(t["params"], params);
    assert_eq!(t["operation_code"], 100);
    assert_eq!(t["target_runner_id"], r.runner_id.as_str());
    assert_eq!(
        (t["timeout_s"].as_u64(), t["max_attempts"].as_u64()),
        (Some(60), Some(2))
    );
    assert_eq!(t["retried_from"], id.as_str());
    let b = r.next_assignment(5).await;
    assert_eq!((b.task_id.as_str(), b.attempt), (new_id.as_str(), 1));
    r.complete(&b, json!({"rows": []})).await;
    srv.wait_status(&new_id, "completed", 5).await;
    assert_eq!(
        srv.task(&id).await["status"],
        "failed",
        "the original is unchanged"
    );
    let (st, _) = srv
        .post(
            &format!("/api/v1/tasks/{new_id}/retry"),
            &srv.write_key,
            json!({}),
        )
        .await;
    assert_eq!(st, 409, "completed tasks are not retried");

    // A cancelled (queued, never run) task can be retried too; it queues behind a busy runner.
    let (_, v) = srv
        .create_task(json!({"operation_code": 1, "runner_id": r.runner_id, "queue": true}))
        .await;
    let hold = v["task_id"].as_str().unwrap().to_owned();
    let h = r.next_assignment(5).await;
    let (_, v) = srv
        .create_task(json!({"operation_code": 1, "runner_id": r.runner_id, "queue": true}))
        .await;
    let queued = v["task_id"].as_str().unwrap().to_owned();
    let (st, _) = srv
        .post(
            &format!("/api/v1/tasks/{queued}/cancel"),
            &srv.write_key,
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, v) = srv
        .post(
            &format!("/api/v1/tasks/{queued}/retry"),
            &srv.write_key,
            json!({}),
        )
        .await;
    assert_eq!((st, v["status"].as_str()), (201, Some("queued")), "{v}");
    r.complete(&h, json!({})).await;
    srv.wait_status(&hold, "completed", 5).await;
    let c = r.next_assignment(5).await;
    assert_eq!(c.task_id, v["task_id"].as_str().unwrap());
    assert_no_running_without_lease(&srv).await;
}
