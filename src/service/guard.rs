//! The account guard as a use case (`domain::guard` over `AccountGuardStore`): checks before a
//! step-up starts or a code is checked, counts failures and successes across transactions and
//! methods, admits or holds back pushes, records "this wasn't me" reports, and lets admins list
//! and lift locks. Every lock, unlock, report and refusal is one audit line and one metric.
//!
//! May import: domain, telemetry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::clock::SharedClock;
use crate::domain::clock::Timestamp;
use crate::domain::code::SecretKey;
use crate::domain::guard::{Block, GuardOp, GuardRules, GuardVerdict};
use crate::domain::ports::{AccountGuardStore, Admission, BoundedList, GuardedUser, StoreError};
use crate::domain::transaction::TransactionId;
use crate::telemetry::audit::AuditEvent;
use crate::telemetry::metrics;

/// A refusal by the guard: the block, and how long until it opens (`Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub block: Block,
    pub retry_after: Duration,
}

impl Refused {
    /// The account itself is locked (not only busy with attempts in flight).
    pub fn is_lock_of_account(&self) -> bool {
        matches!(self.block, Block::Locked { .. })
    }

    /// Nothing may start for the user: the account is locked, the attempts in flight take what
    /// is left of the failure limit, or the user's pending step-ups or held requests are at
    /// their bound (as opposed to push alone being held back, which a fallback may answer).
    pub fn is_lock(&self) -> bool {
        matches!(
            self.block,
            Block::Locked { .. }
                | Block::Busy { .. }
                | Block::TooManyPending { .. }
                | Block::TooManyHeld { .. }
        )
    }
}

/// Why the guard did not let a step through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuardError {
    #[error("refused by the account guard: {}", .0.block.as_str())]
    Blocked(Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Asks whether a listed entry of a bounded list still counts (its step-up is still pending,
/// its request still held). Owned and `'static`, so the guard's futures stay `Send`.
pub type StillCounts =
    Box<dyn Fn(String) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// The guard shared by the SMS, push and OTP paths. Cheap to clone.
#[derive(Clone)]
pub struct AccountGuard {
    store: Arc<dyn AccountGuardStore>,
    clock: SharedClock,
    rules: GuardRules,
    /// Keys the per-user state, so no user id appears in a store key.
    key: [u8; 32],
}

impl AccountGuard {
    pub fn new(
        store: Arc<dyn AccountGuardStore>,
        clock: SharedClock,
        rules: GuardRules,
        secret: &SecretKey,
    ) -> Self {
        Self {
            store,
            clock,
            rules,
            key: secret.derive("account-guard-key"),
        }
    }

    pub fn rules(&self) -> &GuardRules {
        &self.rules
    }

    fn user_key(&self, user_id: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(user_id.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    async fn step(&self, user_id: &str, op: GuardOp) -> Result<GuardVerdict, StoreError> {
        self.store
            .guard(&self.user_key(user_id), user_id, op, &self.rules)
            .await
    }

    fn refused(
        &self,
        user_id: &str,
        block: Block,
        transaction: Option<&TransactionId>,
    ) -> GuardError {
        metrics::account_guard(match block {
            Block::Locked { .. } => "refused_locked",
            Block::PushReported { .. } => "refused_push_reported",
            Block::PushFatigue { .. } => "refused_push_fatigue",
            Block::Busy { .. } => "refused_busy",
            Block::TooManyPending { .. } => "refused_too_many_pending",
            Block::TooManyHeld { .. } => "refused_too_many_held",
        });
        AuditEvent {
            event: "ACCOUNT_GUARD_REFUSED",
            transaction_id: transaction.map(ToString::to_string).as_deref(),
            user_id: Some(user_id),
            detail: Some(block.as_str()),
            ..AuditEvent::default()
        }
        .emit();
        GuardError::Blocked(Refused {
            block,
            retry_after: self.clock.now().until(block.until()),
        })
    }

    /// Whether a step-up may start, or a code be checked, for `user_id` (refused while the
    /// account is locked). Changes nothing.
    pub async fn check(
        &self,
        user_id: &str,
        transaction: Option<&TransactionId>,
    ) -> Result<(), GuardError> {
        match self.step(user_id, GuardOp::Check).await? {
            GuardVerdict::Blocked(block) => Err(self.refused(user_id, block, transaction)),
            _ => Ok(()),
        }
    }

    /// Whether a push may go to `user_id` now; when it may, it is counted (pushes since the
    /// last success).
    pub async fn admit_push(&self, user_id: &str) -> Result<(), GuardError> {
        match self.step(user_id, GuardOp::AdmitPush).await? {
            GuardVerdict::Blocked(block) => Err(self.refused(user_id, block, None)),
            _ => Ok(()),
        }
    }

    /// An authentication attempt of `user_id` is about to be checked: counted now, in one
    /// atomic step with the limit, so attempts arriving together cannot check more than the
    /// limit. Refused while the account is locked. Settle it with `failed`, `succeeded` or
    /// `refund`.
    pub async fn begin_attempt(
        &self,
        user_id: &str,
        transaction: &TransactionId,
    ) -> Result<(), GuardError> {
        match self.step(user_id, GuardOp::BeginAttempt).await? {
            GuardVerdict::Blocked(block) => Err(self.refused(user_id, block, Some(transaction))),
            _ => Ok(()),
        }
    }

    /// A begun attempt turned out not to be one (unknown, ended or expired transaction).
    pub async fn refund(&self, user_id: &str) {
        if let Err(error) = self.step(user_id, GuardOp::Refund).await {
            tracing::warn!(%error, "account guard: attempt not refunded");
        }
    }

    /// A begun attempt of `user_id` failed (wrong code, PIN or number). A store fault is
    /// logged, not raised: the answer was already decided, and the attempt stays counted.
    pub async fn failed(&self, user_id: &str, transaction: &TransactionId, method: &str) {
        match self.step(user_id, GuardOp::Failure).await {
            Ok(GuardVerdict::LockedNow { until }) => {
                metrics::account_guard("locked");
                AuditEvent {
                    event: "ACCOUNT_LOCKED",
                    transaction_id: Some(&transaction.to_string()),
                    method: Some(method),
                    user_id: Some(user_id),
                    detail: Some(&format!("until={}", until.millis())),
                    ..AuditEvent::default()
                }
                .emit();
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "account guard: failure not counted"),
        }
    }

    /// A successful authentication of `user_id`: the failure and push counts start again.
    pub async fn succeeded(&self, user_id: &str) {
        if let Err(error) = self.step(user_id, GuardOp::Success).await {
            tracing::warn!(%error, "account guard: success not recorded");
        }
    }

    /// "This wasn't me": blocks push step-ups for `user_id` for the configured time.
    pub async fn report(
        &self,
        user_id: &str,
        transaction: &TransactionId,
        device: &str,
    ) -> Result<(), StoreError> {
        if let GuardVerdict::Reported { until } = self.step(user_id, GuardOp::Report).await? {
            metrics::account_guard("reported");
            AuditEvent {
                event: "PUSH_AUTH_REPORTED_NOT_ME",
                transaction_id: Some(&transaction.to_string()),
                user_id: Some(user_id),
                detail: Some(&format!(
                    "device={device} push_blocked_until={}",
                    until.millis()
                )),
                ..AuditEvent::default()
            }
            .emit();
        }
        Ok(())
    }

    /// Lifts every lock and block of `user_id` and clears its counts (an admin's action).
    pub async fn unlock(&self, user_id: &str, admin: &str) -> Result<(), StoreError> {
        self.step(user_id, GuardOp::Unlock).await?;
        metrics::account_guard("unlocked");
        AuditEvent {
            event: "ACCOUNT_UNLOCKED",
            user_id: Some(user_id),
            client_id: Some(admin),
            ..AuditEvent::default()
        }
        .emit();
        Ok(())
    }

    /// Adds `entry` (live until `live_until`) to the user's bounded `list`, refusing when the
    /// list is full (`TooManyPending` / `TooManyHeld`, until the soonest entry ends). When full,
    /// each listed entry is asked `still_counts` once, and those that ended early make room.
    pub async fn admit(
        &self,
        user_id: &str,
        list: BoundedList,
        entry: &str,
        live_until: Timestamp,
        still_counts: StillCounts,
    ) -> Result<(), GuardError> {
        let max = match list {
            BoundedList::PendingStepUps => self.rules.max_pending_step_ups,
            BoundedList::HeldRequests => self.rules.max_held_requests,
        };
        let key = self.user_key(user_id);
        let mut ended = Vec::new();
        loop {
            let live = match self
                .store
                .admit_entry(&key, list, entry, live_until, max, &ended)
                .await?
            {
                Admission::Admitted => return Ok(()),
                Admission::Full { live } => live,
            };
            let retried = !ended.is_empty();
            if !retried {
                for (other, _) in &live {
                    if !still_counts(other.clone()).await {
                        ended.push(other.clone());
                    }
                }
            }
            if retried || ended.is_empty() {
                let until = live.first().map_or(self.clock.now(), |(_, until)| *until);
                let block = match list {
                    BoundedList::PendingStepUps => Block::TooManyPending { until },
                    BoundedList::HeldRequests => Block::TooManyHeld { until },
                };
                return Err(self.refused(user_id, block, None));
            }
        }
    }

    /// Replaces `old` by `new` (live until `live_until`) in the user's list: a reservation
    /// becoming the thing it reserved room for.
    pub async fn replace(
        &self,
        user_id: &str,
        list: BoundedList,
        old: &str,
        new: &str,
        live_until: Timestamp,
    ) -> Result<(), StoreError> {
        // Unbounded for this one step: `old` made the room, and was just dropped.
        self.store
            .admit_entry(
                &self.user_key(user_id),
                list,
                new,
                live_until,
                0,
                &[old.to_owned()],
            )
            .await
            .map(|_| ())
    }

    /// Drops `entry` from the user's list (a reservation that was not used). Logged, not
    /// raised: an entry left behind stops counting when its time passes.
    pub async fn release(&self, user_id: &str, list: BoundedList, entry: &str) {
        if let Err(error) = self
            .store
            .remove_entry(&self.user_key(user_id), list, entry)
            .await
        {
            tracing::warn!(%error, "account guard: entry not released");
        }
    }

    /// Users locked or with push blocked, soonest to open first; a lock or block that has run
    /// out shows as `None`.
    pub async fn guarded_users(&self) -> Result<Vec<GuardedUser>, StoreError> {
        let now = self.clock.now();
        let mut users = self.store.guarded_users().await?;
        for user in &mut users {
            user.state.locked_until = user.state.locked_until.filter(|until| now < *until);
            user.state.push_blocked_until =
                user.state.push_blocked_until.filter(|until| now < *until);
        }
        Ok(users)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clock::ManualClock;
    use crate::store::guard::MemoryGuardStore;

    fn guard() -> AccountGuard {
        let clock: SharedClock = Arc::new(ManualClock::starting_now());
        AccountGuard::new(
            Arc::new(MemoryGuardStore::new(clock.clone())),
            clock,
            GuardRules {
                max_failures: 2,
                ..GuardRules::default()
            },
            &SecretKey::new(vec![7u8; 32]),
        )
    }

    #[tokio::test]
    async fn two_failures_lock_every_check_until_an_admin_unlocks() {
        let guard = guard();
        let tx = TransactionId::random();
        guard.check("ann", None).await.unwrap();
        for method in ["sms", "push"] {
            guard.begin_attempt("ann", &tx).await.unwrap();
            guard.failed("ann", &tx, method).await;
        }
        assert!(matches!(
            guard.check("ann", None).await,
            Err(GuardError::Blocked(Refused {
                block: Block::Locked { .. },
                ..
            }))
        ));
        assert!(guard.check("bob", None).await.is_ok());
        let listed = guard.guarded_users().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].user_id, "ann");
        guard.unlock("ann", "ops").await.unwrap();
        guard.check("ann", None).await.unwrap();
    }

    #[test]
    fn user_keys_are_opaque_and_stable() {
        let guard = guard();
        assert_eq!(guard.user_key("ann"), guard.user_key("ann"));
        assert_ne!(guard.user_key("ann"), guard.user_key("bob"));
        assert!(!guard.user_key("ann").contains("ann"));
        assert_eq!(guard.user_key("ann").len(), 32);
    }
}
