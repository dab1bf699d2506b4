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
//! (the server de-duplicates). Memory only: a runner restart forgets the queue.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dap_protocol::RunnerMessage;
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
}

impl State {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
}

fn progress_key(m: &RunnerMessage) -> Option<(&str, u32)> {
    match m {
        RunnerMessage::Progress(p) => Some((p.task_id.as_str(), p.attempt)),
        _ => None,
    }
}

fn is_terminal(m: &RunnerMessage) -> bool {
    matches!(m, RunnerMessage::Completed(_) | RunnerMessage::Failed(_))
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
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
        let n = recent.len();
        for message in recent.into_iter().rev() {
            let seq = st.seq();
            st.queue.push_front(Queued {
                seq,
                message,
                milestone: false,
            });
        }
        drop(st);
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
}
