//! The embedded store's admin read side: the time index (`State::index`, a `BTreeSet` of
//! `(created_at, id)` written under the same lock as the transaction and swept with it) and the
//! audit log (`State::audit`, a ring buffer of `MEMORY_AUDIT_CAPACITY` events, trimmed by age on
//! every append). A user filter is applied to each indexed transaction's own `user_id`, so an
//! OTP transaction linked to its user when it finished is found under that user.
//!
//! May import: domain (and its parent, the memory store).

use async_trait::async_trait;

use super::MemoryStore;
use crate::domain::clock::Timestamp;
use crate::domain::ports::{AdminStore, AuditEntry, StoreError, TransactionQuery};
use crate::domain::transaction::Transaction;
use crate::store::admin::{MAX_SCANNED, MEMORY_AUDIT_CAPACITY, audit_horizon, matches};

#[async_trait]
impl AdminStore for MemoryStore {
    async fn recent_transactions(
        &self,
        query: &TransactionQuery,
    ) -> Result<Vec<Transaction>, StoreError> {
        let state = self.lock();
        let now = self.clock.now();
        let found = state
            .index
            .iter()
            .rev()
            .take_while(|(created_at, _)| *created_at >= query.since)
            .take(MAX_SCANNED)
            .filter_map(|(created_at, id)| {
                let tx = state.transactions.get(id)?;
                // An id stored again after eviction leaves its old entry behind until the sweep.
                let current = tx.created_at == *created_at;
                let live = now < self.evict_at(tx);
                (current && live && matches(tx, query, now)).then(|| tx.clone())
            })
            .take(query.limit)
            .collect();
        Ok(found)
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        let mut state = self.lock();
        let horizon = audit_horizon(self.clock.now());
        state.audit.extend(entries.iter().cloned());
        let excess = state.audit.len().saturating_sub(MEMORY_AUDIT_CAPACITY);
        state.audit.drain(..excess);
        state.audit.retain(|entry| entry.at >= horizon);
        Ok(())
    }

    async fn audit_since(
        &self,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let state = self.lock();
        let mut found: Vec<AuditEntry> = state
            .audit
            .iter()
            .filter(|entry| entry.at >= since)
            .cloned()
            .collect();
        // Arrival order is nearly time order; a stable sort keeps equal times in arrival order.
        found.sort_by_key(|entry| std::cmp::Reverse(entry.at));
        found.truncate(limit);
        Ok(found)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md house rules)
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::domain::auth_type::Method;
    use crate::domain::clock::{Clock, ManualClock};
    use crate::domain::ports::TransactionStore;
    use crate::domain::transaction::{Details, Status, TransactionId};

    fn pending(clock: &ManualClock) -> Transaction {
        let now = clock.now();
        Transaction {
            evidence: None,
            id: TransactionId::random(),
            auth_type: "sms".into(),
            method: Method::Sms,
            user_id: Some("u".into()),
            status: Status::Pending,
            created_at: now,
            expires_at: now.plus(Duration::from_secs(5)),
            finished_at: None,
            attempts: 0,
            max_attempts: 0,
            resends: 0,
            max_resends: 0,
            code_hash: None,
            reason: None,
            details: Details::default(),
        }
    }

    #[tokio::test]
    async fn the_index_is_swept_with_the_transactions() {
        let clock = Arc::new(ManualClock::new(Timestamp(1_000_000)));
        let store = MemoryStore::new(clock.clone(), Duration::from_secs(10));
        for _ in 0..50 {
            store.insert(&pending(&clock)).await.unwrap();
        }
        assert_eq!(store.lock().index.len(), 50);
        clock.advance(Duration::from_secs(16));
        store.insert(&pending(&clock)).await.unwrap();
        assert_eq!(store.lock().index.len(), 1);
    }

    #[tokio::test]
    async fn the_audit_ring_keeps_only_the_newest() {
        let clock = Arc::new(ManualClock::new(Timestamp(1_000_000)));
        let store = MemoryStore::new(clock.clone(), Duration::ZERO);
        let entries: Vec<AuditEntry> = (0..MEMORY_AUDIT_CAPACITY + 5)
            .map(|n| AuditEntry {
                at: clock.now(),
                event: format!("{{\"n\":{n}}}"),
            })
            .collect();
        store.append_audit(&entries).await.unwrap();
        let state = store.lock();
        assert_eq!(state.audit.len(), MEMORY_AUDIT_CAPACITY);
        assert_eq!(state.audit.front().unwrap().event, "{\"n\":5}");
    }
}
