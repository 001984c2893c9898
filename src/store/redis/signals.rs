//! Transaction change signals across gates: a change is signalled in this process and published
//! on `{prefix}decided` (the transaction id as the message); each gate keeps one subscription
//! (a connection of its own, started by the first listener) and signals its own waiters. A lost
//! subscription is made again after a second, and then every local waiter is woken to look
//! again, since signals may have been missed meanwhile. Classic pub/sub reaches every node of a
//! cluster and follows a Sentinel failover by reconnecting, so the mode does not matter here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;

use super::connection::Connector;
use crate::domain::ports::{SignalListener, TransactionSignals};
use crate::domain::transaction::TransactionId;
use crate::store::signals::LocalSignals;

/// Waits before subscribing again after the subscription was lost.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// The channel a store under `prefix` publishes its decided transactions on.
pub(super) fn channel(prefix: &str) -> String {
    format!("{prefix}decided")
}

/// The listening side for one store: this process's waiters, fed by the subscription.
#[derive(Clone)]
pub struct RedisSignals {
    local: LocalSignals,
    connector: Arc<Connector>,
    channel: String,
    subscribed: Arc<AtomicBool>,
}

impl RedisSignals {
    pub(super) fn new(local: LocalSignals, connector: Arc<Connector>, channel: String) -> Self {
        Self {
            local,
            connector,
            channel,
            subscribed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts the subscription once, on the runtime of the first listener.
    fn subscribe_once(&self) {
        if self.subscribed.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime: nobody can wait either; try again with the next listener.
            self.subscribed.store(false, Ordering::Release);
            return;
        };
        let (local, connector, channel) = (
            self.local.clone(),
            self.connector.clone(),
            self.channel.clone(),
        );
        runtime.spawn(subscribe_forever(local, connector, channel));
    }
}

impl TransactionSignals for RedisSignals {
    fn listen(&self, id: &TransactionId) -> Box<dyn SignalListener> {
        self.subscribe_once();
        self.local.listen(id)
    }
}

async fn subscribe_forever(local: LocalSignals, connector: Arc<Connector>, channel: String) {
    loop {
        match connector.pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    // Signals published while there was no subscription are lost: look again.
                    local.signal_all();
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        if let Ok(text) = message.get_payload::<String>()
                            && let Ok(id) = text.parse::<TransactionId>()
                        {
                            local.signal(&id);
                        }
                    }
                    tracing::debug!("redis signal subscription lost; subscribing again");
                }
                Err(error) => tracing::debug!(%error, "redis signal subscription refused"),
            },
            Err(error) => {
                tracing::debug!(%error, "no connection for the redis signal subscription")
            }
        }
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
    }
}
