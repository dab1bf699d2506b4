//! Runs assigned tasks: at most `slots` at once, each on a blocking thread, with throttled
//! progress, cancellation and a typed result pushed to the [`Outbox`].
//!
//! An operation may leave files in its task's [`Scratch`] directory and return them as
//! artifacts. The driver uploads them (stage "uploading") while the task still holds its slot —
//! the server refuses uploads once it has heard the result — and then reports `completed` with
//! the result's `artifacts` listing what the server stored. A failed upload fails the task with
//! `artifact_upload_failed`; a `stale_attempt` refusal means the attempt was superseded, so
//! nothing is reported (unless the link was down, in which case the upload is retried once the
//! runner is connected again: the server only accepts uploads from connected runners). A server
//! that stays unreachable through the upload's retries while the link is (or went) down is
//! waited for the same way, so a server restart longer than the retries does not fail the task.
//! The scratch directory is removed when the task ends, however it ends.
//!
//! The socket loop calls [`Executor::assign`] and [`Executor::cancel`], which return at once;
//! the work happens in a spawned task per assignment that keeps running if the connection drops
//! (its messages wait in the outbox). The server's view of which attempt is current wins: a
//! newer attempt of a running task replaces it, and an over-assignment after a reconnect stops
//! the oldest task carried over from the previous connection (the server evidently dropped it)
//! before refusing anything. This module does not read sockets or parse params: the operations
//! do that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dap_protocol::{
    failure, op, Assignment, Completed, Failed, HandBack, Progress, RunnerMessage, RunningTask,
    TaskError,
};
use indicatif::{MultiProgress, ProgressBar};
use tokio::sync::{mpsc, watch, Notify};

use crate::artifacts::{Scratch, UploadError, Uploaded, Uploader};
use crate::catalog::Catalog;
use crate::operations::Output;
use crate::outbox::Outbox;
use crate::progress::{ProgressReporter, ProgressThrottle, ProgressUpdate, PROGRESS_INTERVAL};
use crate::{operations, terminal};

/// A task attempt: the server may send a new attempt of the same task after requeueing it.
type TaskKey = (String, u32);

/// How many times one artifact's upload is retried after a `stale_attempt` refusal that may
/// have been caused by the link being down.
const MAX_STALE_RETRIES: u32 = 3;
/// How often a task waiting on the network checks its cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// A task executing now.
struct RunningEntry {
    cancel: Arc<AtomicBool>,
    /// The connection it was assigned on (see [`Executor::connected`]).
    epoch: u64,
    started: Instant,
}

type RunningMap = HashMap<TaskKey, RunningEntry>;

/// Runs tasks; cheap to clone (shared state).
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    slots: usize,
    catalog: Arc<Catalog>,
    outbox: Arc<Outbox>,
    uploader: Arc<Uploader>,
    /// True while the WebSocket is up (between `welcome` and the end of the session).
    link_up: watch::Sender<bool>,
    /// Tasks executing now.
    running: Mutex<RunningMap>,
    /// Counts connections to the server, so a task knows whether it was assigned on this one.
    epoch: AtomicU64,
    /// Set when the runner stops: tasks are interrupted but not reported as cancelled, so the
    /// server requeues them instead of showing a cancel nobody asked for.
    shutting_down: AtomicBool,
    /// Set when the runner starts stopping: new assignments are handed back, not started.
    draining: AtomicBool,
    /// Woken whenever a task ends.
    task_ended: Notify,
    bars: Option<MultiProgress>,
}

impl Inner {
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Whether the link is up, and which connection it is.
    fn link(&self) -> (bool, u64) {
        (*self.link_up.borrow(), self.epoch())
    }

    fn running(&self) -> std::sync::MutexGuard<'_, RunningMap> {
        // Every critical section is a single map operation, so a poisoned map is still valid.
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn progress(&self, a: &Assignment, u: ProgressUpdate, bar: Option<&ProgressBar>) {
        self.send_progress(a, u, bar, false);
    }

    /// `milestone`: see [`Outbox::push_milestone`].
    fn send_progress(
        &self,
        a: &Assignment,
        u: ProgressUpdate,
        bar: Option<&ProgressBar>,
        milestone: bool,
    ) {
        if let Some(bar) = bar {
            bar.set_position(u64::from(u.percent));
            if let Some(stage) = &u.stage {
                bar.set_message(stage.clone());
            }
        }
        tracing::debug!(task_id = %a.task_id, percent = u.percent, stage = ?u.stage, "progress");
        let message = RunnerMessage::Progress(Progress {
            task_id: a.task_id.clone(),
            attempt: a.attempt,
            percent: u.percent,
            stage: u.stage,
            message: u.message,
        });
        if milestone {
            self.outbox.push_milestone(message);
        } else {
            self.outbox.push(message);
        }
    }

    fn completed(&self, task_id: String, attempt: u32, result_data: serde_json::Value) {
        self.outbox.push(RunnerMessage::Completed(Completed {
            task_id,
            attempt,
            result_data,
        }));
    }

    fn hand_back(&self, task_id: String, attempt: u32) {
        self.outbox.push(RunnerMessage::HandBack(HandBack {
            task_id,
            attempt,
            reason: "runner stopping".into(),
        }));
    }

    fn failed(&self, task_id: String, attempt: u32, error: TaskError) {
        self.outbox.push(RunnerMessage::Failed(Failed {
            task_id,
            attempt,
            error,
        }));
    }
}

impl Executor {
    /// `show_bars` draws a terminal progress bar per running task.
    pub fn new(
        slots: u32,
        catalog: Arc<Catalog>,
        outbox: Arc<Outbox>,
        uploader: Arc<Uploader>,
        show_bars: bool,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                slots: slots.max(1) as usize,
                catalog,
                outbox,
                uploader,
                link_up: watch::Sender::new(false),
                running: Mutex::new(HashMap::new()),
                epoch: AtomicU64::new(0),
                shutting_down: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                task_ended: Notify::new(),
                bars: show_bars.then(terminal::multi_progress),
            }),
        }
    }

    /// Start an assigned task. Returns at once; must be called inside a tokio runtime.
    pub fn assign(&self, a: Assignment) {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::Relaxed) {
            // Not reported: the server requeues what it assigned to a runner that went away.
            tracing::warn!(task_id = %a.task_id, "assignment while shutting down; ignored");
            return;
        }
        if inner.draining.load(Ordering::Relaxed) {
            // Sent before the server heard our `draining`: give it straight back.
            tracing::info!(task_id = %a.task_id, attempt = a.attempt, "assignment while stopping; handing it back");
            inner.hand_back(a.task_id, a.attempt);
            return;
        }
        let key: TaskKey = (a.task_id.clone(), a.attempt);
        let cancel = {
            let mut running = inner.running();
            if running.contains_key(&key) {
                // A repeated assignment (e.g. after a reconnect) of an attempt already executing.
                tracing::warn!(task_id = %a.task_id, attempt = a.attempt, "already running; duplicate assignment ignored");
                return;
            }
            // A newer attempt of a task we are still running means the server gave up on the
            // old one (e.g. it requeued it when our link dropped) and will refuse its results:
            // stop it and let the new attempt have its slot.
            let older: Vec<TaskKey> = running
                .keys()
                .filter(|(id, attempt)| *id == a.task_id && *attempt < a.attempt)
                .cloned()
                .collect();
            for old in older {
                if let Some(entry) = running.remove(&old) {
                    entry.cancel.store(true, Ordering::Relaxed);
                    tracing::info!(task_id = %a.task_id, old_attempt = old.1, new_attempt = a.attempt, "superseded by a newer attempt");
                }
            }
            if running.len() >= inner.slots {
                if let Some((victim, entry)) = take_carried_over(&mut running, inner.epoch()) {
                    preempt(inner, victim, entry, &a.task_id);
                }
            }
            if running.len() >= inner.slots {
                let busy: Vec<String> = running
                    .keys()
                    .map(|(id, attempt)| format!("{id}#{attempt}"))
                    .collect();
                drop(running);
                tracing::error!(task_id = %a.task_id, slots = inner.slots, "server assigned more tasks than slots");
                inner.failed(
                    a.task_id,
                    a.attempt,
                    TaskError::new(
                        failure::INTERNAL,
                        format!(
                            "runner slots exhausted: all {} slot(s) are busy (running {}); the \
                             server assigned more tasks than the runner advertised",
                            inner.slots,
                            busy.join(", ")
                        ),
                    ),
                );
                return;
            }
            if a.operation_code == op::NOOP {
                // The round-trip benchmark: no thread, no progress, just the answer.
                drop(running);
                tracing::debug!(task_id = %a.task_id, attempt = a.attempt, operation = "noop", "task completed");
                inner.completed(a.task_id, a.attempt, operations::noop());
                return;
            }
            let cancel = Arc::new(AtomicBool::new(false));
            running.insert(
                key.clone(),
                RunningEntry {
                    cancel: Arc::clone(&cancel),
                    epoch: inner.epoch(),
                    started: Instant::now(),
                },
            );
            cancel
        };
        tokio::spawn(drive(Arc::clone(inner), a, key, cancel));
    }

    /// Ask a running task to stop; it ends with `failed`/`cancelled` at its next check.
    pub fn cancel(&self, task_id: &str, attempt: u32) {
        let flag = self
            .inner
            .running()
            .get(&(task_id.to_owned(), attempt))
            .map(|e| Arc::clone(&e.cancel));
        match flag {
            Some(flag) => {
                tracing::info!(task_id, attempt, "cancelling");
                flag.store(true, Ordering::Relaxed);
            }
            // Already finished (its result is sent or queued) or never ours: nothing to stop.
            None => tracing::debug!(task_id, attempt, "cancel for a task that is not running"),
        }
    }

    /// Tasks executing now (listed in the greeting after a reconnect).
    pub fn running(&self) -> Vec<RunningTask> {
        let mut tasks: Vec<RunningTask> = self
            .inner
            .running()
            .keys()
            .map(|(task_id, attempt)| RunningTask {
                task_id: task_id.clone(),
                attempt: *attempt,
            })
            .collect();
        tasks.sort_by(|a, b| (&a.task_id, a.attempt).cmp(&(&b.task_id, b.attempt)));
        tasks
    }

    /// A new connection was welcomed: tasks running now were assigned on an earlier one.
    pub fn connected(&self) {
        self.inner.epoch.fetch_add(1, Ordering::Relaxed);
        self.inner.link_up.send_replace(true);
    }

    /// Whether the link to the server is up, as it changes.
    pub fn link(&self) -> watch::Receiver<bool> {
        self.inner.link_up.subscribe()
    }

    /// The connection ended (tasks keep running; their messages wait in the outbox).
    pub fn disconnected(&self) {
        self.inner.link_up.send_replace(false);
    }

    /// Start stopping: assignments from now on are handed back instead of started; running
    /// tasks go on.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// Stop every running task and hand it back to the server (which requeues it at once);
    /// nothing else of those attempts is reported. A task whose result is already queued is
    /// finished, not handed back. Returns how many were handed back.
    ///
    /// `draining` is queued ahead of the hand backs, so the server never pushes a requeued task
    /// straight back to this runner's freed slot.
    pub fn hand_back_all(&self) -> usize {
        self.drain();
        let taken: Vec<(TaskKey, RunningEntry)> = self.inner.running().drain().collect();
        if !taken.is_empty() {
            self.inner.outbox.push(RunnerMessage::Draining);
        }
        for ((task_id, attempt), entry) in &taken {
            entry.cancel.store(true, Ordering::Relaxed);
            tracing::info!(%task_id, attempt, "handing back");
            self.inner.hand_back(task_id.clone(), *attempt);
        }
        if !taken.is_empty() {
            self.inner.task_ended.notify_waiters();
        }
        taken.len()
    }

    /// True when no task is running.
    pub fn is_idle(&self) -> bool {
        self.inner.running().is_empty()
    }

    /// Stop accepting tasks and interrupt the running ones without reporting them.
    pub fn shut_down(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        for entry in self.inner.running().values() {
            entry.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Wait until no task is running, at most `timeout`. True if idle.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let ended = self.inner.task_ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                if self.inner.running().is_empty() {
                    return;
                }
                ended.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

/// The oldest task still running from an earlier connection, taken out of the map.
///
/// Used when the server assigns more than our slots. A correct server counts the tasks our
/// greeting lists as running, so over-assignment while such a task exists means the server
/// dropped it (e.g. requeued it when the link broke) and will refuse its result anyway.
fn take_carried_over(running: &mut RunningMap, epoch: u64) -> Option<(TaskKey, RunningEntry)> {
    let victim = running
        .iter()
        .filter(|(_, e)| e.epoch < epoch)
        .min_by_key(|(_, e)| e.started)
        .map(|(k, _)| k.clone())?;
    running.remove_entry(&victim)
}

/// Stop a carried-over task in favour of `for_task`, and say so: should the server still hold
/// that attempt after all, it learns it failed instead of waiting for it forever.
fn preempt(inner: &Inner, victim: TaskKey, entry: RunningEntry, for_task: &str) {
    entry.cancel.store(true, Ordering::Relaxed);
    tracing::warn!(
        task_id = %victim.0,
        attempt = victim.1,
        "stopping a task from before the reconnect: the server gave its slot to {for_task}"
    );
    inner.failed(
        victim.0,
        victim.1,
        TaskError::new(
            failure::INTERNAL,
            format!(
                "stopped after a reconnect: the server no longer counted this attempt and                  assigned its slot to task {for_task}"
            ),
        ),
    );
}

/// Run one task to its end and report it.
async fn drive(inner: Arc<Inner>, a: Assignment, key: TaskKey, cancel: Arc<AtomicBool>) {
    let started = Instant::now();
    let op_name = op::name(a.operation_code);
    tracing::info!(task_id = %a.task_id, attempt = a.attempt, operation = op_name, "task started");
    let bar = inner.bars.as_ref().map(|multi| {
        let short: String = a.task_id.chars().take(8).collect();
        terminal::task_bar(multi, format!("{op_name} {short}"))
    });

    let mut throttle = ProgressThrottle::new(PROGRESS_INTERVAL);
    inner.send_progress(&a, throttle.start(Instant::now()), bar.as_ref(), true);

    let (tx, mut rx) = mpsc::unbounded_channel();
    let reporter = ProgressReporter::new(tx, Arc::clone(&cancel));
    let catalog = Arc::clone(&inner.catalog);
    let code = a.operation_code;
    let params = a.params.clone();
    let scratch = Scratch::for_task(&a.task_id, a.attempt);
    // The scratch directory travels with the operation and back, so it is removed whether the
    // operation returns or panics (then it is dropped while unwinding).
    let work = tokio::task::spawn_blocking(move || {
        let outcome = operations::run(code, &params, &catalog, &reporter, &scratch);
        (outcome, scratch)
    });

    // The channel closes when the operation returns (or panics) and drops its reporter.
    while let Some(update) = rx.recv().await {
        if let Some(u) = throttle.offer(update, Instant::now()) {
            inner.progress(&a, u, bar.as_ref());
        }
    }
    let (outcome, scratch) = match work.await {
        Ok((outcome, scratch)) => (outcome, Some(scratch)),
        Err(e) => (
            Err(TaskError::new(
                failure::INTERNAL,
                format!("the operation crashed: {}", panic_message(e)),
            )),
            None,
        ),
    };
    // Artifacts go up while the task still holds its slot: to the server (and to the greeting
    // after a reconnect) it is running until its result is heard.
    let outcome = match outcome {
        Ok(mut output) => {
            let table = output.table.take();
            let shipped = ship(&inner, &a, &cancel, output, &mut throttle, bar.as_ref()).await;
            // Kept before `completed` goes out: once the server hears it, a task reading this
            // output may arrive at once.
            if let (Ok(_), Some(table)) = (&shipped, table) {
                keep_output(&inner, &a.task_id, table).await;
            }
            shipped
        }
        Err(e) => Err(Unfinished::Error(e)),
    };
    drop(scratch);

    // Free the slot before reporting: once the server hears the result it may assign the next
    // task at once, and that must not be refused as over capacity.
    let superseded = inner.running().remove(&key).is_none();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match outcome {
        // A newer attempt took over (see `assign`) or it was handed back: the server refuses
        // this attempt's results.
        _ if superseded => {
            tracing::info!(task_id = %a.task_id, attempt = a.attempt, "superseded or handed-back attempt stopped");
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        }
        Err(Unfinished::StaleAttempt) => {
            tracing::info!(task_id = %a.task_id, attempt = a.attempt, "the server refused the upload as a stale attempt; not reporting");
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        }
        Ok(result) => {
            if let Some(u) = throttle.finish() {
                inner.progress(&a, u, bar.as_ref());
            }
            tracing::info!(task_id = %a.task_id, attempt = a.attempt, elapsed_ms, "task completed");
            inner.completed(a.task_id, a.attempt, result);
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        }
        Err(Unfinished::Error(e))
            if e.code == failure::CANCELLED && inner.shutting_down.load(Ordering::Relaxed) =>
        {
            tracing::info!(task_id = %a.task_id, "task interrupted by shutdown");
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        }
        Err(Unfinished::Error(e)) => {
            tracing::warn!(
                task_id = %a.task_id,
                attempt = a.attempt,
                code = %e.code,
                message = %e.message,
                elapsed_ms,
                "task failed"
            );
            // The log line above records the outcome; a finished bar would only clutter.
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            inner.failed(a.task_id, a.attempt, e);
        }
    }
    inner.task_ended.notify_waiters();
}

/// Keep a finished task's table for later tasks' `params.input`. A failure is logged, not
/// reported: the task itself succeeded, and a task that later asks for this output is told it
/// is not available.
async fn keep_output(inner: &Inner, task_id: &str, table: crate::outputs::OutputTable) {
    let Some(store) = inner.catalog.outputs().cloned() else {
        return;
    };
    let id = task_id.to_owned();
    let kept = tokio::task::spawn_blocking(move || store.keep(&id, table)).await;
    match kept {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(task_id, "could not keep the task's output: {e}"),
        Err(e) => tracing::warn!(task_id, "keeping the task's output crashed: {e}"),
    }
}

/// How a task ended without a result to report.
enum Unfinished {
    Error(TaskError),
    /// The server refused an upload because this runner no longer holds the attempt: report
    /// nothing, the attempt was superseded.
    StaleAttempt,
}

/// Upload `output`'s artifacts (if any) and return the result to report, with `artifacts`
/// listing them.
async fn ship(
    inner: &Inner,
    a: &Assignment,
    cancel: &AtomicBool,
    output: Output,
    throttle: &mut ProgressThrottle,
    bar: Option<&ProgressBar>,
) -> Result<serde_json::Value, Unfinished> {
    let Output {
        result, artifacts, ..
    } = output;
    if artifacts.is_empty() {
        return Ok(result);
    }
    let n = artifacts.len();
    let mut listed: Vec<Uploaded> = Vec::with_capacity(n);
    for (i, artifact) in artifacts.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(Unfinished::Error(operations::cancelled()));
        }
        // 95..=98: 100 stays reserved for "finished".
        let percent = 95 + u8::try_from(4 * i / n).unwrap_or(3);
        let update = ProgressUpdate {
            percent,
            stage: Some("uploading".into()),
            message: Some(format!("{} ({} of {n})", artifact.name, i + 1)),
        };
        if let Some(u) = throttle.offer(update, Instant::now()) {
            inner.progress(a, u, bar);
        }
        listed.push(upload_one(inner, a, cancel, artifact).await?);
    }
    let listed = serde_json::to_value(&listed).unwrap_or_default();
    Ok(match result {
        serde_json::Value::Object(mut map) => {
            map.insert("artifacts".into(), listed);
            serde_json::Value::Object(map)
        }
        other => serde_json::json!({ "result": other, "artifacts": listed }),
    })
}

async fn upload_one(
    inner: &Inner,
    a: &Assignment,
    cancel: &AtomicBool,
    artifact: &crate::artifacts::LocalArtifact,
) -> Result<Uploaded, Unfinished> {
    let mut stale_retries = 0;
    loop {
        let before = inner.link();
        let upload = inner.uploader.upload(&a.task_id, a.attempt, artifact);
        let outcome = tokio::select! {
            r = upload => r,
            _ = cancelled(cancel) => return Err(Unfinished::Error(operations::cancelled())),
        };
        match outcome {
            Ok(u) => return Ok(u),
            Err(UploadError::StaleAttempt) => {
                // Refused while connected on the same link as before: really superseded. Refused
                // while the link was down (the server then counts no attempt as ours) or across
                // a reconnect: try again once connected — the greeting resumes the attempt, or
                // the server cancels it, which ends the wait.
                if link_held(before, inner.link()) || stale_retries >= MAX_STALE_RETRIES {
                    return Err(Unfinished::StaleAttempt);
                }
                stale_retries += 1;
                tracing::info!(task_id = %a.task_id, attempt = a.attempt, "upload refused while disconnected; retrying once connected");
                let mut link = inner.link_up.subscribe();
                tokio::select! {
                    _ = link.wait_for(|up| *up) => {}
                    _ = cancelled(cancel) => return Err(Unfinished::Error(operations::cancelled())),
                }
            }
            Err(e @ UploadError::Unreachable { .. }) if !link_held(before, inner.link()) => {
                // The server was unreachable and so was the runner's link at some point: a
                // server restart or a network outage, not a broken upload path. Wait for the
                // link as long as it takes (the server, when the runner is back, resumes the
                // attempt or cancels it, and a drain with the server gone hands it back), then
                // upload again. Not counted against MAX_STALE_RETRIES: each round needs the
                // link to go down again.
                tracing::info!(task_id = %a.task_id, attempt = a.attempt, artifact = %artifact.name, "{e} while disconnected; retrying once connected");
                let mut link = inner.link_up.subscribe();
                tokio::select! {
                    _ = link.wait_for(|up| *up) => {}
                    _ = cancelled(cancel) => return Err(Unfinished::Error(operations::cancelled())),
                }
            }
            Err(e) => {
                tracing::warn!(task_id = %a.task_id, attempt = a.attempt, artifact = %artifact.name, "artifact upload failed: {e}");
                return Err(Unfinished::Error(e.to_task_error(&artifact.name)));
            }
        }
    }
}

/// Whether the link was up at `before` and still is, on the same connection, at `now`.
fn link_held(before: (bool, u64), now: (bool, u64)) -> bool {
    before.0 && now.0 && before.1 == now.1
}

/// Completes once `flag` is set.
async fn cancelled(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned()),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{
        error_answer, stored_answer, token_answer, MockHttp, Recorded, TempDir,
    };
    use serde_json::json;
    use sha2::Digest;
    use std::sync::atomic::AtomicU64;

    fn setup(slots: u32, dir: &TempDir) -> (Executor, Arc<Outbox>) {
        let path = dir.write("s.csv", "a,b\n1,x\n2,y\n3,z\n");
        let catalog = crate::test_support::csv_catalog("s", &path);
        let outbox = Arc::new(Outbox::new(64));
        // Nothing listens on port 9: these tasks produce no artifacts.
        let uploader = Arc::new(Uploader::new("http://127.0.0.1:9", "t").unwrap());
        let ex = Executor::new(
            slots,
            Arc::new(catalog),
            Arc::clone(&outbox),
            uploader,
            false,
        );
        (ex, outbox)
    }

    fn entry(flag: &Arc<AtomicBool>, epoch: u64) -> RunningEntry {
        RunningEntry {
            cancel: Arc::clone(flag),
            epoch,
            started: Instant::now(),
        }
    }

    fn assignment(id: &str, code: u16, params: serde_json::Value) -> Assignment {
        Assignment {
            task_id: id.into(),
            attempt: 1,
            operation_code: code,
            params,
        }
    }

    /// Drain the outbox until `n` terminal messages arrived.
    async fn terminals(outbox: &Outbox, n: usize) -> Vec<RunnerMessage> {
        let mut all = Vec::new();
        let mut done = 0;
        while done < n {
            let q = tokio::time::timeout(Duration::from_secs(10), outbox.peek())
                .await
                .expect("message in time");
            outbox.ack(q.seq);
            if matches!(
                q.message,
                RunnerMessage::Completed(_) | RunnerMessage::Failed(_)
            ) {
                done += 1;
            }
            all.push(q.message);
        }
        all
    }

    #[tokio::test]
    async fn fetch_reports_0_then_100_then_completed() {
        let dir = TempDir::new();
        let (ex, outbox) = setup(1, &dir);
        ex.assign(assignment(
            "t1",
            op::FETCH,
            json!({"dataset": "s", "limit": 2}),
        ));
        let msgs = terminals(&outbox, 1).await;
        let percents: Vec<u8> = msgs
            .iter()
            .filter_map(|m| match m {
                RunnerMessage::Progress(p) => Some(p.percent),
                _ => None,
            })
            .collect();
        assert_eq!(percents.first(), Some(&0), "{msgs:?}");
        assert_eq!(percents.last(), Some(&100), "{msgs:?}");
        assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
        match msgs.last() {
            Some(RunnerMessage::Completed(c)) => {
                assert_eq!(c.task_id, "t1");
                assert_eq!(c.result_data["rows"], json!([[1, "x"], [2, "y"]]));
            }
            other => panic!("{other:?}"),
        }
        assert!(ex.running().is_empty());
    }

    #[tokio::test]
    async fn noop_and_unsupported() {
        let dir = TempDir::new();
        let (ex, outbox) = setup(1, &dir);
        ex.assign(assignment("n", op::NOOP, serde_json::Value::Null));
        // An operation code this runner does not know.
        ex.assign(assignment("m", 150, json!({})));
        let msgs = terminals(&outbox, 2).await;
        assert!(
            matches!(&msgs[0], RunnerMessage::Completed(c) if c.result_data == json!({"noop": true}))
        );
        let failed = msgs.iter().find_map(|m| match m {
            RunnerMessage::Failed(f) => Some(f),
            _ => None,
        });
        assert_eq!(
            failed.map(|f| f.error.code.as_str()),
            Some(failure::UNSUPPORTED_OPERATION)
        );
    }

    #[tokio::test]
    async fn over_assignment_is_refused_and_cancel_works() {
        let dir = TempDir::new();
        let (ex, outbox) = setup(1, &dir);
        // Occupy the only slot by hand with a task that is "still running".
        let flag = Arc::new(AtomicBool::new(false));
        ex.inner
            .running()
            .insert(("busy".into(), 1), entry(&flag, 0));
        assert_eq!(ex.running().len(), 1);
        ex.assign(assignment("extra", op::FETCH, json!({"dataset": "s"})));
        let msgs = terminals(&outbox, 1).await;
        match &msgs[0] {
            RunnerMessage::Failed(f) => {
                assert_eq!(f.task_id, "extra");
                assert_eq!(f.error.code, failure::INTERNAL);
                assert!(
                    f.error.message.contains("slots exhausted"),
                    "{}",
                    f.error.message
                );
            }
            other => panic!("{other:?}"),
        }
        ex.cancel("busy", 1);
        assert!(flag.load(Ordering::Relaxed));
        ex.inner.running().remove(&("busy".to_owned(), 1));
        assert!(ex.wait_idle(Duration::from_millis(10)).await);
    }

    #[test]
    fn hand_back_all_says_draining_before_handing_back() {
        let dir = TempDir::new();
        let (ex, outbox) = setup(2, &dir);
        let flags = [
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        ];
        for (i, flag) in flags.iter().enumerate() {
            ex.inner
                .running()
                .insert((format!("t{i}"), 1), entry(flag, 0));
        }
        assert_eq!(ex.hand_back_all(), 2);
        let sent = outbox.snapshot();
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert_eq!(sent[0], RunnerMessage::Draining, "{sent:?}");
        assert!(
            sent[1..]
                .iter()
                .all(|m| matches!(m, RunnerMessage::HandBack(h) if h.attempt == 1)),
            "{sent:?}"
        );
        assert!(flags.iter().all(|f| f.load(Ordering::Relaxed)), "cancelled");
        assert!(ex.is_idle());
        // Nothing running: nothing to announce or hand back.
        assert_eq!(ex.hand_back_all(), 0);
        assert_eq!(outbox.snapshot().len(), 3);
    }

    #[tokio::test]
    async fn a_newer_attempt_supersedes_the_running_one() {
        let dir = TempDir::new();
        let (ex, outbox) = setup(1, &dir);
        // Attempt 1 is "still running" from before a reconnect, holding the only slot.
        let old = Arc::new(AtomicBool::new(false));
        ex.inner.running().insert(("t".into(), 1), entry(&old, 0));
        let mut second = assignment("t", op::FETCH, json!({"dataset": "s", "limit": 1}));
        second.attempt = 2;
        ex.assign(second);
        assert!(old.load(Ordering::Relaxed), "old attempt was told to stop");
        let msgs = terminals(&outbox, 1).await;
        match msgs.last() {
            Some(RunnerMessage::Completed(c)) => {
                assert_eq!((c.task_id.as_str(), c.attempt), ("t", 2))
            }
            other => panic!("{other:?}"),
        }
        // The old attempt's driver, when it ends, reports no result (progress it sent before
        // is harmless: the server drops messages of old attempts).
        let cancel = Arc::new(AtomicBool::new(true));
        drive(
            Arc::clone(&ex.inner),
            assignment("t", op::FETCH, json!({"dataset": "s"})),
            ("t".into(), 1),
            cancel,
        )
        .await;
        let snapshot = outbox.snapshot();
        assert!(
            !snapshot
                .iter()
                .any(|m| matches!(m, RunnerMessage::Completed(_) | RunnerMessage::Failed(_))),
            "{snapshot:?}"
        );
    }

    #[tokio::test]
    async fn over_assignment_after_a_reconnect_stops_the_carried_over_task() {
        let dir = TempDir::new();
        let (ex, outbox) = setup(1, &dir);
        let old = Arc::new(AtomicBool::new(false));
        ex.inner.running().insert(("old".into(), 1), entry(&old, 0));
        // The link dropped and came back; the server evidently forgot `old`.
        ex.connected();
        ex.assign(assignment(
            "new",
            op::FETCH,
            json!({"dataset": "s", "limit": 1}),
        ));
        assert!(old.load(Ordering::Relaxed));
        let msgs = terminals(&outbox, 2).await;
        let ends: Vec<(&str, &str)> = msgs
            .iter()
            .filter_map(|m| match m {
                RunnerMessage::Failed(f) => Some((f.task_id.as_str(), f.error.code.as_str())),
                RunnerMessage::Completed(c) => Some((c.task_id.as_str(), "completed")),
                _ => None,
            })
            .collect();
        assert_eq!(ends, vec![("old", failure::INTERNAL), ("new", "completed")]);
    }

    #[tokio::test]
    async fn a_cancelled_task_fails_with_cancelled() {
        let dir = TempDir::new();
        let (ex, outbox) = setup(1, &dir);
        let key: TaskKey = ("c".into(), 1);
        let cancel = Arc::new(AtomicBool::new(true));
        ex.inner.running().insert(key.clone(), entry(&cancel, 0));
        // Drive directly with the flag already set, as if Cancel arrived before the first check.
        drive(
            Arc::clone(&ex.inner),
            assignment("c", op::FETCH, json!({"dataset": "s"})),
            key,
            cancel,
        )
        .await;
        let msgs = terminals(&outbox, 1).await;
        match msgs.last() {
            Some(RunnerMessage::Failed(f)) => assert_eq!(f.error.code, failure::CANCELLED),
            other => panic!("{other:?}"),
        }
        assert!(ex.running().is_empty());
    }

    /// An executor whose uploads go to `srv`, with one dataset `s`.
    fn with_server(dir: &TempDir, srv: &MockHttp) -> (Executor, Arc<Outbox>) {
        let (ex, outbox) = setup(1, dir);
        let uploader = Uploader::new(&srv.url(), "dapr_cred").unwrap().with_retry(
            crate::artifacts::RetryPolicy {
                attempts: 2,
                base: Duration::from_millis(1),
                cap: Duration::from_millis(2),
            },
        );
        let ex = Executor::new(
            1,
            Arc::clone(&ex.inner.catalog),
            Arc::clone(&outbox),
            Arc::new(uploader),
            false,
        );
        (ex, outbox)
    }

    async fn mock(
        upload: impl Fn(&Recorded, usize) -> (u16, serde_json::Value) + Send + Sync + 'static,
    ) -> MockHttp {
        let tokens = AtomicU64::new(0);
        let uploads = std::sync::atomic::AtomicUsize::new(0);
        MockHttp::start(move |req| {
            token_answer(req, &tokens)
                .unwrap_or_else(|| upload(req, uploads.fetch_add(1, Ordering::Relaxed) + 1))
        })
        .await
    }

    fn filter_all(id: &str) -> Assignment {
        assignment(id, op::FILTER, json!({"dataset": "s", "preview_limit": 1}))
    }

    #[tokio::test]
    async fn artifacts_are_uploaded_before_completed_and_listed_in_the_result() {
        let dir = TempDir::new();
        let srv = mock(|req, _| stored_answer(req)).await;
        let (ex, outbox) = with_server(&dir, &srv);
        ex.connected();
        ex.assign(filter_all("art-ok"));
        let msgs = terminals(&outbox, 1).await;
        let puts = srv.uploads();
        assert_eq!(puts.len(), 1);
        assert_eq!(
            puts[0].target,
            "/api/v1/tasks/art-ok/artifacts/output.csv?attempt=1"
        );
        let body = "a,b\n1,x\n2,y\n3,z\n";
        assert_eq!(String::from_utf8_lossy(&puts[0].body), body);
        let sha = crate::artifacts::hex(&sha2::Sha256::digest(body.as_bytes()));
        match msgs.last() {
            Some(RunnerMessage::Completed(c)) => {
                assert_eq!(c.result_data["rows"], json!([[1, "x"]]));
                assert_eq!(c.result_data["truncated"], true);
                assert_eq!(
                    c.result_data["artifacts"],
                    json!([{"name": "output.csv", "size": body.len(), "sha256": sha,
                            "content_type": "text/csv"}])
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            msgs.iter().any(
                |m| matches!(m, RunnerMessage::Progress(p) if p.stage.as_deref() == Some("uploading"))
            ),
            "{msgs:?}"
        );
        assert!(!Scratch::for_task("art-ok", 1).dir().exists());
        assert!(ex.running().is_empty());
    }

    #[tokio::test]
    async fn a_stale_attempt_refusal_reports_nothing() {
        let dir = TempDir::new();
        let srv = mock(|_, _| error_answer(409, "stale_attempt")).await;
        let (ex, outbox) = with_server(&dir, &srv);
        ex.connected();
        ex.assign(filter_all("art-stale"));
        assert!(ex.wait_idle(Duration::from_secs(10)).await);
        // Let any message the driver might still push land.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(srv.uploads().len(), 1, "not retried while connected");
        let snapshot = outbox.snapshot();
        assert!(
            !snapshot
                .iter()
                .any(|m| matches!(m, RunnerMessage::Completed(_) | RunnerMessage::Failed(_))),
            "{snapshot:?}"
        );
        assert!(!Scratch::for_task("art-stale", 1).dir().exists());
    }

    #[tokio::test]
    async fn a_stale_refusal_while_disconnected_is_retried_after_reconnecting() {
        let dir = TempDir::new();
        let srv = mock(|req, n| {
            if n == 1 {
                error_answer(409, "stale_attempt")
            } else {
                stored_answer(req)
            }
        })
        .await;
        let (ex, outbox) = with_server(&dir, &srv);
        // Never connected: the link is down.
        ex.assign(filter_all("art-down"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while srv.uploads().is_empty() {
            assert!(Instant::now() < deadline, "no upload tried");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ex.running().len(), 1, "still holds its slot while waiting");
        ex.connected();
        let msgs = terminals(&outbox, 1).await;
        assert!(
            matches!(msgs.last(), Some(RunnerMessage::Completed(c)) if c.result_data["artifacts"][0]["name"] == "output.csv"),
            "{msgs:?}"
        );
        assert_eq!(srv.uploads().len(), 2);
    }

    /// A server that is down (uploads get 503) while the runner's link is down too: the upload
    /// outlasts its retry policy, waits for the link, and completes once the server is back
    /// (before, the task failed with `artifact_upload_failed` after ~10 s of retries).
    #[tokio::test]
    async fn an_unreachable_server_while_disconnected_is_waited_for() {
        let dir = TempDir::new();
        let up = Arc::new(AtomicBool::new(false));
        let server_up = Arc::clone(&up);
        let srv = mock(move |req, _| {
            if server_up.load(Ordering::Relaxed) {
                stored_answer(req)
            } else {
                error_answer(503, "unavailable")
            }
        })
        .await;
        let (ex, outbox) = with_server(&dir, &srv);
        // Never connected: the link is down. The policy allows 2 tries; let several rounds'
        // worth fail.
        ex.assign(filter_all("art-outage"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while srv.uploads().len() < 2 {
            assert!(Instant::now() < deadline, "upload not tried twice");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ex.running().len(), 1, "still holds its slot while waiting");
        assert!(
            !outbox
                .snapshot()
                .iter()
                .any(|m| matches!(m, RunnerMessage::Failed(_))),
            "failed while the link was down"
        );
        up.store(true, Ordering::Relaxed);
        ex.connected();
        let msgs = terminals(&outbox, 1).await;
        assert!(
            matches!(msgs.last(), Some(RunnerMessage::Completed(c)) if c.result_data["artifacts"][0]["name"] == "output.csv"),
            "{msgs:?}"
        );
    }

    /// Unreachable for the whole retry policy while the link stayed up: the upload path is
    /// broken (not a restart), so the task fails rather than waiting forever.
    #[tokio::test]
    async fn an_unreachable_server_while_connected_fails_the_task() {
        let dir = TempDir::new();
        let srv = mock(|_, _| error_answer(503, "unavailable")).await;
        let (ex, outbox) = with_server(&dir, &srv);
        ex.connected();
        ex.assign(filter_all("art-503"));
        let msgs = terminals(&outbox, 1).await;
        assert!(
            matches!(msgs.last(), Some(RunnerMessage::Failed(f)) if f.error.code == crate::artifacts::UPLOAD_FAILED),
            "{msgs:?}"
        );
        assert_eq!(srv.uploads().len(), 2);
    }

    #[tokio::test]
    async fn a_failed_upload_fails_the_task_without_paths() {
        let dir = TempDir::new();
        let srv = mock(|_, _| error_answer(413, "artifact_too_large")).await;
        let (ex, outbox) = with_server(&dir, &srv);
        ex.connected();
        ex.assign(filter_all("art-big"));
        let msgs = terminals(&outbox, 1).await;
        match msgs.last() {
            Some(RunnerMessage::Failed(f)) => {
                assert_eq!(f.error.code, crate::artifacts::UPLOAD_FAILED);
                assert!(f.error.message.contains("too large"), "{}", f.error.message);
                let tmp = std::env::temp_dir();
                assert!(
                    !f.error.message.contains(tmp.to_str().unwrap()),
                    "{}",
                    f.error.message
                );
                assert!(!f.error.message.contains("jwt-"), "{}", f.error.message);
            }
            other => panic!("{other:?}"),
        }
        assert!(!Scratch::for_task("art-big", 1).dir().exists());
    }

    #[tokio::test]
    async fn a_cancel_during_the_upload_wait_fails_with_cancelled() {
        let dir = TempDir::new();
        let srv = mock(|_, _| error_answer(409, "stale_attempt")).await;
        let (ex, outbox) = with_server(&dir, &srv);
        // Link down: the refused upload waits for a reconnect; a cancel ends the wait.
        ex.assign(filter_all("art-cancel"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while srv.uploads().is_empty() {
            assert!(Instant::now() < deadline, "no upload tried");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ex.cancel("art-cancel", 1);
        let msgs = terminals(&outbox, 1).await;
        assert!(
            matches!(msgs.last(), Some(RunnerMessage::Failed(f)) if f.error.code == failure::CANCELLED),
            "{msgs:?}"
        );
    }
}
