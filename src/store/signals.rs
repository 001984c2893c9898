//! Transaction change signals inside one process: one `watch` channel per transaction that
//! somebody waits on, created by the first listener and dropped with the last. The memory store
//! signals its own changes here; the Redis store signals here too and also publishes each change
//! so that the other gates' subscribers signal theirs (`store::redis::signals`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::domain::ports::{SignalListener, TransactionSignals};
use crate::domain::transaction::TransactionId;

type Registry = Mutex<HashMap<TransactionId, watch::Sender<u64>>>;

/// The waiters of this process, by transaction. Clones share them.
#[derive(Clone, Default)]
pub struct LocalSignals {
    registry: Arc<Registry>,
}

impl std::fmt::Debug for LocalSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSignals")
            .field("listened", &self.listened())
            .finish()
    }
}

impl LocalSignals {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes every listener of `id` in this process (nothing when nobody listens).
    pub fn signal(&self, id: &TransactionId) {
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = registry.get(id) {
            sender.send_modify(|version| *version = version.wrapping_add(1));
        }
    }

    /// Wakes every listener in this process: after signals may have been missed (a lost
    /// subscription), everybody looks again.
    pub fn signal_all(&self) {
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        for sender in registry.values() {
            sender.send_modify(|version| *version = version.wrapping_add(1));
        }
    }

    /// How many transactions somebody waits on.
    pub fn listened(&self) -> usize {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl TransactionSignals for LocalSignals {
    fn listen(&self, id: &TransactionId) -> Box<dyn SignalListener> {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let receiver = registry
            .entry(*id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Box::new(LocalListener {
            id: *id,
            receiver,
            registry: Arc::downgrade(&self.registry),
        })
    }
}

struct LocalListener {
    id: TransactionId,
    receiver: watch::Receiver<u64>,
    registry: Weak<Registry>,
}

#[async_trait]
impl SignalListener for LocalListener {
    async fn changed(&mut self, within: Duration) {
        let _ = tokio::time::timeout(within, self.receiver.changed()).await;
    }
}

impl Drop for LocalListener {
    fn drop(&mut self) {
        let Some(registry) = self.registry.upgrade() else {
            return;
        };
        let mut registry = registry.lock().unwrap_or_else(PoisonError::into_inner);
        // This listener's receiver is still counted: it was the last one.
        if registry
            .get(&self.id)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            registry.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn a_signal_after_listening_wakes_and_none_waits_the_time_out() {
        let signals = LocalSignals::new();
        let id = TransactionId::random();
        let other = TransactionId::random();
        let mut listener = signals.listen(&id);
        // Signalled before the wait: not lost.
        signals.signal(&id);
        let started = Instant::now();
        listener.changed(Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        // Another transaction's signal does not wake it.
        signals.signal(&other);
        let started = Instant::now();
        listener.changed(Duration::from_millis(100)).await;
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(signals.listened(), 1);
        let second = signals.listen(&id);
        drop(listener);
        assert_eq!(signals.listened(), 1, "one listener left");
        drop(second);
        assert_eq!(signals.listened(), 0, "the last listener takes the channel");
    }
}
