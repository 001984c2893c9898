//! The brute-force and cost rules: attempts, resends and the lifetime of a transaction.
//!
//! Each rule is a pure function over a transaction and the current time. The memory store applies
//! them under its lock; the Redis store's Lua scripts implement the same rules, and the store
//! conformance suite holds both to identical outcomes.

use super::clock::Timestamp;
use super::code::CodeHash;
use super::transaction::{Evidence, Owner, Reason, Status, Transaction};

/// A fixed-window limit: at most `limit` hits per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimit {
    pub limit: u32,
    pub window: std::time::Duration,
}

/// The result of checking one submitted code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// The code was right; the transaction is now approved (a code is usable once).
    Approved { attempts: u32 },
    /// The code was wrong; `remaining` is `None` when attempts are unlimited.
    WrongCode {
        attempts: u32,
        remaining: Option<u32>,
    },
    /// The code was wrong and used the last attempt; the transaction is now failed.
    Exhausted { attempts: u32 },
    /// The lifetime had passed; the transaction is now expired.
    Expired,
    /// The transaction had already ended; nothing was counted.
    NotPending(Status),
    /// The transaction has no code (not an SMS transaction); nothing was counted.
    NoCode,
}

/// The result of asking for a resend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResendOutcome {
    Resent {
        resends: u32,
    },
    /// `max_resends` is 0 for this type.
    Disabled,
    LimitReached,
    Expired,
    NotPending(Status),
}

/// The result of moving a transaction to a terminal state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishOutcome {
    Finished,
    Expired,
    NotPending(Status),
}

impl FinishOutcome {
    /// Whether the transaction left `pending` with this step (its waiters should look).
    pub fn decided(&self) -> bool {
        matches!(self, FinishOutcome::Finished | FinishOutcome::Expired)
    }
}

impl VerifyOutcome {
    /// Whether the transaction left `pending` with this step (its waiters should look).
    pub fn decided(&self) -> bool {
        matches!(
            self,
            VerifyOutcome::Approved { .. }
                | VerifyOutcome::Exhausted { .. }
                | VerifyOutcome::Expired
        )
    }
}

/// Marks a pending transaction whose lifetime has passed as expired. Returns whether it did.
fn expire_if_due(tx: &mut Transaction, now: Timestamp) -> bool {
    if tx.status == Status::Pending && now >= tx.expires_at {
        tx.status = Status::Expired;
        tx.reason = Some(Reason::Expired);
        tx.finished_at = Some(now);
        true
    } else {
        false
    }
}

/// Whether `owner` may act on `tx` (its user, through the client that started it). Checked
/// before any attempt is counted: a guess at another user's or another client's transaction must
/// neither count nor tell that it exists.
pub fn belongs_to(tx: &Transaction, owner: Owner<'_>) -> bool {
    tx.is_owned_by(owner)
}

/// Counts one attempt with a submitted code. `candidate` is the submitted code's hash; it is
/// compared in constant time.
pub fn verify(tx: &mut Transaction, candidate: &CodeHash, now: Timestamp) -> VerifyOutcome {
    if tx.status != Status::Pending {
        return VerifyOutcome::NotPending(tx.status);
    }
    if expire_if_due(tx, now) {
        return VerifyOutcome::Expired;
    }
    let Some(stored) = tx.code_hash else {
        return VerifyOutcome::NoCode;
    };
    tx.attempts = tx.attempts.saturating_add(1);
    if stored.matches(candidate) {
        tx.status = Status::Approved;
        tx.finished_at = Some(now);
        return VerifyOutcome::Approved {
            attempts: tx.attempts,
        };
    }
    if tx.max_attempts == 0 {
        return VerifyOutcome::WrongCode {
            attempts: tx.attempts,
            remaining: None,
        };
    }
    let remaining = tx.max_attempts.saturating_sub(tx.attempts);
    if remaining == 0 {
        tx.status = Status::Failed;
        tx.reason = Some(Reason::AttemptsExhausted);
        tx.finished_at = Some(now);
        VerifyOutcome::Exhausted {
            attempts: tx.attempts,
        }
    } else {
        VerifyOutcome::WrongCode {
            attempts: tx.attempts,
            remaining: Some(remaining),
        }
    }
}

/// Counts one resend and, when given, replaces the code (the old one stops working: only hashes
/// are stored, so the same code cannot be sent twice).
pub fn resend(tx: &mut Transaction, new_code: Option<CodeHash>, now: Timestamp) -> ResendOutcome {
    if tx.status != Status::Pending {
        return ResendOutcome::NotPending(tx.status);
    }
    if expire_if_due(tx, now) {
        return ResendOutcome::Expired;
    }
    if tx.max_resends == 0 {
        return ResendOutcome::Disabled;
    }
    if tx.resends >= tx.max_resends {
        return ResendOutcome::LimitReached;
    }
    tx.resends += 1;
    if let Some(code) = new_code {
        tx.code_hash = Some(code);
    }
    ResendOutcome::Resent {
        resends: tx.resends,
    }
}

/// What a finish writes besides the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    pub status: Status,
    pub reason: Option<Reason>,
    /// Links the transaction to a user (OTP learns its user only when a phone answers).
    pub user_id: Option<String>,
    pub evidence: Option<Evidence>,
}

/// Compare-and-set from pending to a terminal state.
pub fn finish(tx: &mut Transaction, update: &Finish, now: Timestamp) -> FinishOutcome {
    if !tx.status.can_become(update.status) {
        return FinishOutcome::NotPending(tx.status);
    }
    if expire_if_due(tx, now) {
        return FinishOutcome::Expired;
    }
    tx.status = update.status;
    tx.reason = update.reason;
    tx.finished_at = Some(now);
    if update.user_id.is_some() {
        tx.user_id.clone_from(&update.user_id);
    }
    tx.evidence.clone_from(&update.evidence);
    FinishOutcome::Finished
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::auth_type::Method;
    use crate::domain::code::{CodeHasher, OneTimeCode, SecretKey};
    use crate::domain::transaction::{Details, TransactionId};

    fn sms_tx(max_attempts: u32, max_resends: u32) -> (Transaction, CodeHasher) {
        let hasher = CodeHasher::new(&SecretKey::new(vec![1u8; 32]));
        let id = TransactionId::random();
        let code = OneTimeCode::parse("111111").unwrap();
        let tx = Transaction {
            evidence: None,
            id,
            auth_type: "sms".into(),
            method: Method::Sms,
            user_id: Some("u".into()),
            status: Status::Pending,
            created_at: Timestamp(0),
            expires_at: Timestamp(1_000),
            finished_at: None,
            attempts: 0,
            max_attempts,
            resends: 0,
            max_resends,
            code_hash: Some(hasher.hash(&id, &code)),
            reason: None,
            details: Details::default(),
        };
        (tx, hasher)
    }

    fn guess(hasher: &CodeHasher, tx: &Transaction, digits: &str) -> CodeHash {
        hasher.hash(&tx.id, &OneTimeCode::parse(digits).unwrap())
    }

    #[test]
    fn right_code_approves_once() {
        let (mut tx, h) = sms_tx(3, 0);
        let right = guess(&h, &tx, "111111");
        assert_eq!(
            verify(&mut tx, &right, Timestamp(1)),
            VerifyOutcome::Approved { attempts: 1 }
        );
        assert_eq!(
            verify(&mut tx, &right, Timestamp(2)),
            VerifyOutcome::NotPending(Status::Approved)
        );
    }

    #[test]
    fn last_wrong_attempt_fails_the_transaction_and_locks_out_the_right_code() {
        let (mut tx, h) = sms_tx(3, 0);
        let wrong = guess(&h, &tx, "222222");
        let right = guess(&h, &tx, "111111");
        assert_eq!(
            verify(&mut tx, &wrong, Timestamp(1)),
            VerifyOutcome::WrongCode {
                attempts: 1,
                remaining: Some(2)
            }
        );
        assert_eq!(
            verify(&mut tx, &wrong, Timestamp(2)),
            VerifyOutcome::WrongCode {
                attempts: 2,
                remaining: Some(1)
            }
        );
        assert_eq!(
            verify(&mut tx, &wrong, Timestamp(3)),
            VerifyOutcome::Exhausted { attempts: 3 }
        );
        assert_eq!(tx.reason, Some(Reason::AttemptsExhausted));
        assert_eq!(
            verify(&mut tx, &right, Timestamp(4)),
            VerifyOutcome::NotPending(Status::Failed)
        );
        assert_eq!(tx.attempts, 3);
    }

    #[test]
    fn zero_max_attempts_is_unlimited_until_expiry() {
        let (mut tx, h) = sms_tx(0, 0);
        let wrong = guess(&h, &tx, "222222");
        for n in 1..=50 {
            assert_eq!(
                verify(&mut tx, &wrong, Timestamp(n)),
                VerifyOutcome::WrongCode {
                    attempts: n as u32,
                    remaining: None
                }
            );
        }
        assert_eq!(
            verify(&mut tx, &wrong, Timestamp(1_000)),
            VerifyOutcome::Expired
        );
        assert_eq!(tx.status, Status::Expired);
    }

    #[test]
    fn expiry_wins_over_a_right_code() {
        let (mut tx, h) = sms_tx(3, 0);
        let right = guess(&h, &tx, "111111");
        assert_eq!(
            verify(&mut tx, &right, Timestamp(1_000)),
            VerifyOutcome::Expired
        );
        assert_eq!(tx.attempts, 0);
    }

    #[test]
    fn resends_are_bounded_and_replace_the_code() {
        let (mut tx, h) = sms_tx(3, 2);
        let new_code = guess(&h, &tx, "333333");
        assert_eq!(
            resend(&mut tx, Some(new_code), Timestamp(1)),
            ResendOutcome::Resent { resends: 1 }
        );
        assert_eq!(
            resend(&mut tx, None, Timestamp(2)),
            ResendOutcome::Resent { resends: 2 }
        );
        assert_eq!(
            resend(&mut tx, None, Timestamp(3)),
            ResendOutcome::LimitReached
        );
        let old = guess(&h, &tx, "111111");
        assert!(matches!(
            verify(&mut tx, &old, Timestamp(4)),
            VerifyOutcome::WrongCode { .. }
        ));
        assert!(matches!(
            verify(&mut tx, &new_code, Timestamp(5)),
            VerifyOutcome::Approved { .. }
        ));
        assert_eq!(
            resend(&mut tx, None, Timestamp(6)),
            ResendOutcome::NotPending(Status::Approved)
        );
    }

    #[test]
    fn resend_disabled_when_max_is_zero() {
        let (mut tx, _) = sms_tx(3, 0);
        assert_eq!(resend(&mut tx, None, Timestamp(1)), ResendOutcome::Disabled);
    }

    #[test]
    fn finish_is_a_compare_and_set_from_pending() {
        let (mut tx, _) = sms_tx(3, 0);
        let deny = Finish {
            evidence: None,
            status: Status::Denied,
            reason: Some(Reason::NotAccepted),
            user_id: None,
        };
        let approve = Finish {
            evidence: None,
            status: Status::Approved,
            reason: None,
            user_id: Some("v".into()),
        };
        assert_eq!(
            finish(&mut tx, &deny, Timestamp(1)),
            FinishOutcome::Finished
        );
        assert_eq!(
            finish(&mut tx, &approve, Timestamp(2)),
            FinishOutcome::NotPending(Status::Denied)
        );
        assert_eq!(tx.user_id.as_deref(), Some("u"));
        let (mut late, _) = sms_tx(3, 0);
        assert_eq!(
            finish(&mut late, &approve, Timestamp(5_000)),
            FinishOutcome::Expired
        );
    }
}
