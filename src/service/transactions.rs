//! The transaction engine: starts transactions from auth types (with a fresh code for SMS),
//! checks codes, resends, finishes and reads them. Every counter change is one atomic store call.

use std::sync::Arc;

use rand_core::OsRng;

use crate::domain::auth_type::{AuthType, Method};
use crate::domain::clock::SharedClock;
use crate::domain::code::{CodeHasher, OneTimeCode};
use crate::domain::ports::{StoreError, TransactionStore};
use crate::domain::regulation::{Finish, FinishOutcome, ResendOutcome, VerifyOutcome};
use crate::domain::transaction::{Details, Status, Transaction, TransactionId};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No such transaction, or it belongs to another user: one answer for both, so callers
    /// cannot learn which transactions exist.
    #[error("unknown transaction")]
    UnknownTransaction,
    #[error(transparent)]
    Store(#[from] StoreError),
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
    Resent(Resent),
    Refused(ResendOutcome),
}

#[derive(Clone)]
pub struct TransactionEngine {
    store: Arc<dyn TransactionStore>,
    clock: SharedClock,
    hasher: CodeHasher,
}

impl TransactionEngine {
    pub fn new(store: Arc<dyn TransactionStore>, clock: SharedClock, hasher: CodeHasher) -> Self {
        Self {
            store,
            clock,
            hasher,
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
        let code = (auth_type.method == Method::Sms).then(|| OneTimeCode::generate(&mut OsRng));
        let transaction = Transaction {
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
        self.store.insert(&transaction).await?;
        Ok(Started { transaction, code })
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

    async fn owned_by(
        &self,
        id: &TransactionId,
        user_id: &str,
    ) -> Result<Transaction, EngineError> {
        match self.store.get(id).await? {
            Some(tx) if tx.user_id.as_deref() == Some(user_id) => Ok(tx),
            _ => Err(EngineError::UnknownTransaction),
        }
    }

    /// Checks what the user typed and counts the attempt. Input that is not six digits counts as
    /// a wrong code, so malformed guesses are not free.
    pub async fn verify(
        &self,
        id: &TransactionId,
        user_id: &str,
        typed: &str,
    ) -> Result<VerifyOutcome, EngineError> {
        self.owned_by(id, user_id).await?;
        let candidate = self.hasher.hash_input(id, typed);
        self.store
            .verify_code(id, &candidate)
            .await?
            .ok_or(EngineError::UnknownTransaction)
    }

    /// Counts a resend and issues a new code (the old one stops working).
    pub async fn resend(
        &self,
        id: &TransactionId,
        user_id: &str,
    ) -> Result<ResendResult, EngineError> {
        let transaction = self.owned_by(id, user_id).await?;
        let code = OneTimeCode::generate(&mut OsRng);
        let hash = self.hasher.hash(id, &code);
        match self.store.resend(id, Some(&hash)).await? {
            None => Err(EngineError::UnknownTransaction),
            Some(ResendOutcome::Resent { resends }) => {
                let transaction = Transaction {
                    resends,
                    code_hash: Some(hash),
                    ..transaction
                };
                Ok(ResendResult::Resent(Resent { transaction, code }))
            }
            Some(refused) => Ok(ResendResult::Refused(refused)),
        }
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
