//! Slot accounting under load: busy refusal, queueing, and never more running than slots.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dap_protocol::{Completed, RunnerMessage, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

#[tokio::test]
async fn busy_runner_gets_409_and_nothing_is_stored_unless_queue_is_asked() {
    let srv = TestServer::start().await;
    let (rid, cred) = srv.enrol("solo").await;
    let mut runner = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;

    let (st, v) = srv
        .create_task(json!({"operation_code": 1, "runner_id": rid}))
        .await;
    assert_eq!(st, 201);
    let first = v["task_id"].as_str().unwrap().to_owned();
    let a = runner.next_assignment(5).await;
    assert_eq!(a.task_id, first);
    let (_, r) = srv
        .get(&format!("/api/v1/runners/{rid}"), &srv.read_key)
        .await;
    assert_eq!(r["state"], "busy");
    assert_eq!(r["current_task"], first.as_str());

    let total = srv.task_total().await;
    let events = srv.state.store.last_event_id().await.unwrap();
    let (st, v) = srv
        .create_task(json!({"operation_code": 1, "runner_id": rid}))
        .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["error"]["code"], "runner_busy");
    assert!(v["error"]["message"].as_str().unwrap().contains(&first));
    assert_eq!(v["error"]["running_tasks"][0], first.as_str());
    assert_eq!(srv.task_total().await, total, "refusal stored no task");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        srv.state.store.last_event_id().await.unwrap(),
        events,
        "and no event"
    );

    // With queue: true it is accepted, waits, and starts the moment the slot frees.
    let (st, v) = srv
        .create_task(json!({"operation_code": 1, "runner_id": rid, "queue": true}))
        .await;
    assert_eq!(st, 201);
    assert_eq!(v["status"], "queued");
    let second = v["task_id"].as_str().unwrap().to_owned();
    assert!(runner.next(1).await.is_none(), "not pushed while busy");
    runner.complete(&a, json!({"ok": 1})).await;
    let freed_at = std::time::Instant::now();
    let b = runner.next_assignment(5).await;
    assert_eq!(b.task_id, second);
    assert!(
        freed_at.elapsed() < Duration::from_millis(500),
        "started at once"
    );
    runner.complete(&b, json!({"ok": 2})).await;
    srv.wait_status(&second, "completed", 5).await;
}

/// Runs a runner that holds each task for `hold` before completing it, recording how many it
/// holds at once (per runner and across all runners).
async fn holding_runner(
    mut r: ProtoRunner,
    hold: Duration,
    global: Arc<AtomicUsize>,
    global_max: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
    target: usize,
) -> usize {
    let mut held: Vec<(dap_protocol::Assignment, tokio::time::Instant)> = Vec::new();
    let mut local_max = 0;
    loop {
        if done.load(Ordering::SeqCst) >= target && held.is_empty() {
            return local_max;
        }
        let next_due = held.iter().map(|h| h.1).min();
        tokio::select! {
            m = r.ws.next() => {
                match m {
                    Some(Ok(Message::Text(t))) => {
                        if let ServerMessage::Assign(a) = serde_json::from_str(t.as_str()).unwrap() {
                            held.push((a, tokio::time::Instant::now() + hold));
                            local_max = local_max.max(held.len());
                            let now = global.fetch_add(1, Ordering::SeqCst) + 1;
                            global_max.fetch_max(now, Ordering::SeqCst);
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return local_max,
                }
            }
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_millis(50))) => {
                let now = tokio::time::Instant::now();
                let (due, keep): (Vec<_>, Vec<_>) = held.drain(..).partition(|h| h.1 <= now);
                held = keep;
                for (a, _) in due {
                    // Count it as no longer running before the server can hand out its slot.
                    global.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                    let m = RunnerMessage::Completed(Completed { task_id: a.task_id, attempt: a.attempt, result_data: json!({}) });
                    r.ws.send(Message::Text(m.to_json().into())).await.unwrap();
                }
            }
        }
    }
}

#[tokio::test]
async fn two_hundred_concurrent_creates_on_three_two_slot_runners_never_exceed_six() {
    let srv = Arc::new(TestServer::start().await);
    let global = Arc::new(AtomicUsize::new(0));
    let global_max = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    const N: usize = 200;
    let mut runners = Vec::new();
    for i in 0..3 {
        let (_, cred) = srv.enrol(&format!("r{i}")).await;
        let r = ProtoRunner::connect(srv.addr, &cred, 2, &[]).await;
        runners.push(tokio::spawn(holding_runner(
            r,
            Duration::from_millis(5),
            global.clone(),
            global_max.clone(),
            done.clone(),
            N,
        )));
    }
    let mut creates = Vec::new();
    for _ in 0..N {
        let srv = srv.clone();
        creates.push(tokio::spawn(async move {
            let (st, v) = srv.create_task(json!({"operation_code": 1})).await;
            assert_eq!(st, 201, "{v}");
        }));
    }
    for c in creates {
        c.await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::SeqCst) < N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} done",
            done.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in runners {
        let local = r.await.unwrap();
        assert!(local <= 2, "a 2-slot runner held {local} tasks at once");
    }
    let max = global_max.load(Ordering::SeqCst);
    assert!(max <= 6, "{max} tasks ran at once on 6 slots");
    assert!(
        max >= 2,
        "the load should have used several slots (max {max})"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = srv
            .get("/api/v1/tasks?status=completed&limit=1", &srv.read_key)
            .await;
        if v["total"] == N as u64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "completed total {}",
            v["total"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tasks_route_to_runners_holding_the_dataset_and_requeue_on_disconnect() {
    let srv = TestServer::start_with(|c| c.runner_grace = Duration::from_millis(300)).await;
    let (_, c1) = srv.enrol("has-a").await;
    let (_, c2) = srv.enrol("has-b").await;
    let mut ra = ProtoRunner::connect(srv.addr, &c1, 4, &["a"]).await;
    let mut rb = ProtoRunner::connect(srv.addr, &c2, 4, &["b"]).await;
    let (_, v) = srv
        .create_task(json!({"operation_code": 100, "params": {"dataset": "b"}}))
        .await;
    let tid = v["task_id"].as_str().unwrap().to_owned();
    let a = rb.next_assignment(5).await;
    assert_eq!(a.task_id, tid);
    assert!(ra.next(1).await.is_none());

    // Runner b drops mid-task and stays away past its grace period: the task goes back to the
    // queue and, when b (the only holder of dataset "b") reconnects without it, is pushed again
    // with attempt 2. A result for attempt 1 is refused.
    drop(rb);
    srv.wait_status(&tid, "queued", 5).await;
    let mut rb = ProtoRunner::connect(srv.addr, &c2, 4, &["b"]).await;
    let a2 = rb.next_assignment(5).await;
    assert_eq!((a2.task_id.as_str(), a2.attempt), (tid.as_str(), 2));
    rb.complete(&a, json!({"stale": true})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(srv.task(&tid).await["status"], "assigned");
    rb.complete(&a2, json!({"fresh": true})).await;
    srv.wait_status(&tid, "completed", 5).await;
    let (_, r) = srv.result(&tid).await;
    assert_eq!(r["result_data"]["fresh"], true);

    // The datasets listing shows who holds what.
    let (st, d) = srv.get("/api/v1/datasets", &srv.read_key).await;
    assert_eq!(st, 200);
    let names: Vec<&str> = d["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
}

/// `POST /api/v1/tasks/batch`: one transaction for all, then each pushed or queued as a single
/// create would be; answers in request order.
#[tokio::test]
async fn a_batch_create_stores_all_in_order_and_fills_free_slots_first() {
    let srv = TestServer::start().await;
    let (rid, cred) = srv.enrol("pair").await;
    let mut runner = ProtoRunner::connect(srv.addr, &cred, 2, &[]).await;
    let before = srv.task_total().await;
    let (st, v) = srv
        .post(
            "/api/v1/tasks/batch",
            &srv.write_key,
            json!({ "tasks": [
                {"operation_code": 1},
                {"operation_code": 1, "timeout_s": 60},
                {"operation_code": 1, "max_attempts": 2},
            ]}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3);
    let statuses: Vec<&str> = tasks
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["assigned", "assigned", "queued"]);
    assert_eq!(tasks[0]["runner_id"], rid.as_str());
    assert!(tasks[2]["runner_id"].is_null());
    assert_eq!(srv.task_total().await, before + 3);
    // Each is a task like any other: its own limits, its own events, pushed in order.
    let ids: Vec<String> = tasks
        .iter()
        .map(|t| t["task_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(srv.task(&ids[1]).await["timeout_s"], 60);
    assert_eq!(srv.task(&ids[2]).await["max_attempts"], 2);
    let a = runner.next_assignment(5).await;
    let b = runner.next_assignment(5).await;
    assert_eq!(
        (a.task_id.as_str(), b.task_id.as_str()),
        (ids[0].as_str(), ids[1].as_str())
    );
    // The queued one starts when a slot frees.
    runner.complete(&a, json!({"ok": 1})).await;
    let c = runner.next_assignment(5).await;
    assert_eq!(c.task_id, ids[2]);
    runner.complete(&b, json!({"ok": 2})).await;
    runner.complete(&c, json!({"ok": 3})).await;
    for id in &ids {
        srv.wait_status(id, "completed", 5).await;
    }
}

/// One bad task refuses the whole batch: nothing stored, no event, no slot kept, and the error
/// names the task.
#[tokio::test]
async fn a_batch_with_one_refused_task_stores_nothing() {
    let srv = TestServer::start().await;
    let (rid, cred) = srv.enrol("solo").await;
    let mut runner = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    let total = srv.task_total().await;
    let events = srv.state.store.last_event_id().await.unwrap();

    // An invalid task after a valid one (which reserved the only slot).
    let (st, v) = srv
        .post(
            "/api/v1/tasks/batch",
            &srv.write_key,
            json!({ "tasks": [{"operation_code": 1}, {"operation_code": 999}] }),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["error"]["code"], "unknown_operation");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("tasks[1]: "),
        "{v}"
    );
    // A targeted task for a runner that the same batch already filled: 409, index 1.
    let (st, v) = srv
        .post(
            "/api/v1/tasks/batch",
            &srv.write_key,
            json!({ "tasks": [
                {"operation_code": 1, "runner_id": rid},
                {"operation_code": 1, "runner_id": rid},
            ]}),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["error"]["code"], "runner_busy");
    assert_eq!(v["error"]["index"], 1);
    for bad in [
        json!({ "tasks": [] }),
        json!({ "tasks": vec![json!({"operation_code": 1}); 1001] }),
    ] {
        let (st, v) = srv.post("/api/v1/tasks/batch", &srv.write_key, bad).await;
        assert_eq!(st, 422, "{v}");
        assert_eq!(v["error"]["code"], "invalid_request");
    }
    let (st, _) = srv
        .post(
            "/api/v1/tasks/batch",
            &srv.read_key,
            json!({ "tasks": [{"operation_code": 1}] }),
        )
        .await;
    assert_eq!(st, 403, "read scope cannot create");

    assert_eq!(srv.task_total().await, total, "nothing stored");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // No task event. (The runner may show busy and idle again: the first task of each refused
    // batch held its slot until the refusal.)
    let after = srv
        .state
        .store
        .events_after(events, None, 100)
        .await
        .unwrap();
    assert!(
        after.iter().all(|e| e.kind.starts_with("runner.")),
        "{after:?}"
    );
    assert!(runner.next(1).await.is_none(), "nothing pushed");
    // The slots the refused batches reserved were given back: a single create is assigned.
    let (st, v) = srv
        .create_task(json!({"operation_code": 1, "runner_id": rid}))
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["status"], "assigned");
    assert_eq!(
        runner.next_assignment(5).await.task_id,
        v["task_id"].as_str().unwrap()
    );
}
