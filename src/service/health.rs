//! Liveness and readiness: the process answers (live), and its store answers in time (ready).

use std::sync::Arc;
use std::time::Duration;

use crate::domain::ports::{StoreError, TransactionStore};
use crate::telemetry::metrics;

/// Answers "can this instance serve protected traffic now?".
#[derive(Clone)]
pub struct Readiness {
    store: Arc<dyn TransactionStore>,
    timeout: Duration,
}

/// The store's state as reported by `/ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    pub backend: &'static str,
    pub reachable: bool,
    /// Why the store is unreachable; for logs, not for clients.
    pub error: Option<String>,
}

impl Readiness {
    pub fn new(store: Arc<dyn TransactionStore>, timeout: Duration) -> Self {
        Self { store, timeout }
    }

    pub async fn check(&self) -> StoreStatus {
        let backend = self.store.backend();
        let result = match tokio::time::timeout(self.timeout, self.store.ping()).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        };
        metrics::record_store_up(backend, result.is_ok());
        StoreStatus {
            backend,
            reachable: result.is_ok(),
            error: result.err().map(|e| e.to_string()),
        }
    }
}
