//! The embedded store: transactions, rate-limit windows and held requests in `HashMap`s behind
//! one std `Mutex`, with the admin's time index and audit log beside them (`admin`). The default
//! for a single instance; everything is lost on restart.
//!
//! Every multi-step change is one critical section that applies the pure rules of
//! `domain::regulation` (never a copy of them). Time comes from the injected clock: a transaction
//! is evicted at `expires_at + retention`, a rate-limit window ends `window` after its first hit,
//! a held request (and a user's pointer to their latest one) is gone `ttl` after it was held, and
//! expired entries are swept at most once per second of clock time, so memory stays bounded.
//! A held request is taken by removing it under the lock, so it is handed out once.
//! The lock is never held across an `.await` (there is none inside).
//!
//! May import: domain.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::auth_type::Method;
use crate::domain::clock::{SharedClock, Timestamp};
use crate::domain::code::CodeHash;
use crate::domain::held::{HeldRequest, HeldTicket};
use crate::domain::otp::{self, OtpAnswer, RedeemOutcome};
use crate::domain::ports::{
    AuditEntry, HeldRequestStore, RateDecision, RateLimitStore, StoreError, TransactionStore,
    Verified,
};
use crate::domain::regulation::{self, Finish, FinishOutcome, ResendOutcome, VerifyOutcome};
use crate::domain::transaction::{Owner, Transaction, TransactionId};
use crate::store::signals::LocalSignals;

mod admin;

/// How often (in clock time) expired entries are swept out.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The embedded store. Cheap to share behind an `Arc`.
pub struct MemoryStore {
    clock: SharedClock,
    retention: Duration,
    state: Mutex<State>,
    /// Wakes the waiters of a transaction that left `pending`.
    signals: LocalSignals,
}

struct State {
    transactions: HashMap<TransactionId, Transaction>,
    windows: HashMap<String, Window>,
    held: HashMap<TransactionId, Held>,
    /// Each user key's latest held request.
    held_users: HashMap<String, HeldUser>,
    /// Held requests a client connection waits for, until when.
    waiters: HashMap<TransactionId, Timestamp>,
    /// No sweep of transactions before this time.
    next_sweep: Timestamp,
    /// No sweep of rate-limit windows before this time.
    next_window_sweep: Timestamp,
    /// No sweep of held requests before this time.
    next_held_sweep: Timestamp,
    /// The admin's time index, `(created_at, id)` of every stored transaction (see `admin`).
    index: BTreeSet<(Timestamp, TransactionId)>,
    /// The newest audit events in arrival order, bounded (see `admin`).
    audit: VecDeque<AuditEntry>,
}

/// A held request and when it is gone.
struct Held {
    request: HeldRequest,
    expires: Timestamp,
}

/// A user's latest held request, remembered as long as that request's TTL.
struct HeldUser {
    id: TransactionId,
    expires: Timestamp,
}

/// One fixed rate-limit window.
struct Window {
    count: u32,
    ends: Timestamp,
}

impl MemoryStore {
    /// A store that keeps each transaction until `expires_at + retention` by `clock`.
    pub fn new(clock: SharedClock, retention: Duration) -> Self {
        Self {
            clock,
            retention,
            state: Mutex::new(State {
                transactions: HashMap::new(),
                windows: HashMap::new(),
                held: HashMap::new(),
                held_users: HashMap::new(),
                waiters: HashMap::new(),
                next_sweep: Timestamp(0),
                next_window_sweep: Timestamp(0),
                next_held_sweep: Timestamp(0),
                index: BTreeSet::new(),
                audit: VecDeque::new(),
            }),
            signals: LocalSignals::new(),
        }
    }

    /// Where waiters listen for this store's transactions to be decided.
    pub fn signals(&self) -> LocalSignals {
        self.signals.clone()
    }

    fn signal_if(&self, id: &TransactionId, decided: bool) {
        if decided {
            self.signals.signal(id);
        }
    }

    /// Locks the state. Nothing under the lock can leave it half-changed in a way that grants
    /// more than the rules allow (the rules only count up and move to terminal states), so a
    /// poisoned lock is recovered rather than taking the store down for good.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn evict_at(&self, tx: &Transaction) -> Timestamp {
        tx.expires_at.plus(self.retention)
    }

    /// Runs `change` on a live (not evicted) transaction under the lock; `None` when there is none.
    fn with_live<R>(
        &self,
        id: &TransactionId,
        change: impl FnOnce(&mut Transaction, Timestamp) -> R,
    ) -> Option<R> {
        let mut state = self.lock();
        let now = self.clock.now();
        let evict_at = self.evict_at(state.transactions.get(id)?);
        if now >= evict_at {
            state.transactions.remove(id);
            return None;
        }
        state.transactions.get_mut(id).map(|tx| change(tx, now))
    }

    /// How many transactions are held, evicted ones not yet swept included.
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let state = self.lock();
        (state.transactions.len(), state.windows.len())
    }

    /// How many held requests and user pointers are kept, expired ones not yet swept included.
    #[cfg(test)]
    fn held_requests(&self) -> (usize, usize) {
        let state = self.lock();
        (state.held.len(), state.held_users.len())
    }
}

impl State {
    fn sweep_transactions(&mut self, now: Timestamp, retention: Duration) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now.plus(SWEEP_INTERVAL);
        self.transactions
            .retain(|_, tx| now < tx.expires_at.plus(retention));
        let live = &self.transactions;
        self.index
            .retain(|(at, id)| live.get(id).is_some_and(|tx| tx.created_at == *at));
    }

    fn sweep_held(&mut self, now: Timestamp) {
        if now < self.next_held_sweep {
            return;
        }
        self.next_held_sweep = now.plus(SWEEP_INTERVAL);
        self.held.retain(|_, held| now < held.expires);
        self.held_users.retain(|_, user| now < user.expires);
    }

    /// The held request when it is still within its TTL; an expired one is dropped.
    fn live_held(&mut self, id: &TransactionId, now: Timestamp) -> Option<&Held> {
        if now >= self.held.get(id)?.expires {
            self.held.remove(id);
            return None;
        }
        self.held.get(id)
    }

    fn sweep_windows(&mut self, now: Timestamp) {
        if now < self.next_window_sweep {
            return;
        }
        self.next_window_sweep = now.plus(SWEEP_INTERVAL);
        self.windows.retain(|_, window| now < window.ends);
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryStore")
            .field("retention", &self.retention)
            .field("transactions", &state.transactions.len())
            .field("rate_limit_windows", &state.windows.len())
            .field("held_requests", &state.held.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TransactionStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn insert(&self, tx: &Transaction) -> Result<(), StoreError> {
        let mut state = self.lock();
        let now = self.clock.now();
        state.sweep_transactions(now, self.retention);
        if let Some(existing) = state.transactions.get(&tx.id) {
            // A leftover past its retention counts as evicted, as on Redis.
            if now < self.evict_at(existing) {
                return Err(StoreError::AlreadyExists(tx.id));
            }
        }
        state.transactions.insert(tx.id, tx.clone());
        state.index.insert((tx.created_at, tx.id));
        Ok(())
    }

    async fn get(&self, id: &TransactionId) -> Result<Option<Transaction>, StoreError> {
        Ok(self.with_live(id, |tx, _| tx.clone()))
    }

    async fn verify_code(
        &self,
        id: &TransactionId,
        owner: Owner<'_>,
        candidate: &CodeHash,
    ) -> Result<Option<Verified>, StoreError> {
        let verified = self.with_live(id, |tx, now| {
            regulation::belongs_to(tx, owner).then(|| Verified {
                // Only SMS codes are typed back: an OTP's hash is no code to guess at here.
                outcome: if tx.method == Method::Sms {
                    regulation::verify(tx, candidate, now)
                } else {
                    VerifyOutcome::NoCode
                },
                auth_type: tx.auth_type.clone(),
                method: tx.method,
            })
        });
        let verified = verified.flatten();
        self.signal_if(id, verified.as_ref().is_some_and(|v| v.outcome.decided()));
        Ok(verified)
    }

    async fn resend(
        &self,
        id: &TransactionId,
        new_code: Option<&CodeHash>,
    ) -> Result<Option<ResendOutcome>, StoreError> {
        Ok(self.with_live(id, |tx, now| regulation::resend(tx, new_code.copied(), now)))
    }

    async fn finish(
        &self,
        id: &TransactionId,
        update: &Finish,
    ) -> Result<Option<FinishOutcome>, StoreError> {
        let finished = self.with_live(id, |tx, now| regulation::finish(tx, update, now));
        self.signal_if(id, finished.as_ref().is_some_and(FinishOutcome::decided));
        Ok(finished)
    }

    async fn redeem_otp(
        &self,
        id: &TransactionId,
        candidate: &CodeHash,
        answer: &OtpAnswer,
    ) -> Result<Option<RedeemOutcome>, StoreError> {
        let redeemed = self
            .with_live(id, |tx, now| otp::redeem(tx, candidate, answer, now))
            .flatten();
        self.signal_if(id, redeemed.as_ref().is_some_and(RedeemOutcome::decided));
        Ok(redeemed)
    }
}

#[async_trait]
impl RateLimitStore for MemoryStore {
    async fn hit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<RateDecision, StoreError> {
        // A zero window would never count past one; the Redis store clamps the same way.
        let window = window.max(Duration::from_millis(1));
        let mut state = self.lock();
        let now = self.clock.now();
        state.sweep_windows(now);
        let ends = now.plus(window);
        if let Some(current) = state.windows.get_mut(key) {
            if now >= current.ends {
                *current = Window { count: 0, ends };
            }
            current.count = current.count.saturating_add(1);
            return Ok(current.decision(limit, now));
        }
        let fresh = Window { count: 1, ends };
        let decision = fresh.decision(limit, now);
        state.windows.insert(key.to_owned(), fresh);
        Ok(decision)
    }

    async fn refund(&self, key: &str) -> Result<(), StoreError> {
        let mut state = self.lock();
        let now = self.clock.now();
        if let Some(current) = state.windows.get_mut(key)
            && now < current.ends
        {
            current.count = current.count.saturating_sub(1);
        }
        Ok(())
    }
}

#[async_trait]
impl HeldRequestStore for MemoryStore {
    async fn hold(
        &self,
        id: &TransactionId,
        request: &HeldRequest,
        ttl: Duration,
        user_key: Option<&str>,
    ) -> Result<(), StoreError> {
        // A zero TTL would never be readable; the Redis store clamps the same way.
        let ttl = ttl.max(Duration::from_millis(1));
        // The copy (the body may be several MiB) is made before taking the lock.
        let request = request.clone();
        let mut state = self.lock();
        let now = self.clock.now();
        state.sweep_held(now);
        let expires = now.plus(ttl);
        state.held.insert(*id, Held { request, expires });
        if let Some(user_key) = user_key {
            state
                .held_users
                .insert(user_key.to_owned(), HeldUser { id: *id, expires });
        }
        Ok(())
    }

    async fn ticket(&self, id: &TransactionId) -> Result<Option<HeldTicket>, StoreError> {
        let mut state = self.lock();
        let now = self.clock.now();
        Ok(state
            .live_held(id, now)
            .map(|held| held.request.ticket.clone()))
    }

    async fn take(&self, id: &TransactionId) -> Result<Option<HeldRequest>, StoreError> {
        let mut state = self.lock();
        let now = self.clock.now();
        Ok(state
            .held
            .remove(id)
            .filter(|held| now < held.expires)
            .map(|held| held.request))
    }

    async fn latest_for_user(&self, user_key: &str) -> Result<Option<TransactionId>, StoreError> {
        let mut state = self.lock();
        let now = self.clock.now();
        let Some(user) = state.held_users.get(user_key) else {
            return Ok(None);
        };
        if now >= user.expires {
            state.held_users.remove(user_key);
            return Ok(None);
        }
        let id = user.id;
        Ok(state.live_held(&id, now).map(|_| id))
    }

    async fn set_waiter(
        &self,
        id: &TransactionId,
        lease: Option<Duration>,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        let now = self.clock.now();
        state.waiters.retain(|_, until| now < *until);
        match lease {
            Some(lease) => {
                state.waiters.insert(*id, now.plus(lease));
            }
            None => {
                state.waiters.remove(id);
            }
        }
        Ok(())
    }

    async fn has_waiter(&self, id: &TransactionId) -> Result<bool, StoreError> {
        let state = self.lock();
        let now = self.clock.now();
        Ok(state.waiters.get(id).is_some_and(|until| now < *until))
    }
}

impl Window {
    fn decision(&self, limit: u32, now: Timestamp) -> RateDecision {
        RateDecision {
            allowed: self.count <= limit,
            count: self.count,
            retry_after: now.until(self.ends),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md house rules)
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::auth_type::Method;
    use crate::domain::clock::{Clock, ManualClock};
    use crate::domain::transaction::{Details, Status};

    fn pending(clock: &ManualClock, ttl: Duration) -> Transaction {
        let now = clock.now();
        Transaction {
            evidence: None,
            id: TransactionId::random(),
            auth_type: "push".into(),
            method: Method::Push,
            user_id: Some("u".into()),
            status: Status::Pending,
            created_at: now,
            expires_at: now.plus(ttl),
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
    async fn expired_entries_are_swept_on_insert_so_memory_stays_bounded() {
        let clock = Arc::new(ManualClock::new(Timestamp(1_000_000)));
        let store = MemoryStore::new(clock.clone(), Duration::from_secs(10));
        for _ in 0..100 {
            store
                .insert(&pending(&clock, Duration::from_secs(5)))
                .await
                .unwrap();
        }
        assert_eq!(store.held().0, 100);
        // Past expiry + retention, nothing is read, but the next insert sweeps them out.
        clock.advance(Duration::from_secs(15));
        store
            .insert(&pending(&clock, Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(store.held().0, 1);
    }

    #[tokio::test]
    async fn sweeps_run_at_most_once_per_second_of_clock_time() {
        let clock = Arc::new(ManualClock::new(Timestamp(1_000_000)));
        let store = MemoryStore::new(clock.clone(), Duration::ZERO);
        let short = pending(&clock, Duration::from_millis(100));
        store.insert(&short).await.unwrap();
        clock.advance(Duration::from_millis(200));
        // The first insert swept at t0; the next sweep is due at t0 + 1 s.
        store
            .insert(&pending(&clock, Duration::from_secs(60)))
            .await
            .unwrap();
        assert_eq!(store.held().0, 2);
        // Unswept but evicted: reads still never see it.
        assert_eq!(store.get(&short.id).await.unwrap(), None);
        assert_eq!(store.held().0, 1);
    }

    #[tokio::test]
    async fn ended_rate_limit_windows_are_swept() {
        let clock = Arc::new(ManualClock::new(Timestamp(1_000_000)));
        let store = MemoryStore::new(clock.clone(), Duration::ZERO);
        for n in 0..50 {
            store
                .hit(&format!("k{n}"), 5, Duration::from_millis(500))
                .await
                .unwrap();
        }
        assert_eq!(store.held().1, 50);
        clock.advance(Duration::from_secs(2));
        store.hit("other", 5, Duration::from_secs(1)).await.unwrap();
        assert_eq!(store.held().1, 1);
    }

    fn held_request(clock: &ManualClock) -> HeldRequest {
        use crate::domain::held::{BindingDigest, HeldMode, OriginalRequest};
        HeldRequest {
            ticket: HeldTicket {
                bound: None,
                policy: "transfers".into(),
                user_id: "u".into(),
                mode: HeldMode::Hold,
                freshness_seconds: 0,
                binding: BindingDigest::of("t"),
                held_at: clock.now(),
                message: None,
            },
            request: OriginalRequest {
                method: "POST".into(),
                uri: "/transfer".into(),
                headers: Vec::new(),
                body: vec![0; 1024],
            },
        }
    }

    #[tokio::test]
    async fn expired_held_requests_are_swept_on_hold_so_memory_stays_bounded() {
        let clock = Arc::new(ManualClock::new(Timestamp(1_000_000)));
        let store = MemoryStore::new(clock.clone(), Duration::ZERO);
        for n in 0..100 {
            let user = format!("user-{n}");
            store
                .hold(
                    &TransactionId::random(),
                    &held_request(&clock),
                    Duration::from_secs(5),
                    Some(&user),
                )
                .await
                .unwrap();
        }
        assert_eq!(store.held_requests(), (100, 100));
        clock.advance(Duration::from_secs(5));
        store
            .hold(
                &TransactionId::random(),
                &held_request(&clock),
                Duration::from_secs(5),
                None,
            )
            .await
            .unwrap();
        assert_eq!(store.held_requests(), (1, 0));
    }

    #[test]
    fn debug_shows_sizes_not_contents() {
        let store = MemoryStore::new(Arc::new(ManualClock::new(Timestamp(0))), Duration::ZERO);
        let text = format!("{store:?}");
        assert!(text.contains("transactions: 0"), "{text}");
    }
}
