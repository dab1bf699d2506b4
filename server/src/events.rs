//! The in-process event bus: committed events fan out from the store writer to every live SSE
//! stream (and anything else that listens).
//!
//! It holds no history: a subscriber that falls behind, or connects late, replays from the
//! stored event log (see `http::events`), so the bus may drop what it cannot hold.
//!
//! Every subscriber receives the same [`Published`] value, which can carry one encoding of the
//! event made by the first subscriber that needs it and shared by all the others: with a
//! thousand SSE streams, an event is formatted once, not a thousand times.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::store::Event;

/// An event as the bus hands it out: shared by every subscriber.
#[derive(Debug)]
pub struct Published {
    pub event: Event,
    encoded: OnceLock<Bytes>,
}

impl Published {
    pub fn new(event: Event) -> Self {
        Self {
            event,
            encoded: OnceLock::new(),
        }
    }

    /// The event encoded by `encode`, which runs once per event: later callers get the same
    /// bytes (a reference-counted clone). All callers must pass the same encoding.
    pub fn encoded(&self, encode: impl FnOnce(&Event) -> Bytes) -> Bytes {
        self.encoded.get_or_init(|| encode(&self.event)).clone()
    }
}

/// Events a slow subscriber may lag behind before it must replay from the store.
const CAPACITY: usize = 16_384;

#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Published>>,
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
            let _ = self.tx.send(Arc::new(Published::new(e)));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    /// Current number of live subscribers (SSE streams).
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}
