//! Ports: the traits the domain and services need from the outside world (stores and senders).
//! Adapters in `store/` and `notify/` implement them; `app.rs` wires the concrete ones.

use std::time::Duration;

use async_trait::async_trait;

use super::auth_type::Method;
use super::clock::Timestamp;
use super::code::CodeHash;
use super::device::{
    Device, DeviceId, PinCheck, PinFailure, PushEnrollmentMode, PushRegistration,
    PushRegistrationOutcome,
};
use super::guard::{AccountState, GuardOp, GuardRules, GuardVerdict};
use super::held::{HeldRequest, HeldTicket};
use super::otp::{OtpAnswer, RedeemOutcome};
use super::regulation::{Finish, FinishOutcome, ResendOutcome, VerifyOutcome};
use super::transaction::{Owner, Transaction, TransactionId};

/// Why a store call did not complete. Every variant fails closed: callers never treat it as
/// "allowed".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store holds data this version cannot read: {0}")]
    Corrupt(String),
    #[error("transaction {0} already exists")]
    AlreadyExists(TransactionId),
}

/// Transactions, with every multi-step change applied atomically (one Lua script on Redis, one
/// critical section in memory). `None` means the transaction does not exist (or was evicted).
/// Wakes whoever waits on a transaction (a held request, a status long poll) when it may have
/// changed, on every gate, so waiters need not poll the store. A signal may be lost (a gate
/// restarting, a store failover): waiters still read the store now and then.
pub trait TransactionSignals: Send + Sync {
    /// Starts listening to `id`: a change signalled after this call wakes
    /// [`SignalListener::changed`].
    fn listen(&self, id: &TransactionId) -> Box<dyn SignalListener>;
}

/// One waiter's subscription to one transaction's changes.
#[async_trait]
pub trait SignalListener: Send {
    /// Resolves at the first signal since `listen` or since the previous return, or after
    /// `within`, whichever comes first.
    async fn changed(&mut self, within: Duration);
}

#[async_trait]
pub trait TransactionStore: Send + Sync {
    /// A short name for logs and metric labels: `memory` or `redis`.
    fn backend(&self) -> &'static str;

    /// Succeeds when the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores a new transaction. It is kept until its expiry plus the configured retention, so
    /// results can still be fetched for a while after it ends.
    async fn insert(&self, tx: &Transaction) -> Result<(), StoreError>;

    async fn get(&self, id: &TransactionId) -> Result<Option<Transaction>, StoreError>;

    /// Checks that `owner` may act on the transaction, checks the code and counts the attempt:
    /// one atomic step (`regulation::belongs_to`, `regulation::verify`). `None` when there is no
    /// such transaction or it is another user's or another client's; then nothing is counted or
    /// changed.
    async fn verify_code(
        &self,
        id: &TransactionId,
        owner: Owner<'_>,
        candidate: &CodeHash,
    ) -> Result<Option<Verified>, StoreError>;

    /// Counts a resend and replaces the code, atomically (`regulation::resend`).
    async fn resend(
        &self,
        id: &TransactionId,
        new_code: Option<&CodeHash>,
    ) -> Result<Option<ResendOutcome>, StoreError>;

    /// Moves a pending transaction to a terminal state, atomically (`regulation::finish`).
    async fn finish(
        &self,
        id: &TransactionId,
        update: &Finish,
    ) -> Result<Option<FinishOutcome>, StoreError>;

    /// An OTP submission: checks the code and counts the attempt and, when the code is right,
    /// links the transaction to `answer.user_id` and finishes it as the answer says, in one
    /// atomic step (`otp::redeem`). `None` when there is no such OTP transaction or it is bound
    /// to another user; then nothing is counted or changed.
    async fn redeem_otp(
        &self,
        id: &TransactionId,
        candidate: &CodeHash,
        answer: &OtpAnswer,
    ) -> Result<Option<RedeemOutcome>, StoreError>;
}

/// A verification's outcome with the labels of the transaction it counted against (for metrics
/// and audit, without a second read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub outcome: VerifyOutcome,
    pub auth_type: String,
    pub method: Method,
}

/// The verdict of a rate limiter for one hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// Hits counted in the current window, this one included.
    pub count: u32,
    /// When the window resets; meaningful when not allowed (`Retry-After`).
    pub retry_after: Duration,
}

/// Fixed-window counters shared by every instance of the gateway (atomic in the store), so that
/// limits on cost and guessing hold across replicas.
#[async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Counts one hit on `key` and says whether it is within `limit` per `window`. Keys must not
    /// contain personal data in clear; callers hash phone numbers and user ids first.
    async fn hit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<RateDecision, StoreError>;

    /// Gives back one hit on `key` in its current window (a send that never reached the
    /// provider, or a hit refused by another limit); never below zero.
    async fn refund(&self, key: &str) -> Result<(), StoreError>;
}

/// One text message to deliver.
#[derive(Clone, PartialEq, Eq)]
pub struct SmsMessage {
    pub to: String,
    /// The type's sender id; `None` uses the gateway's default number.
    pub from: Option<String>,
    /// The text, code included: it must never be logged.
    pub body: String,
}

impl std::fmt::Debug for SmsMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsMessage")
            .field("from", &self.from)
            .field("body", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// How a provider call failed, which decides what the caller does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The provider refused the sender id; retry once with the default sender.
    #[error("sender refused: {0}")]
    SenderRefused(String),
    /// A timeout, a 5xx or a network fault: worth retrying or falling back.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// The provider refused the message itself (bad number, bad credentials): do not retry.
    #[error("provider rejected the message: {0}")]
    Rejected(String),
}

/// Delivers text messages through a gateway (Twilio, a generic HTTP hook, a file).
#[async_trait]
pub trait SmsSender: Send + Sync {
    /// The gateway's name for logs and metric labels.
    fn gateway(&self) -> &'static str;
    async fn send(&self, message: &SmsMessage) -> Result<(), SendError>;
}

/// Requests held while their step-up is pending. Each one lives until its TTL (the
/// transaction's) runs out, and is taken out exactly once: of two concurrent `take`s, one gets
/// it and the other `None`.
#[async_trait]
pub trait HeldRequestStore: Send + Sync {
    /// Stores `request` under the transaction id for `ttl`. With `user_key` (an opaque, already
    /// hashed key of the user), it is also remembered as that user's latest held request, so
    /// hold-mode approvals can find it (`latest_for_user`).
    async fn hold(
        &self,
        id: &TransactionId,
        request: &HeldRequest,
        ttl: Duration,
        user_key: Option<&str>,
    ) -> Result<(), StoreError>;

    /// The ticket alone (no request, no body): who may complete it and what it grants.
    async fn ticket(&self, id: &TransactionId) -> Result<Option<HeldTicket>, StoreError>;

    /// Removes and returns the held request, atomically.
    async fn take(&self, id: &TransactionId) -> Result<Option<HeldRequest>, StoreError>;

    /// The transaction id of the latest request held with this `user_key`, while it is held.
    async fn latest_for_user(&self, user_key: &str) -> Result<Option<TransactionId>, StoreError>;

    /// Says that a client connection waits for this held request for `lease` (renewed before
    /// it ends), or, with `None`, that none does any more. Whoever completes an approved
    /// hold-mode request forwards it itself when nobody waits (the waiting connection was
    /// closed, its gate stopped), so an approval is never dropped.
    async fn set_waiter(
        &self,
        id: &TransactionId,
        lease: Option<Duration>,
    ) -> Result<(), StoreError>;

    /// Whether a client connection waits for this held request now.
    async fn has_waiter(&self, id: &TransactionId) -> Result<bool, StoreError>;
}

/// Enrolled devices, one-time enrollment codes and the small atomic counters of the device
/// protocol. Every method is one atomic step (one Lua script on Redis).
#[async_trait]
pub trait DeviceStore: Send + Sync {
    /// Stores a one-time enrollment code (its HMAC only) for `user_id`, valid for `ttl`.
    async fn create_enrollment_code(
        &self,
        code_hash: &CodeHash,
        user_id: &str,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Whether the code exists, without using it (the QR endpoint). `Some(user_id)`.
    async fn peek_enrollment_code(
        &self,
        code_hash: &CodeHash,
    ) -> Result<Option<String>, StoreError>;

    /// Uses the code up: of two concurrent redemptions one gets the user id, the other `None`.
    async fn redeem_enrollment_code(
        &self,
        code_hash: &CodeHash,
    ) -> Result<Option<String>, StoreError>;

    async fn insert_device(&self, device: &Device) -> Result<(), StoreError>;

    async fn get_device(&self, id: &DeviceId) -> Result<Option<Device>, StoreError>;

    /// The user's devices, oldest first.
    async fn devices_of_user(&self, user_id: &str) -> Result<Vec<Device>, StoreError>;

    /// Deletes the device, its push registration, token index and PIN counter. `false` when
    /// there was none.
    async fn delete_device(&self, id: &DeviceId) -> Result<bool, StoreError>;

    /// Replaces the device record's mutable parts written by the services (keys after
    /// `disableFingerprint`, `last_used_at`); the push registration is left as it is in the
    /// store (use `register_push` / `drop_push`).
    async fn update_device(&self, device: &Device) -> Result<bool, StoreError>;

    /// Registers (or replaces) the device's push registration under `mode`, atomically with
    /// the checks: the token may not belong to another device; in single mode no other device of
    /// the same user and application may hold one; in override mode theirs are dropped.
    async fn register_push(
        &self,
        id: &DeviceId,
        registration: &PushRegistration,
        mode: PushEnrollmentMode,
    ) -> Result<PushRegistrationOutcome, StoreError>;

    /// Drops the device's push registration (keys stay). `false` when it had none.
    async fn drop_push(&self, id: &DeviceId) -> Result<bool, StoreError>;

    /// Drops whichever registration holds `token` (the provider said it is invalid).
    async fn drop_push_by_token(&self, token: &str) -> Result<Option<DeviceId>, StoreError>;

    /// Counts a PIN attempt before it is checked, in one atomic step with the check against
    /// `max_pin_attempts` (0 = unlimited): `Exhausted` when the attempts already counted take
    /// the limit (`device::pin_check_allowed`).
    async fn begin_pin_check(
        &self,
        id: &DeviceId,
        max_pin_attempts: u32,
    ) -> Result<PinCheck, StoreError>;

    /// Settles an attempt `begin_pin_check` counted that turned out wrong: at
    /// `max_pin_attempts` (0 = unlimited) the device is deleted as in `delete_device`, in the
    /// same step (`device::pin_failure`).
    async fn settle_pin_failure(
        &self,
        id: &DeviceId,
        max_pin_attempts: u32,
    ) -> Result<PinFailure, StoreError>;

    /// A correct PIN resets the count; returns the attempts counted before (this one included;
    /// 0 when none), so the answer can report its used attempts.
    async fn reset_pin_failures(&self, id: &DeviceId) -> Result<u32, StoreError>;

    /// `true` the first time `key` is claimed within `ttl`, `false` after (request nonces,
    /// fetch-once details).
    async fn claim_once(&self, key: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Remembers a push transaction for the device's pending list until `expires_at`.
    async fn add_pending(
        &self,
        id: &DeviceId,
        transaction: &TransactionId,
        expires_at: Timestamp,
    ) -> Result<(), StoreError>;

    /// The device's remembered transactions that have not expired, oldest first.
    async fn pending(&self, id: &DeviceId) -> Result<Vec<TransactionId>, StoreError>;
}

/// What the admin API asks for: transactions created at or after `since`, newest first, at most
/// `limit` of them, optionally only one user's and only those in one (effective) status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionQuery {
    pub since: Timestamp,
    pub user_id: Option<String>,
    pub status: Option<super::transaction::Status>,
    pub limit: usize,
}

/// One stored audit event: when it happened and the event itself as a JSON object, opaque to
/// the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: Timestamp,
    pub event: String,
}

/// The admin's read side: a time index of transactions (written in the same atomic step as
/// `TransactionStore::insert`, trimmed by age) and a bounded, age-trimmed log of audit events.
#[async_trait]
pub trait AdminStore: Send + Sync {
    /// Live (not evicted) transactions matching `query`, newest first. The status filter sees
    /// the effective status (`Transaction::effective_status` at the store's clock). A status
    /// filter looks at a bounded number of the newest transactions in the window, so on a very
    /// busy gateway it may answer fewer than `limit` even though older matches exist.
    async fn recent_transactions(
        &self,
        query: &TransactionQuery,
    ) -> Result<Vec<Transaction>, StoreError>;

    /// Stores audit events; each is kept until it is older than the store's audit horizon or
    /// pushed out by newer ones (the log is bounded).
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError>;

    /// Audit events at or after `since`, newest first, at most `limit`.
    async fn audit_since(
        &self,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}

/// A user with a lock or a report block in force, as the admin API lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardedUser {
    pub user_id: String,
    pub state: AccountState,
}

/// The account guard's per-user state (`domain::guard`), shared by every instance of the
/// gateway: each step is one atomic store call (one Lua script on Redis), so concurrent
/// failures count exactly and concurrent pushes cannot slip past the cap.
#[async_trait]
pub trait AccountGuardStore: Send + Sync {
    /// Applies `op` to the user's state at the store's clock (`guard::apply`) and keeps the
    /// state as long as it matters (`guard::keep_until`). `user_key` is the user's opaque,
    /// already hashed store key; `user_id` is kept beside the state so admins can list it.
    async fn guard(
        &self,
        user_key: &str,
        user_id: &str,
        op: GuardOp,
        rules: &GuardRules,
    ) -> Result<GuardVerdict, StoreError>;

    /// Users whose account is locked or whose push is blocked by a report, at the store's
    /// clock, soonest to open first.
    async fn guarded_users(&self) -> Result<Vec<GuardedUser>, StoreError>;

    /// Adds `entry` (live until `live_until`) to the user's bounded list `list` when fewer
    /// than `max` live entries are in it (0 = unbounded), in one atomic step that first drops
    /// `remove` and the entries whose time has passed. `Full` lists the live entries, so the
    /// caller can find ones that ended early and try again with them in `remove`.
    async fn admit_entry(
        &self,
        user_key: &str,
        list: BoundedList,
        entry: &str,
        live_until: Timestamp,
        max: u32,
        remove: &[String],
    ) -> Result<Admission, StoreError>;

    /// Drops `entry` from the user's list (a reservation that was not used).
    async fn remove_entry(
        &self,
        user_key: &str,
        list: BoundedList,
        entry: &str,
    ) -> Result<(), StoreError>;
}

/// The per-user lists the account guard bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BoundedList {
    /// Step-ups started and not known to have ended (transaction ids).
    PendingStepUps,
    /// Requests the proxy holds while their step-up runs.
    HeldRequests,
}

impl BoundedList {
    pub fn as_str(self) -> &'static str {
        match self {
            BoundedList::PendingStepUps => "pending",
            BoundedList::HeldRequests => "held",
        }
    }
}

/// What `admit_entry` came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// The list is full: its live entries, each with the time it stops counting, soonest first.
    Full {
        live: Vec<(String, Timestamp)>,
    },
}
