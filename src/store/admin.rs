//! What both stores share for the admin's read side (`domain::ports::AdminStore`): how long
//! the transaction index and the audit log keep entries, how far one query may look, and the
//! delegation through the metrics decorator. The implementations live beside each store
//! (`memory/admin.rs`, `redis/admin.rs`), where they can reach its internals; both pass the
//! conformance suite in `admin/conformance.rs`.
//!
//! May import: domain.

use std::time::Duration;

use async_trait::async_trait;

use super::instrumented::Instrumented;
use crate::domain::clock::Timestamp;
use crate::domain::ports::{AdminStore, AuditEntry, StoreError, TransactionQuery};
use crate::domain::transaction::Transaction;

/// No transaction lives longer than this (config validation caps `ttl_seconds` at a day), so an
/// index entry older than this plus the retention points at an evicted transaction and can go.
pub const LONGEST_TRANSACTION: Duration = Duration::from_secs(24 * 3600);

/// Audit events older than this are trimmed.
pub const AUDIT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// At most this many audit events are kept in Redis (shared by every instance).
pub const REDIS_AUDIT_CAPACITY: usize = 100_000;

/// At most this many audit events are kept in memory (one process).
pub const MEMORY_AUDIT_CAPACITY: usize = 10_000;

/// One query looks at no more index entries than this, so a filter that matches little cannot
/// make a request walk a whole day of a busy gateway.
pub const MAX_SCANNED: usize = 20_000;

/// The oldest `created_at` an index entry may have at `now` and still point at a live
/// transaction.
pub fn index_horizon(now: Timestamp, retention: Duration) -> Timestamp {
    let lifetime = u64::try_from((LONGEST_TRANSACTION + retention).as_millis()).unwrap_or(u64::MAX);
    Timestamp(now.millis().saturating_sub(lifetime))
}

/// The oldest audit event kept at `now`.
pub fn audit_horizon(now: Timestamp) -> Timestamp {
    let age = u64::try_from(AUDIT_MAX_AGE.as_millis()).unwrap_or(u64::MAX);
    Timestamp(now.millis().saturating_sub(age))
}

/// Whether `tx` belongs in the answer to `query` at `now`.
pub(crate) fn matches(tx: &Transaction, query: &TransactionQuery, now: Timestamp) -> bool {
    tx.created_at >= query.since
        && query
            .user_id
            .as_ref()
            .is_none_or(|user| tx.user_id.as_ref() == Some(user))
        && query
            .status
            .is_none_or(|status| tx.effective_status(now) == status)
}

/// Admin reads are rare and off the request path: delegated without timing.
#[async_trait]
impl<S: AdminStore> AdminStore for Instrumented<S> {
    async fn recent_transactions(
        &self,
        query: &TransactionQuery,
    ) -> Result<Vec<Transaction>, StoreError> {
        self.inner().recent_transactions(query).await
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        self.inner().append_audit(entries).await
    }

    async fn audit_since(
        &self,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner().audit_since(since, limit).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md house rules)
mod conformance;
