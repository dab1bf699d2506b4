//! The store contract: what `Store` promises, checked on SQLite and on PostgreSQL alike (every
//! test here runs once per backend, each on a fresh database). Tasks and their filters and
//! pages, the lifecycle and its conditional writes, the event log and its replay, runners, API
//! keys, artifacts, webhooks and their outbox, start-up queries, migrations and reopening.

use std::time::Duration;

use dap_protocol::TaskError;
use dap_server::events::EventBus;
use dap_server::store::webhooks::{Attempt, AttemptOutcome, Delivery, Webhook};
use dap_server::store::{
    now_ms, Artifact, Backend, CancelOutcome, NewTask, Outcome, Scope, Store, StoreError,
    TaskFilter, TaskStatus, WriteOp,
};
use serde_json::{json, Value};

use crate::common::*;

on_both_backends!(
    tasks_are_created_read_listed_filtered_and_paged,
    lifecycle_assign_progress_finish_with_stale_writes_refused,
    a_failure_is_recorded_with_its_error,
    cancel_reports_what_it_found,
    requeue_fences_the_old_attempt_and_the_last_attempt_fails,
    event_log_is_in_commit_order_and_replays_from_any_id,
    one_bad_operation_does_not_fail_its_batch_neighbours,
    no_operation_overtakes_one_its_submitter_queued_before_it,
    runners_are_enrolled_seen_listed_and_revoked,
    api_keys_are_created_listed_and_revoked,
    artifacts_are_fenced_by_attempt_and_listed_in_byte_order,
    webhooks_crud_and_the_outbox_written_with_the_event,
    a_webhook_delivery_is_claimed_once_until_its_claim_lapses,
    start_up_queries_find_in_flight_and_timed_attempts,
    migrations_are_idempotent,
    a_committed_create_survives_reopening_the_store,
);

/// A fresh store of `backend` and what keeps its database alive.
struct Fixture {
    store: Store,
    bus: EventBus,
    db: TestDb,
    dir: std::path::PathBuf,
}

impl Fixture {
    async fn new(backend: Backend) -> Self {
        let dir = temp_dir("store");
        let db = TestDb::new(backend, &dir).await;
        let bus = EventBus::new();
        let store = Store::open(&db.url, bus.clone()).await.unwrap();
        assert_eq!(store.backend(), backend);
        Self {
            store,
            bus,
            db,
            dir,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn new_task(id: &str, params: Value) -> NewTask {
    NewTask {
        id: id.into(),
        operation_code: 100,
        params_json: params.to_string(),
        target_runner_id: None,
        assign_to: None,
        timeout_s: None,
        max_attempts: None,
        retried_from: None,
    }
}

/// A time-ordered task id, like the HTTP layer makes.
fn task_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

async fn create(store: &Store, t: NewTask) {
    assert_eq!(
        store.write(WriteOp::CreateTask(t)).await.unwrap(),
        Outcome::Done
    );
}

async fn assign(store: &Store, task: &str, runner: &str, attempt: u32) -> Outcome {
    store
        .write(WriteOp::Assign {
            task_id: task.into(),
            runner_id: runner.into(),
            attempt,
        })
        .await
        .unwrap()
}

async fn progress(store: &Store, task: &str, runner: &str, attempt: u32, pct: u8) -> Outcome {
    store
        .write(WriteOp::Progress {
            task_id: task.into(),
            runner_id: runner.into(),
            attempt,
            percent: pct,
            stage: Some(format!("at {pct}")),
            message: None,
        })
        .await
        .unwrap()
}

async fn finish(
    store: &Store,
    task: &str,
    runner: &str,
    attempt: u32,
    result: Result<Value, TaskError>,
) -> Outcome {
    store
        .write(WriteOp::Finish {
            task_id: task.into(),
            runner_id: runner.into(),
            attempt,
            result,
        })
        .await
        .unwrap()
}

async fn requeue(store: &Store, task: &str, runner: &str, attempt: u32, max: u32) -> Outcome {
    store
        .write(WriteOp::Requeue {
            task_id: task.into(),
            runner_id: runner.into(),
            attempt,
            reason: "runner_lost",
            max_attempts: Some(max),
            fail_code: "runner_lost",
            unseen: None,
        })
        .await
        .unwrap()
}

async fn task(store: &Store, id: &str) -> dap_server::store::Task {
    store.get_task(id).await.unwrap().expect("task exists")
}

/// The kinds of `task`'s events in the log, in order.
async fn event_kinds(store: &Store, task: &str) -> Vec<String> {
    let log = store.events_after(0, Some(task), 100).await.unwrap();
    log.into_iter().map(|e| e.kind).collect()
}

fn applied(b: bool) -> Outcome {
    Outcome::Applied(b)
}

async fn tasks_are_created_read_listed_filtered_and_paged(backend: Backend) {
    let f = Fixture::new(backend).await;
    let s = &f.store;
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = task_id();
        let mut t = new_task(
            &id,
            json!({ "dataset": "sales", "limit": i, "z": [1, "two"] }),
        );
        if i >= 3 {
            // Created straight onto a runner whose slot the dispatcher reserved.
            t.assign_to = Some("r1".into());
            t.target_runner_id = Some("r1".into());
            t.timeout_s = Some(60);
            t.max_attempts = Some(2);
        }
        create(s, t).await;
        ids.push(id);
    }

    let t0 = task(s, &ids[0]).await;
    assert_eq!(t0.status, TaskStatus::Queued);
    assert_eq!(t0.operation_code, 100);
    assert_eq!(
        t0.params,
        json!({ "dataset": "sales", "limit": 0, "z": [1, "two"] })
    );
    assert_eq!(
        (t0.attempt, t0.progress, t0.runner_id.as_deref()),
        (0, 0, None)
    );
    assert_eq!(t0.assigned_at, None);
    assert!(t0.created_at > 0 && t0.updated_at == t0.created_at);
    let t4 = task(s, &ids[4]).await;
    assert_eq!(t4.status, TaskStatus::Assigned);
    assert_eq!((t4.attempt, t4.runner_id.as_deref()), (1, Some("r1")));
    assert_eq!(t4.target_runner_id.as_deref(), Some("r1"));
    assert_eq!((t4.timeout_s, t4.max_attempts), (Some(60), Some(2)));
    assert!(t4.assigned_at.is_some());
    assert!(s.get_task("no-such-task").await.unwrap().is_none());

    // Newest first, with the total of all matches whatever the page.
    let page = |status, runner_id: Option<&str>, limit, offset| TaskFilter {
        status,
        runner_id: runner_id.map(str::to_owned),
        limit,
        offset,
    };
    let (all, total) = s.list_tasks(&page(None, None, 100, 0)).await.unwrap();
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(
        all.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        newest_first
    );
    assert_eq!(total, 5);
    let (p, total) = s.list_tasks(&page(None, None, 2, 1)).await.unwrap();
    assert_eq!(total, 5);
    assert_eq!(
        p.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        [ids[3].as_str(), ids[2].as_str()]
    );
    let (p, total) = s.list_tasks(&page(None, None, 10, 5)).await.unwrap();
    assert!(p.is_empty());
    assert_eq!(total, 5);
    let (q, total) = s
        .list_tasks(&page(Some(TaskStatus::Queued), None, 100, 0))
        .await
        .unwrap();
    assert_eq!(total, 3);
    assert!(q.iter().all(|t| t.status == TaskStatus::Queued));
    let (r, total) = s.list_tasks(&page(None, Some("r1"), 100, 0)).await.unwrap();
    assert_eq!(total, 2);
    assert_eq!(r[0].id, ids[4]);
    let (none, total) = s
        .list_tasks(&page(Some(TaskStatus::Queued), Some("r1"), 100, 0))
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(total, 0);

    let mut counts = s.count_tasks_by_status().await.unwrap();
    counts.sort();
    assert_eq!(
        counts,
        [("assigned".to_owned(), 2), ("queued".to_owned(), 3)]
    );
    let queued: Vec<String> = s
        .queued_tasks()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(queued, ids[..3], "queued tasks come oldest first");

    // Ids are unique.
    let dup = s
        .write(WriteOp::CreateTask(new_task(&ids[0], json!({}))))
        .await;
    assert!(
        matches!(dup, Err(StoreError::Database(_) | StoreError::Sqlite(_))),
        "{dup:?}"
    );
}

async fn lifecycle_assign_progress_finish_with_stale_writes_refused(backend: Backend) {
    let f = Fixture::new(backend).await;
    let s = &f.store;
    let id = task_id();
    create(s, new_task(&id, json!({ "dataset": "d" }))).await;

    // The first assignment is attempt 1; assigning what is no longer queued changes nothing.
    assert_eq!(
        assign(s, &id, "r1", 2).await,
        applied(false),
        "attempt must be 1"
    );
    assert_eq!(assign(s, &id, "r1", 1).await, applied(true));
    assert_eq!(
        assign(s, &id, "r2", 1).await,
        applied(false),
        "already assigned"
    );
    let t = task(s, &id).await;
    assert_eq!(t.status, TaskStatus::Assigned);
    assert_eq!((t.runner_id.as_deref(), t.attempt), (Some("r1"), 1));

    // Progress: only the holder's current attempt, only forward.
    assert_eq!(progress(s, &id, "r1", 1, 10).await, applied(true));
    assert_eq!(
        progress(s, &id, "r2", 1, 20).await,
        applied(false),
        "other runner"
    );
    assert_eq!(
        progress(s, &id, "r1", 2, 20).await,
        applied(false),
        "other attempt"
    );
    assert_eq!(progress(s, &id, "r1", 1, 60).await, applied(true));
    assert_eq!(
        progress(s, &id, "r1", 1, 40).await,
        applied(false),
        "regression"
    );
    assert_eq!(
        progress(s, &id, "r1", 1, 60).await,
        applied(true),
        "same is fine"
    );
    let t = task(s, &id).await;
    assert_eq!(t.status, TaskStatus::Running);
    assert_eq!((t.progress, t.stage.as_deref()), (60, Some("at 60")));
    assert!(t.started_at.is_some());

    // Finish: fenced the same way; a result is final.
    let result = json!({ "row_count": 3, "rows": [[1], [2], [3]] });
    assert_eq!(finish(s, &id, "r2", 1, Ok(json!({}))).await, applied(false));
    assert_eq!(finish(s, &id, "r1", 2, Ok(json!({}))).await, applied(false));
    assert_eq!(
        finish(s, &id, "r1", 1, Ok(result.clone())).await,
        applied(true)
    );
    let t = task(s, &id).await;
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.progress, 100);
    assert_eq!(t.result_data, Some(result));
    assert!(t.finished_at.is_some() && t.finished_at >= t.started_at);
    assert_eq!(t.stage.as_deref(), Some("at 60"));
    assert_eq!(
        finish(s, &id, "r1", 1, Ok(json!({ "again": true }))).await,
        applied(false)
    );
    assert_eq!(progress(s, &id, "r1", 1, 99).await, applied(false));
    assert_eq!(task(s, &id).await.result_data.unwrap()["row_count"], 3);

    assert_eq!(
        event_kinds(s, &id).await,
        [
            "task.created",
            "task.assigned",
            "task.progress",
            "task.progress",
            "task.progress",
            "task.completed"
        ]
    );
}

async fn a_failure_is_recorded_with_its_error(backend: Backend) {
    let f = Fixture::new(backend).await;
    let s = &f.store;
    let id = task_id();
    create(s, new_task(&id, json!({}))).await;
    assert_eq!(assign(s, &id, "r1", 1).await, applied(true));
    assert_eq!(progress(s, &id, "r1", 1, 30).await, applied(true));
    let err = TaskError::new("unknown_column", "no column \"x\" in dataset");
    assert_eq!(finish(s, &id, "r1", 1, Err(err)).await, applied(true));
    let t = task(s, &id).await;
    assert_eq!(t.status, TaskStatus::Failed);
    assert_eq!(t.progress, 30, "a failure keeps the progress it reached");
    assert_eq!(t.error_code.as_deref(), Some("unknown_column"));
    assert_eq!(
        t.error_message.as_deref(),
        Some("no column \"x\" in dataset")
    );
    assert_eq!(t.result_data, None);
    let last = s
        .events_after(0, Some(&id), 100)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(last.kind, "task.failed");
    let data: Value = serde_json::from_str(&last.json).unwrap();
    assert_eq!(data["error"]["code"], "unknown_column");
    assert_eq!(data["progress"], 30);
}

async fn cancel_reports_what_it_found(backend: Backend) {
    let f = Fixture::new(backend).await;
    let s = &f.store;
    let cancel = |id: &str| {
        s.write(WriteOp::Cancel {
            task_id: id.to_owned(),
        })
    };
    assert_eq!(
        cancel("nope").await.unwrap(),
        Outcome::Cancel(CancelOutcome::NotFound)
    );

    let queued = task_id();
    create(s, new_task(&queued, json!({}))).await;
    assert_eq!(
        cancel(&queued).await.unwrap(),
        Outcome::Cancel(CancelOutcome::Cancelled {
            previous: TaskStatus::Queued,
            runner: None
        })
    );
    assert_eq!(
        cancel(&queued).await.unwrap(),
        Outcome::Cancel(CancelOutcome::AlreadyFinished(TaskStatus::Cancelled))
    );
    let t = task(s, &queued).await;
    assert_eq!(t.status, TaskStatus::Cancelled);
    assert_eq!(t.error_code.as_deref(), Some("cancelled"));
    assert!(t.finished_at.is_some());
    // A cancelled task cannot be assigned.
    assert_eq!(assign(s, &queued, "r1", 1).await, applied(false));

    let running = task_id();
    create(s, new_task(&running, json!({}))).await;
    assert_eq!(assign(s, &running, "r7", 1).await, applied(true));
    assert_eq!(progress(s, &running, "r7", 1, 5).await, applied(true));
    assert_eq!(
        cancel(&running).await.unwrap(),
        Outcome::Cancel(CancelOutcome::Cancelled {
            previous: TaskStatus::Running,
            runner: Some(("r7".into(), 1))
        })
    );
    // The runner's late result is refused.
    assert_eq!(
        finish(s, &running, "r7", 1, Ok(json!({}))).await,
        applied(false)
    );
    assert_eq!(task(s, &running).await.status, TaskStatus::Cancelled);

    let done = task_id();
    create(s, new_task(&done, json!({}))).await;
    assign(s, &done, "r1", 1).await;
    finish(s, &done, "r1", 1, Ok(json!(1))).await;
    assert_eq!(
        cancel(&done).await.unwrap(),
        Outcome::Cancel(CancelOutcome::AlreadyFinished(TaskStatus::Completed))
    );
    assert_eq!(task(s, &done).await.status, TaskStatus::Completed);
}

async fn requeue_fences_the_old_attempt_and_the_last_attempt_fails(backend: Backend) {
    let f = Fixture::new(backend).await;
    let s = &f.store;
    let id = task_id();
    create(s, new_task(&id, json!({}))).await;
    assert_eq!(assign(s, &id, "r1", 1).await, applied(true));
    assert_eq!(progress(s, &id, "r1", 1, 50).await, applied(true));
    assert_eq!(
        requeue(s, &id, "r2", 1, 3).await,
        applied(false),
        "not r2's"
    );
    assert_eq!(requeue(s, &id, "r1", 1, 3).await, applied(true));
    let t = task(s, &id).await;
    assert_eq!(t.status, TaskStatus::Queued);
    assert_eq!((t.runner_id, t.attempt, t.progress), (None, 1, 0));
    assert_eq!(
        requeue(s, &id, "r1", 1, 3).await,
        applied(false),
        "already queued"
    );

    // The next assignment is attempt 2; attempt 1's writes are stale from now on.
    assert_eq!(assign(s, &id, "r2", 1).await, applied(false));
    assert_eq!(assign(s, &id, "r2", 2).await, applied(true));
    assert_eq!(progress(s, &id, "r1", 1, 90).await, applied(false));
    assert_eq!(
        finish(s, &id, "r1", 1, Ok(json!("late"))).await,
        applied(false)
    );
    assert_eq!(task(s, &id).await.attempt, 2);

    // On the last allowed attempt a requeue fails the task with the given code.
    assert_eq!(requeue(s, &id, "r2", 2, 3).await, applied(true));
    assert_eq!(assign(s, &id, "r3", 3).await, applied(true));
    assert_eq!(requeue(s, &id, "r3", 3, 3).await, Outcome::Lost);
    let t = task(s, &id).await;
    assert_eq!(t.status, TaskStatus::Failed);
    assert_eq!(t.error_code.as_deref(), Some("runner_lost"));
    assert!(t.error_message.unwrap().contains("attempt 3 of 3"));

    // The task's own max_attempts wins over the server default.
    let own = task_id();
    let mut t = new_task(&own, json!({}));
    t.max_attempts = Some(1);
    create(s, t).await;
    assign(s, &own, "r1", 1).await;
    let timeout = s
        .write(WriteOp::Requeue {
            task_id: own.clone(),
            runner_id: "r1".into(),
            attempt: 1,
            reason: "timeout",
            max_attempts: Some(5),
            fail_code: "timeout",
            unseen: None,
        })
        .await
        .unwrap();
    assert_eq!(timeout, Outcome::Lost);
    let t = task(s, &own).await;
    assert_eq!(t.error_code.as_deref(), Some("timeout"));
    assert!(t.error_message.unwrap().contains("timeout_s"));
}

async fn event_log_is_in_commit_order_and_replays_from_any_id(backend: Backend) {
    let f = Fixture::new(backend).await;
    let s = &f.store;
    let mut live = f.bus.subscribe();
    assert_eq!(s.last_event_id().await.unwrap(), 0);

    // Many writers at once: the writer folds them into few transactions. Every other create is
    // also an assignment (two events from one op), so a batch's events are not one per op.
    let ids: Vec<String> = (0..300).map(|_| task_id()).collect();
    let mut waiting = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut t = new_task(id, json!({ "n": 1 }));
        if i % 2 == 0 {
            t.assign_to = Some("r0".into());
        }
        let rx = s.writer().enqueue(WriteOp::CreateTask(t)).await.unwrap();
        waiting.push(rx);
    }
    for rx in waiting {
        assert_eq!(rx.await.unwrap().unwrap(), Outcome::Done);
    }
    assign(s, &ids[7], "r1", 1).await;
    progress(s, &ids[7], "r1", 1, 50).await;
    finish(s, &ids[7], "r1", 1, Ok(json!({ "ok": true }))).await;

    let log = s.events_after(0, None, 10_000).await.unwrap();
    assert_eq!(log.len(), 453);
    assert!(log.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    // Each row's id, kind and task go with its own payload (no event got another's data), and
    // an op's two events are adjacent, in the order the op appended them.
    for e in &log {
        let data: Value = serde_json::from_str(&e.json).unwrap();
        assert_eq!(data["type"], e.kind.as_str(), "{e:?}");
        assert_eq!(data["task_id"].as_str(), e.task_id.as_deref(), "{e:?}");
    }
    for w in log.windows(2) {
        if w[1].kind == "task.assigned" && w[1].task_id.as_deref() != Some(&ids[7]) {
            assert_eq!(w[0].kind, "task.created");
            assert_eq!(w[0].task_id, w[1].task_id);
        }
    }
    assert_eq!(s.last_event_id().await.unwrap(), log.last().unwrap().id);
    // Creates were committed in the order they were queued.
    let created: Vec<&str> = log
        .iter()
        .filter(|e| e.kind == "task.created")
        .map(|e| e.task_id.as_deref().unwrap())
        .collect();
    assert_eq!(created, ids.iter().map(String::as_str).collect::<Vec<_>>());

    // What was published live is exactly the log: same ids, same order, same bytes.
    let mut published = Vec::new();
    while published.len() < log.len() {
        let e = tokio::time::timeout(Duration::from_secs(5), live.recv())
            .await
            .expect("published")
            .unwrap();
        published.push(e);
    }
    for (p, l) in published.iter().zip(&log) {
        assert_eq!(
            (p.event.id, &p.event.kind, &p.event.json),
            (l.id, &l.kind, &l.json)
        );
    }
    let last: Value = serde_json::from_str(&log.last().unwrap().json).unwrap();
    assert_eq!(last["type"], "task.completed");
    assert_eq!(last["task_id"], ids[7].as_str());
    assert!(last["at"].as_i64().unwrap() > 0);

    // Replay from any id returns exactly the suffix; by task; in pages.
    let mid = log[150].id;
    let rest = s.events_after(mid, None, 10_000).await.unwrap();
    assert_eq!(rest, log[151..]);
    let page = s.events_after(mid, None, 10).await.unwrap();
    assert_eq!(page, log[151..161]);
    let one = s.events_after(0, Some(&ids[7]), 100).await.unwrap();
    let kinds: Vec<&str> = one.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "task.created",
            "task.assigned",
            "task.progress",
            "task.completed"
        ]
    );
    let after = s.events_after(one[1].id, Some(&ids[7]), 100).await.unwrap();
    assert_eq!(after, one[2..]);
    assert!(s
        .events_after(s.last_event_id().await.unwrap(), None, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.event_data(one[0].id).await.unwrap().unwrap()["type"],
        "task.created"
    );
    assert!(s.event_data(1 << 40).await.unwrap().is_none());
}

async fn no_operation_overtakes_one_its_submitter_queued_before_it(backend: Backend) {
    let f = Fixture::new(backend).await;
    let s = &f.store;
    // Many submitters at once, each queueing whole task lives without waiting for a commit.
    // Some operations commit in groups on the writer's own thread; on SQLite others commit on
    // the submitter's thread while the writer is idle. An assignment that overtook its create,
    // or a progress that overtook its assignment or came after its completion, is refused.
    // Each submitter has a thread of its own, so they really run at once.
    let mut submitters = Vec::new();
    for n in 0..32 {
        let w = s.writer().clone();
        let rt = tokio::runtime::Handle::current();
        submitters.push(tokio::task::spawn_blocking(move || {
            rt.block_on(async move {
                let mut ids = Vec::new();
                let mut replies = Vec::new();
                for _ in 0..25 {
                    let id = task_id();
                    let (task_id, runner_id) = (id.clone(), format!("r{}", n % 4));
                    let mut ops = vec![
                        WriteOp::CreateTask(new_task(&id, json!({}))),
                        WriteOp::Assign {
                            task_id: task_id.clone(),
                            runner_id: runner_id.clone(),
                            attempt: 1,
                        },
                    ];
                    for percent in [20, 40, 60, 80] {
                        ops.push(WriteOp::Progress {
                            task_id: task_id.clone(),
                            runner_id: runner_id.clone(),
                            attempt: 1,
                            percent,
                            stage: None,
                            message: None,
                        });
                    }
                    ops.push(WriteOp::Finish {
                        task_id,
                        runner_id,
                        attempt: 1,
                        result: Ok(json!({ "n": n })),
                    });
                    for (i, op) in ops.into_iter().enumerate() {
                        replies.push(w.enqueue(op).await.unwrap());
                        if (i + n) % 3 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                    ids.push(id);
                }
                for rx in replies {
                    let o = rx.await.unwrap().unwrap();
                    assert!(matches!(o, Outcome::Done | Outcome::Applied(true)), "{o:?}");
                }
                ids
            })
        }));
    }
    for sub in submitters {
        for id in sub.await.unwrap() {
            assert_eq!(
                event_kinds(s, &id).await,
                [
                    "task.created",
                    "task.assigned",
                    "task.progress",
                    "task.progress",
                    "task.progress",
                    "task.progress",
                    "task.completed"
                ]
            );
            assert_eq!(task(s, &id).await.status, TaskStatus::Completed);
        }
    }
}

async fn one_bad_operation_does_not_fail_its_batch_neighbours(backend: Backend) {
    let f = Fixture::new(backend).await;
    let s = &f.store;
    let a = task_id();
    create(s, new_task(&a, json!({}))).await;
    // Queued back to back so they share a batch: a duplicate id between two good creates.
    let b = task_id();
    let c = task_id();
    let w = s.writer();
    let rb = w
        .enqueue(WriteOp::CreateTask(new_task(&b, json!({}))))
        .await
        .unwrap();
    let rdup = w
        .enqueue(WriteOp::CreateTask(new_task(&a, json!({}))))
        .await
        .unwrap();
    let rc = w
        .enqueue(WriteOp::CreateTask(new_task(&c, json!({}))))
        .await
        .unwrap();
    assert_eq!(rb.await.unwrap().unwrap(), Outcome::Done);
    assert!(rdup.await.unwrap().is_err());
    assert_eq!(rc.await.unwrap().unwrap(), Outcome::Done);
    assert!(s.get_task(&b).await.unwrap().is_some());
    assert!(s.get_task(&c).await.unwrap().is_some());
    // The failed create left no event; the log still increases.
    let log = s.events_after(0, None, 100).await.unwrap();
    let created: Vec<&str> = log.iter().map(|e| e.task_id.as_deref().unwrap()).collect();
    assert_eq!(created, [a.as_str(), b.as_str(), c.as_str()]);
    assert!(log.windows(2).all(|w| w[0].id < w[1].id));
}

async fn runners_are_enrolled_seen_listed_and_revoked(backend: Backend) {
    let f = Fixture::new(backend).await;
    let s = &f.store;
    s.create_runner("rb", "second", "hash-b").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    s.create_runner("ra", "first?", "hash-a").await.unwrap();
    assert!(s.create_runner("ra", "dup", "h").await.is_err());
    let r = s.get_runner("ra").await.unwrap().unwrap();
    assert_eq!((r.name.as_str(), r.hash.as_str()), ("first?", "hash-a"));
    assert_eq!((r.revoked_at, r.last_seen_at, r.hello), (None, None, None));
    assert!(s.get_runner("zz").await.unwrap().is_none());

    let hello = json!({ "slots": 2, "operations": [100, 200], "datasets": ["sales"] });
    let out = s
        .write(WriteOp::RunnerState {
            runner_id: "ra".into(),
            kind: "runner.online",
            data: json!({ "runner_id": "ra", "status": "idle" }),
            hello: Some(hello.to_string()),
        })
        .await
        .unwrap();
    assert_eq!(out, Outcome::Done);
    // A later state without a greeting keeps the last greeting.
    s.write(WriteOp::RunnerState {
        runner_id: "ra".into(),
        kind: "runner.busy",
        data: json!({ "runner_id": "ra", "status": "busy" }),
        hello: None,
    })
    .await
    .unwrap();
    let r = s.get_runner("ra").await.unwrap().unwrap();
    assert_eq!(r.hello, Some(hello));
    assert!(r.last_seen_at.is_some());
    let log = s.events_after(0, None, 10).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["runner.online", "runner.busy"]
    );
    assert_eq!(log[0].task_id, None);

    let listed: Vec<String> = s
        .list_runners()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, ["rb", "ra"], "oldest enrolment first");
    assert!(s.revoke_runner("rb").await.unwrap());
    assert!(!s.revoke_runner("rb").await.unwrap());
    assert!(!s.revoke_runner("zz").await.unwrap());
    let listed: Vec<String> = s
        .list_runners()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, ["ra"]);
    assert!(s
        .get_runner("rb")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
}

async fn api_keys_are_created_listed_and_revoked(backend: Backend) {
    let f = Fixture::new(backend).await;
    let s = &f.store;
    s.create_api_key("k1", "reader", Scope::Read, "h1")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    s.create_api_key("k0", "admin", Scope::Admin, "h0")
        .await
        .unwrap();
    assert!(s
        .create_api_key("k1", "dup", Scope::Write, "h")
        .await
        .is_err());
    let k = s.get_api_key("k0").await.unwrap().unwrap();
    assert_eq!(
        (k.name.as_str(), k.scope, k.hash.as_str()),
        ("admin", Scope::Admin, "h0")
    );
    assert_eq!((k.last_used_at, k.revoked_at), (None, None));
    assert!(s.get_api_key("k9").await.unwrap().is_none());
    let ids: Vec<String> = s
        .list_api_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(ids, ["k1", "k0"]);
    assert!(s.revoke_api_key("k1").await.unwrap());
    assert!(!s.revoke_api_key("k1").await.unwrap());
    // Revoked keys stay listed (with the time they were revoked).
    let keys = s.list_api_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys[0].revoked_at.is_some() && keys[1].revoked_at.is_none());
}

fn artifact(task: &str, name: &str, attempt: u32, blob: &str) -> Artifact {
    Artifact {
        task_id: task.into(),
        name: name.into(),
        attempt,
        size: 1234,
        sha256: "ab".repeat(32),
        content_type: "text/csv".into(),
        blob_key: blob.into(),
        created_at: now_ms(),
    }
}

async fn artifacts_are_fenced_by_attempt_and_listed_in_byte_order(backend: Backend) {
    let f = Fixture::new(backend).await;
    let s = &f.store;
    let id = task_id();
    create(s, new_task(&id, json!({}))).await;
    // Not assigned yet: nobody may upload.
    assert_eq!(
        s.record_artifact(&artifact(&id, "out.csv", 1, "b1"), "r1")
            .await
            .unwrap(),
        (false, None)
    );
    assign(s, &id, "r1", 1).await;
    assert_eq!(
        s.record_artifact(&artifact(&id, "out.csv", 1, "b1"), "r2")
            .await
            .unwrap(),
        (false, None),
        "other runner"
    );
    assert_eq!(
        s.record_artifact(&artifact(&id, "out.csv", 2, "b1"), "r1")
            .await
            .unwrap(),
        (false, None),
        "other attempt"
    );
    assert_eq!(
        s.record_artifact(&artifact(&id, "out.csv", 1, "b1"), "r1")
            .await
            .unwrap(),
        (true, None)
    );
    // The same name again replaces the row and hands back the old blob to delete.
    assert_eq!(
        s.record_artifact(&artifact(&id, "out.csv", 1, "b2"), "r1")
            .await
            .unwrap(),
        (true, Some("b1".into()))
    );
    for name in ["b", "B", "a", "_x"] {
        let (ok, _) = s
            .record_artifact(&artifact(&id, name, 1, &format!("blob-{name}")), "r1")
            .await
            .unwrap();
        assert!(ok);
    }
    let a = s.get_artifact(&id, "out.csv").await.unwrap().unwrap();
    assert_eq!((a.attempt, a.size, a.blob_key.as_str()), (1, 1234, "b2"));
    assert_eq!(a.sha256, "ab".repeat(32));
    assert!(s.get_artifact(&id, "missing").await.unwrap().is_none());
    let names: Vec<String> = s
        .list_artifacts(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(
        names,
        ["B", "_x", "a", "b", "out.csv"],
        "byte order, as SQLite"
    );

    // After a requeue the old attempt is fenced out; the new one may upload.
    requeue(s, &id, "r1", 1, 3).await;
    assign(s, &id, "r2", 2).await;
    assert_eq!(
        s.record_artifact(&artifact(&id, "out.csv", 1, "b3"), "r1")
            .await
            .unwrap(),
        (false, None)
    );
    assert_eq!(
        s.record_artifact(&artifact(&id, "out.csv", 2, "b4"), "r2")
            .await
            .unwrap(),
        (true, Some("b2".into()))
    );
    finish(s, &id, "r2", 2, Ok(json!({}))).await;
    assert_eq!(
        s.record_artifact(&artifact(&id, "late", 2, "b5"), "r2")
            .await
            .unwrap(),
        (false, None),
        "finished"
    );
}

fn webhook(id: &str, events: &[&str]) -> Webhook {
    let now = now_ms();
    Webhook {
        id: id.into(),
        url: "https://hooks.example/dap".into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        secret: "whsec_c2VjcmV0".into(),
        enabled: true,
        disabled_reason: None,
        created_at: now,
        updated_at: now,
    }
}

async fn webhooks_crud_and_the_outbox_written_with_the_event(backend: Backend) {
    let f = Fixture::new(backend).await;
    let s = &f.store;
    s.create_webhook(&webhook("wh1", &["task.completed"]))
        .await
        .unwrap();
    s.create_webhook(&webhook("wh2", &["*"])).await.unwrap();
    assert_eq!(
        s.get_webhook("wh1").await.unwrap().unwrap(),
        webhook_like(s, "wh1").await
    );
    assert_eq!(s.list_webhooks().await.unwrap().len(), 2);
    assert_eq!(s.outbox().subscriptions().len(), 2);

    // A completed and a cancelled task: wh1 wants the first, wh2 both; progress is not a
    // webhook event at all.
    let done = task_id();
    create(s, new_task(&done, json!({}))).await;
    assign(s, &done, "r1", 1).await;
    progress(s, &done, "r1", 1, 50).await;
    finish(s, &done, "r1", 1, Ok(json!({ "n": 1 }))).await;
    let gone = task_id();
    create(s, new_task(&gone, json!({}))).await;
    s.write(WriteOp::Cancel {
        task_id: gone.clone(),
    })
    .await
    .unwrap();

    let due = s
        .claim_due_deliveries(now_ms() + 1, LEASE, 100)
        .await
        .unwrap();
    let mut seen: Vec<(String, String)> = due
        .iter()
        .map(|(d, _)| (d.webhook_id.clone(), d.event_type.clone()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("wh1".to_owned(), "task.completed".to_owned()),
            ("wh2".to_owned(), "task.cancelled".to_owned()),
            ("wh2".to_owned(), "task.completed".to_owned()),
        ]
    );
    let (d, w) = due
        .iter()
        .find(|(d, _)| d.webhook_id == "wh1")
        .cloned()
        .unwrap();
    assert_eq!(w.id, "wh1");
    assert_eq!(w.secret, "whsec_c2VjcmV0");
    assert_eq!(
        (d.status.as_str(), d.attempts, d.payload.as_deref()),
        ("pending", 0, None)
    );
    assert_eq!(d.task_id.as_deref(), Some(done.as_str()));
    let ev = s.event_data(d.event_id).await.unwrap().unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["task_id"].as_str()),
        (Some("task.completed"), Some(done.as_str()))
    );
    assert!(s.next_delivery_due().await.unwrap().is_some());

    // An attempt that failed and will be retried, then one that delivered.
    s.set_delivery_payload(d.id, "{\"x\":1}").await.unwrap();
    s.set_delivery_payload(d.id, "{\"x\":2}").await.unwrap(); // fixed at the first
    let retry_at = now_ms() + 60_000;
    let first = Attempt {
        attempt: 1,
        at: now_ms(),
        status_code: Some(503),
        latency_ms: 12,
        error: Some("HTTP 503".into()),
    };
    assert!(s
        .record_delivery_attempt(&d, &first, AttemptOutcome::RetryAt(retry_at))
        .await
        .unwrap());
    assert!(s
        .claim_due_deliveries(now_ms() + 1, LEASE, 100)
        .await
        .unwrap()
        .iter()
        .all(|(x, _)| x.id != d.id));
    // Due again at `retry_at`, under a new claim.
    let again = s.claim_due_deliveries(retry_at, LEASE, 100).await.unwrap();
    let d = again.iter().find(|(x, _)| x.id == d.id).unwrap().0.clone();
    assert_eq!((d.attempts, d.status.as_str()), (1, "pending"));
    let second = Attempt {
        attempt: 2,
        at: now_ms(),
        status_code: Some(200),
        latency_ms: 7,
        error: None,
    };
    assert!(s
        .record_delivery_attempt(&d, &second, AttemptOutcome::Delivered)
        .await
        .unwrap());
    // The claim ended with that attempt: recording under it again changes nothing.
    assert!(!s
        .record_delivery_attempt(&d, &second, AttemptOutcome::Failed)
        .await
        .unwrap());
    let list = s.list_deliveries("wh1", 10).await.unwrap();
    assert_eq!(list.len(), 1);
    let (got, attempts) = &list[0];
    assert_eq!(got.status, "delivered");
    assert_eq!(got.payload.as_deref(), Some("{\"x\":1}"));
    assert_eq!((got.attempts, got.last_status_code), (2, Some(200)));
    assert!(got.delivered_at.is_some());
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.attempt, a.status_code))
            .collect::<Vec<_>>(),
        [(1, Some(503)), (2, Some(200))]
    );
    assert_eq!(attempts[0].error.as_deref(), Some("HTTP 503"));

    // Redeliver puts it back; an unknown one is refused.
    assert!(s.redeliver("wh1", d.id).await.unwrap());
    assert!(!s.redeliver("wh2", d.id).await.unwrap());
    assert!(s
        .claim_due_deliveries(now_ms() + 1, LEASE, 100)
        .await
        .unwrap()
        .iter()
        .any(|(x, _)| x.id == d.id));
    // Unclaimed again, so that what follows sees every pending row.
    assert!(s.release_delivery_claims().await.unwrap() >= 1);

    // Disabled: no new rows for it and its pending ones are not due; deleted: pending ones fail.
    let mut off = s.get_webhook("wh1").await.unwrap().unwrap();
    off.enabled = false;
    off.disabled_reason = Some("410 Gone".into());
    assert!(s.update_webhook(&off).await.unwrap());
    assert!(!s.update_webhook(&webhook("nope", &["*"])).await.unwrap());
    assert_eq!(s.outbox().subscriptions().len(), 1);
    let due = s
        .claim_due_deliveries(now_ms() + 1, LEASE, 100)
        .await
        .unwrap();
    assert!(!due.is_empty() && due.iter().all(|(x, _)| x.webhook_id == "wh2"));
    assert!(s.delete_webhook("wh2").await.unwrap());
    assert!(!s.delete_webhook("wh2").await.unwrap());
    assert!(s
        .claim_due_deliveries(now_ms() + 2 * LEASE, LEASE, 100)
        .await
        .unwrap()
        .is_empty());
    let failed = s.list_deliveries("wh2", 10).await.unwrap();
    assert_eq!(failed.len(), 2);
    assert!(failed
        .iter()
        .all(|(d, _)| d.status == "failed" && d.last_error.as_deref() == Some("webhook deleted")));
    assert!(failed[0].0.id > failed[1].0.id, "newest first");
}

/// `wh1` as created by the test above, for comparison.
/// How long the contract tests' delivery claims last (ms).
const LEASE: i64 = 60_000;

/// Two workers (two servers on one database) never hold one delivery at once; a claim whose
/// worker died lapses and the delivery is claimed again; the dead claim can no longer record.
async fn a_webhook_delivery_is_claimed_once_until_its_claim_lapses(backend: Backend) {
    let f = Fixture::new(backend).await;
    let s = &f.store;
    s.create_webhook(&webhook("wh", &["task.cancelled"]))
        .await
        .unwrap();
    for _ in 0..3 {
        let id = task_id();
        create(s, new_task(&id, json!({}))).await;
        s.write(WriteOp::Cancel { task_id: id }).await.unwrap();
    }
    let now = now_ms() + 1;
    let first = s.claim_due_deliveries(now, LEASE, 2).await.unwrap();
    let second = s.claim_due_deliveries(now, LEASE, 2).await.unwrap();
    assert_eq!(
        (first.len(), second.len()),
        (2, 1),
        "oldest first, never twice"
    );
    assert!(s
        .claim_due_deliveries(now, LEASE, 100)
        .await
        .unwrap()
        .is_empty());
    let ids = |v: &[(Delivery, Webhook)]| v.iter().map(|(d, _)| d.id).collect::<Vec<_>>();
    let mut all = [ids(&first), ids(&second)].concat();
    all.sort();
    assert_eq!(
        all,
        ids(&first)
            .into_iter()
            .chain(ids(&second))
            .collect::<Vec<_>>()
    );
    assert!(first
        .iter()
        .all(|(d, _)| d.claimed_until == Some(now + LEASE) && d.claimed_by.is_some()));
    assert_ne!(first[0].0.claimed_by, second[0].0.claimed_by);
    assert_eq!(s.next_delivery_due().await.unwrap(), Some(now + LEASE));

    // The first claimant delivers one; the second dies holding its claim.
    let ok = Attempt {
        attempt: 1,
        at: now_ms(),
        status_code: Some(200),
        latency_ms: 3,
        error: None,
    };
    assert!(s
        .record_delivery_attempt(&first[0].0, &ok, AttemptOutcome::Delivered)
        .await
        .unwrap());
    // Still held until the claims lapse; then the rest is claimed again, by a new claim.
    assert!(s
        .claim_due_deliveries(now + LEASE - 1, LEASE, 100)
        .await
        .unwrap()
        .is_empty());
    let later = now + LEASE;
    let retaken = s.claim_due_deliveries(later, LEASE, 100).await.unwrap();
    let mut want = vec![first[1].0.id, second[0].0.id];
    want.sort();
    assert_eq!(ids(&retaken), want);
    assert!(retaken
        .iter()
        .all(|(d, _)| d.claimed_by != first[1].0.claimed_by
            && d.claimed_by != second[0].0.claimed_by));
    // The lapsed claim records nothing; the new one does.
    assert!(!s
        .record_delivery_attempt(&second[0].0, &ok, AttemptOutcome::Delivered)
        .await
        .unwrap());
    let fresh = retaken
        .iter()
        .find(|(d, _)| d.id == second[0].0.id)
        .unwrap();
    assert!(s
        .record_delivery_attempt(&fresh.0, &ok, AttemptOutcome::Delivered)
        .await
        .unwrap());
    let log = s.list_deliveries("wh", 10).await.unwrap();
    let (d, attempts) = log.iter().find(|(d, _)| d.id == second[0].0.id).unwrap();
    assert_eq!((d.status.as_str(), attempts.len()), ("delivered", 1));
    assert_eq!((d.claimed_by.as_deref(), d.claimed_until), (None, None));

    // A server alone on its database ends what its previous process left claimed.
    assert_eq!(s.release_delivery_claims().await.unwrap(), 1);
    let left = s.claim_due_deliveries(later, LEASE, 100).await.unwrap();
    assert_eq!(ids(&left), [first[1].0.id]);
}

async fn webhook_like(s: &Store, id: &str) -> Webhook {
    let got = s.get_webhook(id).await.unwrap().unwrap();
    Webhook {
        created_at: got.created_at,
        updated_at: got.updated_at,
        ..webhook(id, &["task.completed"])
    }
}

async fn start_up_queries_find_in_flight_and_timed_attempts(backend: Backend) {
    let f = Fixture::new(backend).await;
    let s = &f.store;
    let queued = task_id();
    create(s, new_task(&queued, json!({}))).await;
    let assigned = task_id();
    let mut t = new_task(&assigned, json!({}));
    t.timeout_s = Some(30);
    create(s, t).await;
    assign(s, &assigned, "r1", 1).await;
    let running = task_id();
    create(s, new_task(&running, json!({}))).await;
    assign(s, &running, "r2", 1).await;
    progress(s, &running, "r2", 1, 10).await;
    let done = task_id();
    let mut t = new_task(&done, json!({}));
    t.timeout_s = Some(5);
    create(s, t).await;
    assign(s, &done, "r1", 1).await;
    finish(s, &done, "r1", 1, Ok(json!({}))).await;

    assert_eq!(
        s.in_flight_tasks().await.unwrap(),
        [
            (assigned.clone(), "r1".to_owned(), 1),
            (running.clone(), "r2".to_owned(), 1)
        ]
    );
    let timed = s.timed_in_flight().await.unwrap();
    assert_eq!(timed.len(), 1);
    let (id, attempt, assigned_at, timeout) = &timed[0];
    assert_eq!((id, *attempt, *timeout), (&assigned, 1, 30));
    assert_eq!(Some(*assigned_at), task(s, &assigned).await.assigned_at);
    s.ping().await.unwrap();
}

async fn migrations_are_idempotent(backend: Backend) {
    let f = Fixture::new(backend).await;
    let id = task_id();
    create(&f.store, new_task(&id, json!({}))).await;
    // Applying them again (the `migrate` subcommand, or another start) changes nothing.
    Store::migrate(&f.db.url).await.unwrap();
    Store::migrate(&f.db.url).await.unwrap();
    let again = Store::open(&f.db.url, EventBus::new()).await.unwrap();
    assert!(again.get_task(&id).await.unwrap().is_some());
    again.close().await;
}

async fn a_committed_create_survives_reopening_the_store(backend: Backend) {
    let f = Fixture::new(backend).await;
    let id = task_id();
    create(&f.store, new_task(&id, json!({ "keep": "me" }))).await;
    assign(&f.store, &id, "r1", 1).await;
    let before = f.store.events_after(0, None, 100).await.unwrap();
    f.store.close().await;

    let reopened = Store::open(&f.db.url, EventBus::new()).await.unwrap();
    let t = task(&reopened, &id).await;
    assert_eq!(
        (t.status, t.params["keep"].as_str()),
        (TaskStatus::Assigned, Some("me"))
    );
    assert_eq!(reopened.events_after(0, None, 100).await.unwrap(), before);
    assert_eq!(
        reopened.in_flight_tasks().await.unwrap(),
        [(id.clone(), "r1".to_owned(), 1)]
    );
    // The log goes on after the ids it already has.
    finish(&reopened, &id, "r1", 1, Ok(json!({}))).await;
    let after = reopened.events_after(0, None, 100).await.unwrap();
    assert_eq!(after.len(), before.len() + 1);
    assert!(after.last().unwrap().id > before.last().unwrap().id);
    reopened.close().await;
}

#[tokio::test]
async fn an_unsupported_url_is_refused_without_echoing_it() {
    let err = Store::open("mysql://dap:s3cret@db.example/dap", EventBus::new())
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{msg}");
    assert!(
        msg.contains("\"mysql\"") && !msg.contains("s3cret"),
        "{msg}"
    );
    assert_eq!(
        Backend::of_url("postgresql://h/db").unwrap(),
        Backend::Postgres
    );
    assert_eq!(
        Backend::of_url("postgres://h/db").unwrap(),
        Backend::Postgres
    );
    assert_eq!(Backend::of_url("sqlite::memory:").unwrap(), Backend::Sqlite);
}

/// PostgreSQL only (SQLite has no connection to lose): when the server ends the store's
/// sessions (a restart, a failover, an administrator), the next writes and reads open new
/// connections instead of failing for good.
#[tokio::test]
async fn postgres_store_reconnects_after_its_connections_are_killed() {
    if postgres_url().is_none() {
        return;
    }
    let f = Fixture::new(Backend::Postgres).await;
    let before = task_id();
    create(&f.store, new_task(&before, json!({}))).await;
    {
        use sqlx::ConnectOptions;
        let opts: sqlx::postgres::PgConnectOptions = f.db.url.parse().unwrap();
        let mut admin = opts.connect().await.unwrap();
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut admin)
        .await
        .unwrap();
        assert!(killed.len() >= 2, "the writer's and a reader's sessions");
    }
    let after = task_id();
    create(&f.store, new_task(&after, json!({}))).await;
    assert!(f.store.get_task(&before).await.unwrap().is_some());
    assert!(f.store.get_task(&after).await.unwrap().is_some());
    assert_eq!(f.store.events_after(0, None, 10).await.unwrap().len(), 2);
}
