//! The push loop end to end: create → pushed → progress → completed → result, seen over REST
//! and over SSE, and SSE resumption with Last-Event-ID. The functional tests run on SQLite and
//! on PostgreSQL.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use dap_server::store::Backend;

use crate::common::*;

on_both_backends!(
    create_push_progress_complete_result_and_sse,
    live_sse_then_resume_with_last_event_id_without_gaps_or_duplicates,
    queued_task_starts_when_a_runner_connects_and_cancel_works,
    a_busy_runner_works_through_a_backlog_one_result_at_a_time,
);

async fn create_push_progress_complete_result_and_sse(backend: Backend) {
    let srv = TestServer::start_on(backend).await;
    let (runner_id, cred) = srv.enrol("r1").await;
    let mut runner = ProtoRunner::connect(srv.addr, &cred, 1, &["sales"]).await;
    assert_eq!(runner.runner_id, runner_id);

    // Watch the task's events from the start of the log.
    let (st, v) = srv
        .create_task(json!({ "operation_code": 100, "params": { "dataset": "sales", "limit": 5 } }))
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["status"], "assigned");
    assert_eq!(v["runner_id"], runner_id.as_str());
    let task_id = v["task_id"].as_str().unwrap().to_owned();

    // Pushed at once, with attempt 1 and the params we sent.
    let a = runner.next_assignment(5).await;
    assert_eq!(a.task_id, task_id);
    assert_eq!(a.attempt, 1);
    assert_eq!(a.operation_code, 100);
    assert_eq!(a.params["limit"], 5);

    // Result not ready yet.
    let (st, v) = srv.result(&task_id).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("result_not_ready"))
    );

    runner.progress(&a, 10, "reading").await;
    runner.progress(&a, 60, "counting").await;
    runner.progress(&a, 40, "regression").await; // must be dropped
    runner.progress(&a, 90, "page").await;
    let t = loop {
        let t = srv.task(&task_id).await;
        if t["progress"] == 90 {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(t["status"], "running");
    assert_eq!(t["stage"], "page");

    runner
        .complete(&a, json!({ "row_count": 3, "rows": [[1], [2], [3]] }))
        .await;
    let t = srv.wait_status(&task_id, "completed", 5).await;
    // The runner is told the result is durable (it may now forget it).
    runner.wait_ack(&a.task_id, a.attempt, 5).await;
    assert_eq!(t["progress"], 100);
    assert!(t["finished_at"].is_string() && t["started_at"].is_string());
    let (st, v) = srv.result(&task_id).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["result_data"]["row_count"], 3);

    // The same sequence over SSE, replayed from the log (Last-Event-ID 0), filtered to the task.
    let url = srv.url(&format!("/api/v1/events?task_id={task_id}"));
    let events = read_sse(&url, Some(&srv.read_key), Some(0), 5, |e| {
        e.iter().any(|(_, k, _)| k == "task.completed")
    })
    .await;
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "task.created",
            "task.assigned",
            "task.progress",
            "task.progress",
            "task.progress",
            "task.completed"
        ]
    );
    let percents: Vec<u64> = events
        .iter()
        .filter(|(_, k, _)| k == "task.progress")
        .map(|(_, _, d)| d["progress"].as_u64().unwrap())
        .collect();
    assert_eq!(percents, [10, 60, 90], "regression 40 must not appear");
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    assert!(events
        .iter()
        .all(|(id, _, d)| d["id"] == *id && d["task_id"] == task_id.as_str()));

    // The task's history endpoint has the same events.
    let (st, h) = srv
        .get(&format!("/api/v1/tasks/{task_id}/events"), &srv.read_key)
        .await;
    assert_eq!(st, 200);
    assert_eq!(h["events"].as_array().unwrap().len(), 6);
}

async fn live_sse_then_resume_with_last_event_id_without_gaps_or_duplicates(backend: Backend) {
    let srv = TestServer::start_on(backend).await;
    let (_, cred) = srv.enrol("r1").await;
    let mut runner = ProtoRunner::connect(srv.addr, &cred, 4, &[]).await;

    // A ticket-authenticated live stream (no key in the URL), opened before any task exists.
    let (st, t) = srv
        .post("/api/v1/sse-tickets", &srv.read_key, json!({}))
        .await;
    assert_eq!(st, 200, "{t}");
    let ticket = t["ticket"].as_str().unwrap().to_owned();
    assert!(t["expires_in"].as_i64().unwrap() <= 60);
    let url = srv.url(&format!("/api/v1/events?ticket={ticket}"));

    let driver = async {
        // Once the stream is subscribed, produce 5 no-op tasks.
        srv.wait_sse_subscribers(1).await;
        for _ in 0..5 {
            let (st, _) = srv.create_task(json!({ "operation_code": 1 })).await;
            assert_eq!(st, 201);
            let a = runner.next_assignment(5).await;
            runner.progress(&a, 50, "half").await;
            runner.complete(&a, json!({ "noop": true })).await;
        }
        runner
    };
    let reader = read_sse(&url, None, None, 10, |e| {
        e.iter().filter(|(_, k, _)| k == "task.completed").count() >= 2
    });
    let (first, mut runner) = tokio::join!(reader, driver);
    let last_seen = first.last().unwrap().0;

    // Wait until all 5 are done, then resume from where the first connection stopped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while srv
        .get("/api/v1/tasks?status=completed", &srv.read_key)
        .await
        .1["total"]
        != 5
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, t) = srv
        .post("/api/v1/sse-tickets", &srv.read_key, json!({}))
        .await;
    let url = srv.url(&format!(
        "/api/v1/events?ticket={}",
        t["ticket"].as_str().unwrap()
    ));
    let rest = read_sse(&url, None, Some(last_seen), 5, |e| {
        e.iter().filter(|(_, k, _)| k == "task.completed").count() >= 3
    })
    .await;

    let all_completed: Vec<&str> = first
        .iter()
        .chain(rest.iter())
        .filter(|(_, k, _)| k == "task.completed")
        .map(|(_, _, d)| d["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(all_completed.len(), 5);
    let mut ids: Vec<i64> = first.iter().chain(rest.iter()).map(|e| e.0).collect();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "no duplicates");
    assert!(rest.first().unwrap().0 > last_seen);

    // No gaps: the union equals the stored log over the same range.
    let log = srv
        .state
        .store
        .events_after(first[0].0 - 1, None, 10_000)
        .await
        .unwrap();
    let log_ids: Vec<i64> = log
        .iter()
        .map(|e| e.id)
        .filter(|id| *id <= rest.last().unwrap().0)
        .collect();
    assert_eq!(ids, log_ids);
    drop(runner.ws.close(None).await);
}

async fn queued_task_starts_when_a_runner_connects_and_cancel_works(backend: Backend) {
    let srv = TestServer::start_on(backend).await;
    let (st, v) = srv
        .create_task(json!({ "operation_code": 100, "params": { "dataset": "sales" } }))
        .await;
    assert_eq!(st, 201);
    assert_eq!(v["status"], "queued");
    let queued_id = v["task_id"].as_str().unwrap().to_owned();

    // A task for a dataset nobody has stays queued even when a runner connects.
    let (_, other) = srv
        .create_task(json!({ "operation_code": 100, "params": { "dataset": "elsewhere" } }))
        .await;
    let other_id = other["task_id"].as_str().unwrap().to_owned();

    let (_, cred) = srv.enrol("r1").await;
    let mut runner = ProtoRunner::connect(srv.addr, &cred, 2, &["sales"]).await;
    let a = runner.next_assignment(5).await;
    assert_eq!(a.task_id, queued_id);
    assert!(
        runner.next(1).await.is_none(),
        "the other task must not be pushed"
    );
    assert_eq!(srv.task(&other_id).await["status"], "queued");

    // Cancel the running one: the runner is told, the task is cancelled.
    let (st, v) = srv
        .post(
            &format!("/api/v1/tasks/{queued_id}/cancel"),
            &srv.write_key,
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "cancelled");
    match runner.next(5).await {
        Some(dap_protocol::ServerMessage::Cancel { task_id, attempt }) => {
            assert_eq!((task_id.as_str(), attempt), (queued_id.as_str(), 1));
        }
        other => panic!("expected cancel, got {other:?}"),
    }
    // A late completion does not resurrect it.
    runner.complete(&a, json!({})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(srv.task(&queued_id).await["status"], "cancelled");

    // Cancelling a queued task removes it from the queue; a second cancel is a conflict.
    let (st, _) = srv
        .post(
            &format!("/api/v1/tasks/{other_id}/cancel"),
            &srv.write_key,
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, v) = srv
        .post(
            &format!("/api/v1/tasks/{other_id}/cancel"),
            &srv.write_key,
            json!({}),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("task_finished"))
    );
    assert_eq!(srv.state.dispatcher.queue_depth(), 0);
}

/// Regression: the server sends an `ack` and the next `assign` back to back. With Nagle's
/// algorithm on the server's sockets the second waited for the runner's delayed ACK (~40 ms per
/// task); connections are now `TCP_NODELAY`. The median over 20 tasks stays far below 40 ms.
/// SQLite only: the runner socket is the same whatever the store, and on PostgreSQL each create
/// adds round trips to another process, which on a loaded 2-core machine alone can reach 25 ms.
#[tokio::test]
async fn an_assignment_right_after_an_ack_is_not_held_back_by_nagle() {
    let srv = TestServer::start().await;
    let (_, cred) = srv.enrol("r1").await;
    let mut runner = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    let mut waits = Vec::new();
    for _ in 0..20 {
        let t0 = std::time::Instant::now();
        let (st, v) = srv.create_task(json!({"operation_code": 1})).await;
        assert_eq!(st, 201, "{v}");
        let a = runner.next_assignment(5).await;
        waits.push(t0.elapsed());
        runner.complete(&a, json!({"noop": true})).await;
        runner.wait_ack(&a.task_id, a.attempt, 5).await;
    }
    waits.sort();
    let median = waits[waits.len() / 2];
    assert!(
        median < Duration::from_millis(25),
        "median {median:?}: {waits:?}"
    );
}

/// The raw body of an SSE stream (chunked framing removed) until a `task.completed` frame.
async fn raw_sse_until_completed(url: &str, key: &str, last_event_id: Option<i64>) -> String {
    let mut req = reqwest::Client::new().get(url).bearer_auth(key);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(at) = text.find("event: task.completed\n") {
            if text[at..].contains("\n\n") {
                let end = at + text[at..].find("\n\n").unwrap() + 2;
                text.truncate(end);
                return text;
            }
        }
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(std::str::from_utf8(&chunk).unwrap()),
            other => panic!(
                "SSE ended early: {:?}; got {text:?}",
                other.map(|o| o.is_some())
            ),
        }
    }
}

/// Frames of an SSE body, keep-alive comments left out.
fn frames(body: &str) -> Vec<&str> {
    body.split_inclusive("\n\n")
        .filter(|f| !f.starts_with(':'))
        .collect()
}

fn frame_id(frame: &str) -> i64 {
    frame
        .strip_prefix("id: ")
        .and_then(|r| r.split('\n').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("frame without id: {frame:?}"))
}

/// A live event is encoded once and the same bytes go to every stream: every subscriber must
/// still receive byte-identical frames, in id order, in the documented format; a task-filtered
/// stream gets exactly that task's frames, and a stream resumed from the log the same bytes.
#[tokio::test]
async fn every_subscriber_receives_identical_event_bytes_in_order() {
    let srv = TestServer::start().await;
    let (_, cred) = srv.enrol("r1").await;
    let mut runner = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    // An earlier task, so the filtered stream has something to leave out.
    let (st, v) = srv.create_task(json!({ "operation_code": 1 })).await;
    assert_eq!(st, 201, "{v}");
    let a = runner.next_assignment(5).await;
    runner.complete(&a, json!({ "first": true })).await;
    srv.wait_status(&a.task_id, "completed", 5).await;
    let before = srv.state.store.last_event_id().await.unwrap();

    // All start from `before` (a late `runner.idle` of the first task may land on either side
    // of a subscription); what comes after the subscription is live.
    let all = srv.url("/api/v1/events");
    let live: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(raw_sse_until_completed_owned(
                all.clone(),
                srv.read_key.clone(),
                Some(before),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, v) = srv.create_task(json!({ "operation_code": 1 })).await;
    assert_eq!(st, 201, "{v}");
    let task_id = v["task_id"].as_str().unwrap().to_owned();
    // The task's id is known only now: this stream replays its first events from the log.
    let filtered = tokio::spawn(raw_sse_until_completed_owned(
        srv.url(&format!("/api/v1/events?task_id={task_id}")),
        srv.read_key.clone(),
        Some(before),
    ));
    let a = runner.next_assignment(5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for p in 1..=20u8 {
        runner
            .progress(&a, p * 4, &format!("step \"{p}\"\u{e9}"))
            .await;
    }
    runner.complete(&a, json!({ "second": true })).await;

    let mut bodies = Vec::new();
    for h in live {
        bodies.push(h.await.unwrap());
    }
    for b in &bodies[1..] {
        assert_eq!(b, &bodies[0], "every live subscriber gets the same bytes");
    }
    let live_frames = frames(&bodies[0]);
    assert!(live_frames.len() >= 23, "{live_frames:?}");
    let ids: Vec<i64> = live_frames.iter().map(|f| frame_id(f)).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    for f in &live_frames {
        let mut lines = f.lines();
        let id = frame_id(f);
        assert_eq!(lines.next(), Some(format!("id: {id}").as_str()));
        assert!(lines.next().unwrap().starts_with("event: "), "{f:?}");
        let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["id"], id, "data repeats the id");
        assert_eq!(lines.next(), Some(""), "one data line, then the blank line");
    }
    let progress: Vec<&&str> = live_frames
        .iter()
        .filter(|f| f.contains("event: task.progress\n"))
        .collect();
    assert_eq!(progress.len(), 20);

    // Filtered and resumed from the log: this task's frames only, byte for byte the live ones.
    let filtered = filtered.await.unwrap();
    let log = srv
        .state
        .store
        .events_after(before, Some(&task_id), 10_000)
        .await
        .unwrap();
    let mine: Vec<&str> = live_frames
        .iter()
        .copied()
        .filter(|f| log.iter().any(|e| e.id == frame_id(f)))
        .collect();
    assert!(mine.len() >= 22, "{mine:?}");
    assert_eq!(frames(&filtered), mine);
    let resumed = raw_sse_until_completed(&all, &srv.read_key, Some(before)).await;
    assert_eq!(
        frames(&resumed),
        live_frames,
        "the log replays the same bytes"
    );
    drop(runner.ws.close(None).await);
}

async fn raw_sse_until_completed_owned(url: String, key: String, last: Option<i64>) -> String {
    raw_sse_until_completed(&url, &key, last).await
}

/// A one-slot runner with a backlog: its slot is refilled as soon as it reports a result (the
/// next assignment is committed with that result, not after it), yet each result is
/// acknowledged only once it is committed, the log records every result before the assignment
/// that reused its slot, and the runner never holds two tasks.
async fn a_busy_runner_works_through_a_backlog_one_result_at_a_time(backend: Backend) {
    let srv = TestServer::start_on(backend).await;
    let (_, cred) = srv.enrol("r1").await;
    let mut runner = ProtoRunner::connect(srv.addr, &cred, 1, &[]).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let (st, v) = srv.create_task(json!({ "operation_code": 1 })).await;
        assert_eq!(st, 201, "{v}");
        ids.push(v["task_id"].as_str().unwrap().to_owned());
    }
    let mut order = Vec::new();
    // The next assignment may arrive before the ack of the result that freed its slot.
    let mut next: Option<dap_protocol::Assignment> = None;
    for i in 0..ids.len() {
        let a = match next.take() {
            Some(a) => a,
            None => runner.next_assignment(10).await,
        };
        assert_eq!(a.attempt, 1);
        assert!(!order.contains(&a.task_id), "{} assigned twice", a.task_id);
        order.push(a.task_id.clone());
        // One slot: nothing else arrives while this one is held.
        if i == 0 {
            assert!(
                runner.next(1).await.is_none(),
                "a 1-slot runner got a second task"
            );
        }
        runner.complete(&a, json!({ "n": i })).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !runner.acks.contains(&(a.task_id.clone(), 1)) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match next_server_message_within(&mut runner.ws, left).await {
                Some(dap_protocol::ServerMessage::Ack { task_id, attempt }) => {
                    runner.acks.push((task_id, attempt))
                }
                Some(dap_protocol::ServerMessage::Assign(b)) => {
                    assert!(next.is_none(), "a 1-slot runner got two tasks at once");
                    next = Some(b);
                }
                other => panic!("waiting for the ack of {}: {other:?}", a.task_id),
            }
        }
        // Acknowledged means committed: the result is readable at once.
        let (st, v) = srv.result(&a.task_id).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["status"], "completed", "{v}");
        assert_eq!(v["result_data"]["n"], i, "{v}");
    }
    let mut sorted = order.clone();
    sorted.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(sorted, want, "every task ran once");
    assert!(runner.next(1).await.is_none(), "nothing left to push");
    // In the log, each task's completion precedes the assignment of the next one.
    let events = srv.state.store.events_after(0, None, 1000).await.unwrap();
    let pos = |kind: &str, task: &str| {
        events
            .iter()
            .find(|e| e.kind == kind && e.task_id.as_deref() == Some(task))
            .unwrap_or_else(|| panic!("no {kind} for {task}"))
            .id
    };
    for w in order.windows(2) {
        assert!(
            pos("task.completed", &w[0]) < pos("task.assigned", &w[1]),
            "{} was assigned before {} completed",
            w[1],
            w[0]
        );
    }
}
