//! The in-process event bus: committed events fan out from the store writer to every live SSE
//! stream (and anything else that listens).
//!
//! It holds no history: a subscriber that falls behind, or connects late, replays from the
//! stored event log (see `http::events`), so the bus may drop what it cannot hold.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::store::Event;

/// Events a slow subscriber may lag behind before it must replay from the store.
const CAPACITY: usize = 16_384;

#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Self { tx }
    }

    /// Publishes events in order. Called only after their transaction committed.
    pub fn publish_all(&self, events: Vec<Event>) {
        for e in events {
            // No subscriber is not an error: the event is in the log.
            let _ = self.tx.send(Arc::new(e));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Current number of live subscribers (SSE streams).
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}
