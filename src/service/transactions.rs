//! The transaction engine: starts transactions from auth types (with a fresh code for SMS),
//! checks codes, resends, finishes and reads them. Every counter change is one atomic store call.

use std::sync::Arc;

use rand_core::OsRng;

use crate::domain::auth_type::{AuthType, Method};
use crate::domain::clock::SharedClock;
use crate::domain::code::{CodeHasher, OneTimeCode};
use crate::domain::ports::{BoundedList, StoreError, TransactionStore, Verified};
use crate::domain::regulation::{Finish, FinishOutcome, ResendOutcome, VerifyOutcome};
use crate::domain::transaction::{Details, Owner, Status, Transaction, TransactionId};
use crate::service::guard::{AccountGuard, GuardError, Refused, StillCounts};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No such transaction, or it belongs to another user: one answer for both, so callers
    /// cannot learn which transactions exist.
    #[error("unknown transaction")]
    UnknownTransaction,
    /// The account guard refused: the account is locked, or (pushes) push is held back.
    #[error("refused by the account guard: {}", .0.block.as_str())]
    Blocked(Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<GuardError> for EngineError {
    fn from(error: GuardError) -> Self {
        match error {
            GuardError::Blocked(refused) => EngineError::Blocked(refused),
            GuardError::Store(error) => EngineError::Store(error),
        }
    }
}

/// A transaction just started. `code` is the plaintext to deliver (SMS only); it is not stored.
#[derive(Debug)]
pub struct Started {
    pub transaction: Transaction,
    pub code: Option<OneTimeCode>,
}

/// A resend that was granted, with the new code to deliver.
#[derive(Debug)]
pub struct Resent {
    pub transaction: Transaction,
    pub code: OneTimeCode,
}

/// What a resend request came to.
#[derive(Debug)]
pub enum ResendResult {
    Resent(Box<Resent>),
    Refused(ResendOutcome),
}

#[derive(Clone)]
pub struct TransactionEngine {
    store: Arc<dyn TransactionStore>,
    clock: SharedClock,
    hasher: CodeHasher,
    /// Account-wide limits across transactions; `None` runs without them (unit tests).
    guard: Option<AccountGuard>,
}

impl TransactionEngine {
    pub fn new(store: Arc<dyn TransactionStore>, clock: SharedClock, hasher: CodeHasher) -> Self {
        Self {
            store,
            clock,
            hasher,
            guard: None,
        }
    }

    /// Applies the account guard to every start, check and answer.
    pub fn with_guard(mut self, guard: AccountGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    pub fn guard(&self) -> Option<&AccountGuard> {
        self.guard.as_ref()
    }

    /// Counts an authentication attempt of `user_id` before it is checked (the account guard;
    /// refused while the account is locked). Settle it with `record_failure`,
    /// `record_success` or `refund_attempt`.
    pub async fn begin_attempt(
        &self,
        user_id: &str,
        transaction: &TransactionId,
    ) -> Result<(), EngineError> {
        if let Some(guard) = &self.guard {
            guard.begin_attempt(user_id, transaction).await?;
        }
        Ok(())
    }

    /// A begun attempt that turned out not to be one.
    pub async fn refund_attempt(&self, user_id: &str) {
        if let Some(guard) = &self.guard {
            guard.refund(user_id).await;
        }
    }

    /// A begun attempt of `user_id` failed (wrong code, PIN or number), for the account guard.
    pub async fn record_failure(&self, user_id: &str, transaction: &TransactionId, method: Method) {
        if let Some(guard) = &self.guard {
            guard.failed(user_id, transaction, method.as_str()).await;
        }
    }

    /// A successful authentication of `user_id`, for the account guard.
    pub async fn record_success(&self, user_id: &str) {
        if let Some(guard) = &self.guard {
            guard.succeeded(user_id).await;
        }
    }

    /// Starts a transaction of `auth_type` (the caller has already chosen among fallbacks).
    pub async fn start(
        &self,
        auth_type: &AuthType,
        user_id: Option<String>,
        details: Details,
    ) -> Result<Started, EngineError> {
        let now = self.clock.now();
        let id = TransactionId::random();
        // A locked account starts nothing; a push also needs the push cap's consent (which
        // counts it); and the user's pending step-ups are bounded.
        if let (Some(guard), Some(user_id)) = (&self.guard, user_id.as_deref()) {
            guard.check(user_id, None).await?;
            guard
                .admit(
                    user_id,
                    BoundedList::PendingStepUps,
                    &id.to_string(),
                    now.plus(auth_type.ttl),
                    self.pending_check(),
                )
                .await?;
            // Counted last, so a push refused for another reason is not counted as sent.
            if auth_type.method.is_push()
                && let Err(error) = guard.admit_push(user_id).await
            {
                guard
                    .release(user_id, BoundedList::PendingStepUps, &id.to_string())
                    .await;
                return Err(error.into());
            }
        }
        let code = (auth_type.method == Method::Sms).then(|| OneTimeCode::generate(&mut OsRng));
        let transaction = Transaction {
            evidence: None,
            id,
            auth_type: auth_type.name.clone(),
            method: auth_type.method,
            user_id,
            status: Status::Pending,
            created_at: now,
            expires_at: now.plus(auth_type.ttl),
            finished_at: None,
            attempts: 0,
            max_attempts: auth_type.max_attempts,
            resends: 0,
            max_resends: auth_type.max_resends,
            code_hash: code.as_ref().map(|code| self.hasher.hash(&id, code)),
            reason: None,
            details,
        };
        if let Err(error) = self.store.insert(&transaction).await {
            if let (Some(guard), Some(user_id)) = (&self.guard, transaction.user_id.as_deref()) {
                guard
                    .release(user_id, BoundedList::PendingStepUps, &id.to_string())
                    .await;
            }
            return Err(error.into());
        }
        Ok(Started { transaction, code })
    }

    /// The pending bound's check of a listed entry (see `still_pending`).
    fn pending_check(&self) -> StillCounts {
        let engine = self.clone();
        Box::new(move |id: String| {
            let engine = engine.clone();
            Box::pin(async move { engine.still_pending(&id).await })
        })
    }

    /// Whether the transaction named `id` is still pending (a listed entry of the pending
    /// bound that ended early frees its room). One not stored (yet) counts: its entry is made
    /// before the insert, and a failed insert releases it. A store fault counts: fail closed.
    async fn still_pending(&self, id: &str) -> bool {
        let Ok(id) = id.parse::<TransactionId>() else {
            return false;
        };
        match self.get(&id).await {
            Ok(Some(tx)) => tx.status == Status::Pending,
            Ok(None) | Err(_) => true,
        }
    }

    /// Reads a transaction as a client should see it (a pending one past its expiry reads as
    /// expired).
    pub async fn get(&self, id: &TransactionId) -> Result<Option<Transaction>, EngineError> {
        let now = self.clock.now();
        Ok(self.store.get(id).await?.map(|mut tx| {
            tx.status = tx.effective_status(now);
            tx
        }))
    }

    /// The transaction if it exists and `owner` may act on it; otherwise the one generic answer.
    pub async fn get_owned(
        &self,
        id: &TransactionId,
        owner: Owner<'_>,
    ) -> Result<Transaction, EngineError> {
        match self.get(id).await? {
            Some(tx) if tx.is_owned_by(owner) => Ok(tx),
            _ => Err(EngineError::UnknownTransaction),
        }
    }

    /// Checks what the user typed and counts the attempt, in one atomic store step that first
    /// checks `owner` may act on the transaction (another user's or another client's answers as
    /// unknown and costs no attempt). Input that is not six digits counts as a wrong code, so malformed guesses are
    /// not free. The result carries the transaction's type and method for metrics.
    pub async fn verify(
        &self,
        id: &TransactionId,
        owner: Owner<'_>,
        typed: &str,
    ) -> Result<Verified, EngineError> {
        if self.guard.is_none() {
            return self.verify_counted(id, owner, typed).await;
        }
        // Another user's or client's transaction answers as unknown before the user's account
        // is touched: no API client can spend a stranger's attempts.
        self.get_owned(id, owner).await?;
        // Counted, checked and settled to the end even when the client goes away mid-way, so an
        // attempt is never left counted in flight.
        let engine = self.clone();
        let (id, user_id) = (*id, owner.user_id.to_owned());
        let client_id = owner.client_id.map(str::to_owned);
        let typed = typed.to_owned();
        tokio::spawn(async move {
            let owner = Owner {
                user_id: &user_id,
                client_id: client_id.as_deref(),
            };
            engine.verify_counted(&id, owner, &typed).await
        })
        .await
        .map_err(|error| EngineError::Store(StoreError::Unavailable(error.to_string())))?
    }

    async fn verify_counted(
        &self,
        id: &TransactionId,
        owner: Owner<'_>,
        typed: &str,
    ) -> Result<Verified, EngineError> {
        self.begin_attempt(owner.user_id, id).await?;
        let candidate = self.hasher.hash_input(id, typed);
        let verified = match self.store.verify_code(id, owner, &candidate).await {
            Ok(Some(verified)) => verified,
            Ok(None) => {
                self.refund_attempt(owner.user_id).await;
                return Err(EngineError::UnknownTransaction);
            }
            Err(error) => {
                self.refund_attempt(owner.user_id).await;
                return Err(error.into());
            }
        };
        match verified.outcome {
            VerifyOutcome::Approved { .. } => self.record_success(owner.user_id).await,
            VerifyOutcome::WrongCode { .. } | VerifyOutcome::Exhausted { .. } => {
                self.record_failure(owner.user_id, id, verified.method)
                    .await;
            }
            VerifyOutcome::Expired | VerifyOutcome::NotPending(_) | VerifyOutcome::NoCode => {
                self.refund_attempt(owner.user_id).await;
            }
        }
        Ok(verified)
    }

    /// Counts a resend of `transaction` (already read and checked by the caller with
    /// `get_owned`) and issues a new code; the old one stops working.
    pub async fn resend(&self, transaction: Transaction) -> Result<ResendResult, EngineError> {
        let code = OneTimeCode::generate(&mut OsRng);
        let hash = self.hasher.hash(&transaction.id, &code);
        match self.store.resend(&transaction.id, Some(&hash)).await? {
            None => Err(EngineError::UnknownTransaction),
            Some(ResendOutcome::Resent { resends }) => {
                let transaction = Transaction {
                    resends,
                    code_hash: Some(hash),
                    ..transaction
                };
                Ok(ResendResult::Resent(Box::new(Resent { transaction, code })))
            }
            Some(refused) => Ok(ResendResult::Refused(refused)),
        }
    }

    /// Counts a resend of a transaction without a code (push), atomically against its
    /// `max_resends`.
    pub async fn count_resend(&self, id: &TransactionId) -> Result<ResendOutcome, EngineError> {
        self.store
            .resend(id, None)
            .await?
            .ok_or(EngineError::UnknownTransaction)
    }

    /// Moves a pending transaction to a terminal state (approve, deny, fail).
    pub async fn finish(
        &self,
        id: &TransactionId,
        update: &Finish,
    ) -> Result<FinishOutcome, EngineError> {
        self.store
            .finish(id, update)
            .await?
            .ok_or(EngineError::UnknownTransaction)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::domain::clock::ManualClock;
    use crate::domain::code::SecretKey;
    use crate::domain::transaction::Reason;
    use crate::store::memory::MemoryStore;

    fn sms_type(max_attempts: u32, max_resends: u32) -> AuthType {
        AuthType {
            name: "sms_code".into(),
            method: Method::Sms,
            ttl: Duration::from_secs(300),
            max_attempts,
            max_resends,
            sender_id: None,
            fallback: None,
            default_messages: BTreeMap::new(),
            transaction_signing: false,
            number_matching: crate::domain::auth_type::NumberMatching::Off,
        }
    }

    fn engine() -> (TransactionEngine, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::starting_now());
        let store = Arc::new(MemoryStore::new(clock.clone(), Duration::from_secs(60)));
        let hasher = CodeHasher::new(&SecretKey::new(vec![9u8; 32]));
        (TransactionEngine::new(store, clock.clone(), hasher), clock)
    }

    #[tokio::test]
    async fn sms_start_issues_a_code_that_verifies_once() {
        let (engine, _) = engine();
        let started = engine
            .start(&sms_type(3, 0), Some("ann".into()), Details::default())
            .await
            .unwrap();
        let code = started.code.expect("sms transactions get a code");
        let id = started.transaction.id;
        assert_eq!(
            engine
                .verify(&id, Owner::through_proxy("ann"), code.expose())
                .await
                .unwrap()
                .outcome,
            VerifyOutcome::Approved { attempts: 1 }
        );
        assert_eq!(
            engine
                .verify(&id, Owner::through_proxy("ann"), code.expose())
                .await
                .unwrap()
                .outcome,
            VerifyOutcome::NotPending(Status::Approved)
        );
        assert_eq!(
            engine.get(&id).await.unwrap().unwrap().status,
            Status::Approved
        );
    }

    #[tokio::test]
    async fn another_users_path_is_an_unknown_transaction_and_costs_no_attempt() {
        let (engine, _) = engine();
        let started = engine
            .start(&sms_type(3, 0), Some("ann".into()), Details::default())
            .await
            .unwrap();
        let id = started.transaction.id;
        assert!(matches!(
            engine
                .verify(&id, Owner::through_proxy("bob"), "000000")
                .await,
            Err(EngineError::UnknownTransaction)
        ));
        assert!(matches!(
            engine.get_owned(&id, Owner::through_proxy("bob")).await,
            Err(EngineError::UnknownTransaction)
        ));
        assert_eq!(engine.get(&id).await.unwrap().unwrap().attempts, 0);
        assert!(matches!(
            engine
                .verify(
                    &TransactionId::random(),
                    Owner::through_proxy("ann"),
                    "000000"
                )
                .await,
            Err(EngineError::UnknownTransaction)
        ));
    }

    #[tokio::test]
    async fn malformed_input_counts_as_a_wrong_code() {
        let (engine, _) = engine();
        let started = engine
            .start(&sms_type(2, 0), Some("ann".into()), Details::default())
            .await
            .unwrap();
        let id = started.transaction.id;
        assert_eq!(
            engine
                .verify(&id, Owner::through_proxy("ann"), "abc")
                .await
                .unwrap()
                .outcome,
            VerifyOutcome::WrongCode {
                attempts: 1,
                remaining: Some(1)
            }
        );
        assert_eq!(
            engine
                .verify(&id, Owner::through_proxy("ann"), "")
                .await
                .unwrap()
                .outcome,
            VerifyOutcome::Exhausted { attempts: 2 }
        );
        let tx = engine.get(&id).await.unwrap().unwrap();
        assert_eq!(
            (tx.status, tx.reason),
            (Status::Failed, Some(Reason::AttemptsExhausted))
        );
    }

    #[tokio::test]
    async fn resend_replaces_the_code_and_stops_at_the_limit() {
        let (engine, _) = engine();
        let started = engine
            .start(&sms_type(5, 1), Some("ann".into()), Details::default())
            .await
            .unwrap();
        let (id, first) = (started.transaction.id, started.code.unwrap());
        let tx = engine
            .get_owned(&id, Owner::through_proxy("ann"))
            .await
            .unwrap();
        let ResendResult::Resent(resent) = engine.resend(tx.clone()).await.unwrap() else {
            panic!("first resend is allowed")
        };
        assert_eq!(resent.transaction.resends, 1);
        assert!(matches!(
            engine.resend(tx).await.unwrap(),
            ResendResult::Refused(ResendOutcome::LimitReached)
        ));
        if first != resent.code {
            assert!(matches!(
                engine
                    .verify(&id, Owner::through_proxy("ann"), first.expose())
                    .await
                    .unwrap()
                    .outcome,
                VerifyOutcome::WrongCode { .. }
            ));
        }
        assert!(matches!(
            engine
                .verify(&id, Owner::through_proxy("ann"), resent.code.expose())
                .await
                .unwrap()
                .outcome,
            VerifyOutcome::Approved { .. }
        ));
    }

    #[tokio::test]
    async fn a_pending_transaction_reads_as_expired_after_its_ttl() {
        let (engine, clock) = engine();
        let started = engine
            .start(&sms_type(3, 0), Some("ann".into()), Details::default())
            .await
            .unwrap();
        let id = started.transaction.id;
        clock.advance(Duration::from_secs(300));
        assert_eq!(
            engine.get(&id).await.unwrap().unwrap().status,
            Status::Expired
        );
        assert_eq!(
            engine
                .verify(
                    &id,
                    Owner::through_proxy("ann"),
                    started.code.unwrap().expose()
                )
                .await
                .unwrap()
                .outcome,
            VerifyOutcome::Expired
        );
    }

    #[tokio::test]
    async fn push_transactions_have_no_code_and_finish_once() {
        let (engine, _) = engine();
        let push = AuthType {
            method: Method::Push,
            ..sms_type(0, 0)
        };
        let started = engine
            .start(&push, Some("ann".into()), Details::default())
            .await
            .unwrap();
        assert!(started.code.is_none());
        let id = started.transaction.id;
        assert_eq!(
            engine
                .verify(&id, Owner::through_proxy("ann"), "123456")
                .await
                .unwrap()
                .outcome,
            VerifyOutcome::NoCode
        );
        let deny = Finish {
            evidence: None,
            status: Status::Denied,
            reason: Some(Reason::NotAccepted),
            user_id: None,
        };
        assert_eq!(
            engine.finish(&id, &deny).await.unwrap(),
            FinishOutcome::Finished
        );
        assert_eq!(
            engine.finish(&id, &deny).await.unwrap(),
            FinishOutcome::NotPending(Status::Denied)
        );
    }
}
