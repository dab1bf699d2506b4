//! The runner's outgoing queue of task messages (progress, completed, failed), shared by all
//! tasks and surviving reconnects.
//!
//! Executing tasks push here and never wait for the socket; each connection's writer drains it.
//! It is the channel that feeds the writer, but unlike a plain mpsc it (1) keeps at most one
//! pending progress per task — a newer one supersedes the older, which nobody needs anymore —
//! (2) is bounded by dropping only superseded or oldest *progress*, never a completion or failure,
//! and (3) is cancel-safe: the writer peeks, sends, then acknowledges, so a message whose send was
//! interrupted by a dropped link stays queued. Terminal messages sent shortly before a link died
//! may not have reached the server; [`Outbox::requeue_recent`] puts them back to be sent again
//! (the server de-duplicates). With a journal ([`Outbox::with_journal`]) every completion and
//! failure is also written to disk before it is queued, and stays there until the server
//! acknowledges it (`ack`): a runner killed after finishing a task sends the result after it
//! restarts, and lists the task in its greeting so the server keeps the lease meanwhile.
//! Progress is never journaled (the next report supersedes it).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dap_protocol::{RunnerMessage, RunningTask};
use tokio::sync::Notify;

/// Default bound on queued messages (progress is dropped beyond it; terminals never are).
pub const DEFAULT_CAPACITY: usize = 1024;
/// How long a sent completion/failure is remembered for a possible resend after a dead link.
const REMEMBER_SENT: Duration = Duration::from_secs(300);

/// A queued message and its sequence number (a fresh one each time an entry is replaced).
#[derive(Debug, Clone)]
pub struct Queued {
    pub seq: u64,
    pub message: RunnerMessage,
    /// A progress that newer progress must not replace (see [`Outbox::push_milestone`]).
    milestone: bool,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Queued>,
    next_seq: u64,
    /// Terminal messages already written to a socket, with when.
    sent_terminal: VecDeque<(Instant, RunnerMessage)>,
    dropped_progress: u64,
    /// Journaled terminals the server has not acknowledged yet, by (task, attempt).
    unacked: BTreeMap<(String, u32), RunnerMessage>,
}

impl State {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Put `messages` and then every unacknowledged journaled result not among them or queued
    /// already at the front of the queue, in that order. Returns how many.
    fn requeue_front(&mut self, mut messages: Vec<RunnerMessage>) -> usize {
        let unacked: Vec<RunnerMessage> = self
            .unacked
            .values()
            .filter(|m| {
                let key = terminal_key(m);
                !messages.iter().any(|r| terminal_key(r) == key)
                    && !self.queue.iter().any(|q| terminal_key(&q.message) == key)
            })
            .cloned()
            .collect();
        messages.extend(unacked);
        let n = messages.len();
        for message in messages.into_iter().rev() {
            let seq = self.seq();
            self.queue.push_front(Queued {
                seq,
                message,
                milestone: false,
            });
        }
        n
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
    /// Directory of journaled terminals, one `<task_id>.<attempt>.json` each.
    journal: Option<PathBuf>,
}

fn terminal_key(m: &RunnerMessage) -> Option<(&str, u32)> {
    match m {
        RunnerMessage::Completed(c) => Some((c.task_id.as_str(), c.attempt)),
        RunnerMessage::Failed(f) => Some((f.task_id.as_str(), f.attempt)),
        RunnerMessage::HandBack(h) => Some((h.task_id.as_str(), h.attempt)),
        _ => None,
    }
}

/// The journal file of a terminal; task ids are server UUIDs, anything else is not journaled.
fn journal_file(dir: &Path, task_id: &str, attempt: u32) -> Option<PathBuf> {
    crate::outputs::valid_task_id(task_id).then(|| dir.join(format!("{task_id}.{attempt}.json")))
}

/// Write `bytes` to `path` durably: temp file, fsync, rename.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // The rename itself must survive a power cut too.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn progress_key(m: &RunnerMessage) -> Option<(&str, u32)> {
    match m {
        RunnerMessage::Progress(p) => Some((p.task_id.as_str(), p.attempt)),
        _ => None,
    }
}

/// The last word on an attempt: journaled, never dropped, kept until the server acknowledges it.
fn is_terminal(m: &RunnerMessage) -> bool {
    terminal_key(m).is_some()
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
            journal: None,
        }
    }

    /// An outbox that journals completions and failures in `dir` (created), with whatever an
    /// earlier run left there queued to be sent first. Unreadable journal files are removed.
    pub fn with_journal(capacity: usize, dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let mut found: Vec<(std::time::SystemTime, RunnerMessage)> = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let message = std::fs::read(&path)
                .ok()
                .filter(|_| path.extension().is_some_and(|e| e == "json"))
                .and_then(|b| serde_json::from_slice::<RunnerMessage>(&b).ok())
                .filter(|m| terminal_key(m).is_some());
            match message {
                Some(m) => {
                    let t = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    found.push((t, m));
                }
                None => {
                    tracing::warn!(file = %path.display(), "removing an unreadable outbox journal file");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        found.sort_by_key(|(t, _)| *t);
        let mut outbox = Self::new(capacity);
        outbox.journal = Some(dir);
        {
            let mut st = outbox.lock();
            for (_, m) in found {
                let (task, attempt) = terminal_key(&m).expect("filtered to terminals");
                st.unacked.insert((task.to_owned(), attempt), m.clone());
                let seq = st.seq();
                st.queue.push_back(Queued {
                    seq,
                    message: m,
                    milestone: false,
                });
            }
        }
        Ok(outbox)
    }

    /// Completions and failures not yet acknowledged by the server, as the greeting lists
    /// them (so the server keeps their leases until it hears them).
    pub fn unacknowledged(&self) -> Vec<RunningTask> {
        self.lock()
            .unacked
            .keys()
            .map(|(task_id, attempt)| RunningTask {
                task_id: task_id.clone(),
                attempt: *attempt,
            })
            .collect()
    }

    /// The server acknowledged this attempt's result: forget it, on disk too.
    pub fn acknowledged(&self, task_id: &str, attempt: u32) {
        let mut st = self.lock();
        st.unacked.remove(&(task_id.to_owned(), attempt));
        st.sent_terminal
            .retain(|(_, m)| terminal_key(m) != Some((task_id, attempt)));
        drop(st);
        if let Some(path) = self
            .journal
            .as_deref()
            .and_then(|d| journal_file(d, task_id, attempt))
        {
            let _ = std::fs::remove_file(path);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves the queue itself consistent (every mutation
        // is a single VecDeque call), so keep going with it rather than poisoning the runner.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queue a message for the server.
    pub fn push(&self, message: RunnerMessage) {
        self.enqueue(message, false);
    }

    /// Queue a progress message that later progress of the same task does not supersede: a
    /// task's first report (0 %, "started"), so the server always learns that it began even
    /// when the task finishes before the writer got to send anything.
    pub fn push_milestone(&self, message: RunnerMessage) {
        self.enqueue(message, true);
    }

    fn enqueue(&self, message: RunnerMessage, milestone: bool) {
        if let (Some(dir), Some((task_id, attempt))) = (&self.journal, terminal_key(&message)) {
            if let Some(path) = journal_file(dir, task_id, attempt) {
                // On disk before it can be sent: a crash after this loses nothing.
                match serde_json::to_vec(&message) {
                    Ok(bytes) => {
                        if let Err(e) = write_durably(&path, &bytes) {
                            tracing::warn!(
                                task_id,
                                "could not journal the result (it is still sent): {e}"
                            );
                        }
                    }
                    Err(e) => tracing::warn!(task_id, "could not encode the result: {e}"),
                }
                self.lock()
                    .unacked
                    .insert((task_id.to_owned(), attempt), message.clone());
            }
        }
        {
            let mut st = self.lock();
            let seq = st.seq();
            if let Some(key) = progress_key(&message) {
                if let Some(slot) = st
                    .queue
                    .iter_mut()
                    .rev()
                    .find(|q| progress_key(&q.message) == Some(key))
                {
                    if !slot.milestone && !milestone {
                        // Superseded: the server only needs the latest percent of a task.
                        *slot = Queued {
                            seq,
                            message,
                            milestone,
                        };
                        drop(st);
                        self.notify.notify_one();
                        return;
                    }
                }
                if st.queue.len() >= self.capacity {
                    match st
                        .queue
                        .iter()
                        .position(|q| progress_key(&q.message).is_some() && !q.milestone)
                    {
                        Some(oldest) => {
                            st.queue.remove(oldest);
                        }
                        None => {
                            // Full of completions: they matter more than this progress.
                            st.dropped_progress += 1;
                            return;
                        }
                    }
                    st.dropped_progress += 1;
                }
            }
            st.queue.push_back(Queued {
                seq,
                message,
                milestone,
            });
        }
        self.notify.notify_one();
    }

    /// The oldest queued message, waiting for one if the queue is empty. Does not remove it:
    /// call [`ack`](Self::ack) once it was written. Cancel-safe.
    pub async fn peek(&self) -> Queued {
        loop {
            let notified = self.notify.notified();
            if let Some(front) = self.lock().queue.front().cloned() {
                return front;
            }
            notified.await;
        }
    }

    /// The message `seq` was written to the socket: remove it (unless it was superseded in the
    /// meantime, in which case the newer version is still to be sent).
    pub fn ack(&self, seq: u64) {
        let mut st = self.lock();
        if let Some(pos) = st.queue.iter().position(|q| q.seq == seq) {
            if let Some(q) = st.queue.remove(pos) {
                if is_terminal(&q.message) {
                    let now = Instant::now();
                    st.sent_terminal.push_back((now, q.message));
                    while st.sent_terminal.len() > self.capacity
                        || st
                            .sent_terminal
                            .front()
                            .is_some_and(|(t, _)| now.duration_since(*t) > REMEMBER_SENT)
                    {
                        st.sent_terminal.pop_front();
                    }
                }
            }
        }
    }

    /// After a link died: queue again, ahead of everything else, every completion/failure sent
    /// at or after `since` (it may never have reached the server). Returns how many.
    pub fn requeue_recent(&self, since: Instant) -> usize {
        let mut st = self.lock();
        let recent: Vec<RunnerMessage> = std::mem::take(&mut st.sent_terminal)
            .into_iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, m)| m)
            .collect();
        // Journaled results the server never acknowledged go again too, however old.
        let n = st.requeue_front(recent);
        self.woke(n)
    }

    /// At the start of a session: queue again, ahead of everything else, every journaled result
    /// the server has not acknowledged and that is not queued already. Returns how many.
    pub fn resend_unacknowledged(&self) -> usize {
        let n = self.lock().requeue_front(Vec::new());
        self.woke(n)
    }

    fn woke(&self, n: usize) -> usize {
        if n > 0 {
            self.notify.notify_one();
        }
        n
    }

    /// Forget what was sent (after a clean goodbye nothing needs resending).
    pub fn forget_sent(&self) {
        self.lock().sent_terminal.clear();
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many progress messages were dropped because the queue was full.
    pub fn dropped_progress(&self) -> u64 {
        self.lock().dropped_progress
    }

    /// The oldest queued message, if any, without waiting (tests and diagnostics).
    pub fn queue_front(&self) -> Option<Queued> {
        self.lock().queue.front().cloned()
    }

    /// A copy of the queue, oldest first (for diagnostics and tests).
    pub fn snapshot(&self) -> Vec<RunnerMessage> {
        self.lock()
            .queue
            .iter()
            .map(|q| q.message.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dap_protocol::{Completed, Failed, Progress, TaskError};

    fn progress(task: &str, percent: u8) -> RunnerMessage {
        RunnerMessage::Progress(Progress {
            task_id: task.into(),
            attempt: 1,
            percent,
            stage: None,
            message: None,
        })
    }

    fn completed(task: &str) -> RunnerMessage {
        RunnerMessage::Completed(Completed {
            task_id: task.into(),
            attempt: 1,
            result_data: serde_json::json!({}),
        })
    }

    fn failed(task: &str) -> RunnerMessage {
        RunnerMessage::Failed(Failed {
            task_id: task.into(),
            attempt: 1,
            error: TaskError::new("internal", "x"),
        })
    }

    #[test]
    fn newer_progress_supersedes_older() {
        let o = Outbox::new(10);
        o.push(progress("a", 10));
        o.push(progress("b", 5));
        o.push(progress("a", 20));
        o.push(completed("a"));
        assert_eq!(
            o.snapshot(),
            vec![progress("a", 20), progress("b", 5), completed("a")]
        );
    }

    #[test]
    fn the_first_progress_of_a_task_is_never_superseded() {
        let o = Outbox::new(10);
        o.push_milestone(progress("a", 0));
        o.push(progress("a", 30));
        o.push(progress("a", 60));
        o.push(progress("a", 100));
        o.push(completed("a"));
        assert_eq!(
            o.snapshot(),
            vec![progress("a", 0), progress("a", 100), completed("a")]
        );
    }

    #[test]
    fn bounded_but_never_drops_terminals() {
        let o = Outbox::new(3);
        o.push(progress("a", 1));
        o.push(completed("b"));
        o.push(failed("c"));
        // Full: the oldest progress makes room.
        o.push(progress("d", 1));
        assert_eq!(
            o.snapshot(),
            vec![completed("b"), failed("c"), progress("d", 1)]
        );
        // Terminals go in even beyond capacity.
        o.push(completed("e"));
        o.push(completed("f"));
        assert_eq!(o.len(), 5);
        // Still over capacity: each new progress evicts the oldest queued one.
        o.push(progress("g", 1));
        o.push(progress("h", 1));
        assert_eq!(
            o.snapshot(),
            vec![
                completed("b"),
                failed("c"),
                completed("e"),
                completed("f"),
                progress("h", 1)
            ]
        );
        assert_eq!(o.dropped_progress(), 3);

        // Nothing but terminals queued: the incoming progress is the one dropped.
        let o = Outbox::new(2);
        o.push(completed("x"));
        o.push(failed("y"));
        o.push(progress("z", 9));
        assert_eq!(o.snapshot(), vec![completed("x"), failed("y")]);
        assert_eq!(o.dropped_progress(), 1);
    }

    #[tokio::test]
    async fn peek_ack_and_requeue() {
        let o = Outbox::new(10);
        let start = Instant::now();
        o.push(progress("a", 50));
        o.push(completed("a"));
        let first = o.peek().await;
        assert_eq!(first.message, progress("a", 50));
        // Superseded while "in flight": the ack must not remove the newer version.
        o.push(progress("a", 60));
        o.ack(first.seq);
        assert_eq!(o.peek().await.message, progress("a", 60));
        let q = o.peek().await;
        o.ack(q.seq);
        let q = o.peek().await;
        assert_eq!(q.message, completed("a"));
        o.ack(q.seq);
        assert!(o.is_empty());

        // The link died: the completion goes back to the front.
        o.push(progress("b", 1));
        assert_eq!(o.requeue_recent(start), 1);
        assert_eq!(o.snapshot(), vec![completed("a"), progress("b", 1)]);
        // It is not requeued twice.
        assert_eq!(o.requeue_recent(start), 0);
    }

    #[tokio::test]
    async fn peek_waits_for_a_push() {
        let o = std::sync::Arc::new(Outbox::new(4));
        let o2 = std::sync::Arc::clone(&o);
        let waiter = tokio::spawn(async move { o2.peek().await.message });
        tokio::task::yield_now().await;
        o.push(completed("z"));
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("peek woke up")
            .expect("task ran");
        assert_eq!(got, completed("z"));
    }

    #[test]
    fn journaled_results_survive_a_restart_until_acknowledged() {
        let dir = crate::test_support::TempDir::new();
        let journal = dir.path().join("outbox");
        let o = Outbox::with_journal(10, &journal).unwrap();
        o.push(progress("t1", 50));
        o.push(completed("t1"));
        o.push(failed("t2"));
        let files = || std::fs::read_dir(&journal).unwrap().count();
        assert_eq!(files(), 2, "completions and failures on disk, progress not");
        // Sent on a link (written, not yet acknowledged by the server) …
        for _ in 0..3 {
            let q = o.queue_front().unwrap();
            o.ack(q.seq);
        }
        assert!(o.is_empty());
        // … then the runner dies. A new one sends them first and lists them in its greeting.
        drop(o);
        let o = Outbox::with_journal(10, &journal).unwrap();
        let mut queued = o.snapshot();
        queued.sort_by_key(|m| terminal_key(m).map(|(t, _)| t.to_owned()));
        assert_eq!(queued, vec![completed("t1"), failed("t2")]);
        let listed: Vec<String> = o.unacknowledged().into_iter().map(|t| t.task_id).collect();
        assert_eq!(listed, ["t1", "t2"]);

        // Acknowledged: gone from disk and never resent.
        o.acknowledged("t1", 1);
        assert_eq!(files(), 1);
        assert_eq!(o.unacknowledged().len(), 1);
        while let Some(q) = o.queue_front() {
            o.ack(q.seq);
        }
        assert_eq!(o.resend_unacknowledged(), 1, "only t2 goes again");
        assert_eq!(o.snapshot(), vec![failed("t2")]);
        assert_eq!(o.resend_unacknowledged(), 0, "already queued");
        o.acknowledged("t2", 1);
        assert_eq!(files(), 0);

        // Debris (a torn temp file, garbage) is removed at open.
        std::fs::write(journal.join("t9.1.json.tmp"), b"{").unwrap();
        std::fs::write(journal.join("t8.1.json"), b"not json").unwrap();
        let o = Outbox::with_journal(10, &journal).unwrap();
        assert!(o.is_empty());
        assert_eq!(files(), 0);
    }

    #[test]
    fn a_hand_back_is_journaled_and_kept_until_acknowledged_like_a_result() {
        let dir = crate::test_support::TempDir::new();
        let journal = dir.path().join("outbox");
        let hand_back = RunnerMessage::HandBack(dap_protocol::HandBack {
            task_id: "t3".into(),
            attempt: 2,
            reason: "runner stopping".into(),
        });
        let o = Outbox::with_journal(2, &journal).unwrap();
        for p in 0..5 {
            o.push(progress("t4", p));
        }
        o.push(hand_back.clone());
        assert!(o.snapshot().contains(&hand_back), "never dropped");
        drop(o);
        let o = Outbox::with_journal(2, &journal).unwrap();
        assert_eq!(o.snapshot(), vec![hand_back]);
        assert_eq!(o.unacknowledged()[0].task_id, "t3");
        o.acknowledged("t3", 2);
        assert!(o.unacknowledged().is_empty());
        assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 0);
    }
}
