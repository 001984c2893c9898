//! The transaction: one step-up request from start to its final state, and the state machine
//! (`pending` -> `approved` | `denied` | `expired` | `failed`; terminal states are final).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth_type::{Method, NumberMatching};
use super::clock::Timestamp;
use super::code::CodeHash;

/// A transaction id: a random (v4) UUID, as the reference API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TransactionId(Uuid);

impl TransactionId {
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a transaction id")]
pub struct InvalidTransactionId;

impl FromStr for TransactionId {
    type Err = InvalidTransactionId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| InvalidTransactionId)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
    Failed,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Approved,
        Status::Denied,
        Status::Expired,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        self != Status::Pending
    }

    /// The state machine: only a pending transaction moves, and only to a terminal state.
    pub fn can_become(self, next: Status) -> bool {
        self == Status::Pending && next.is_terminal()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transaction status '{0}'")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// Why a transaction ended without authentication. The first four are the reference API's
/// `not_authenticated_reason.reason` values; the rest are ours, for the states they name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    FailedToSend,
    InvalidRequest,
    NotAccepted,
    InvalidAnswer,
    AttemptsExhausted,
    Expired,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::FailedToSend,
        Reason::InvalidRequest,
        Reason::NotAccepted,
        Reason::InvalidAnswer,
        Reason::AttemptsExhausted,
        Reason::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FailedToSend => "failed_to_send",
            Reason::InvalidRequest => "invalid_request",
            Reason::NotAccepted => "not_accepted",
            Reason::InvalidAnswer => "invalid_answer",
            Reason::AttemptsExhausted => "attempts_exhausted",
            Reason::Expired => "expired",
        }
    }

    /// The human description the reference API pairs with each reason.
    pub fn description(self) -> &'static str {
        match self {
            Reason::FailedToSend => "Push message failed to be sent",
            Reason::InvalidRequest => "Invalid push authentication request",
            Reason::NotAccepted => "User rejected push",
            Reason::InvalidAnswer => "Invalid push answer",
            Reason::AttemptsExhausted => "Maximum number of attempts exceeded",
            Reason::Expired => "Transaction expired",
        }
    }
}

impl FromStr for Reason {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// Everything known about one step-up. Counters and status change only through the rules in
/// `regulation`, applied atomically by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub id: TransactionId,
    pub auth_type: String,
    /// The method in use, after any fallback.
    pub method: Method,
    /// Absent for OTP until a phone links the transaction to its user.
    pub user_id: Option<String>,
    pub status: Status,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub resends: u32,
    pub max_resends: u32,
    pub code_hash: Option<CodeHash>,
    pub reason: Option<Reason>,
    /// How a push or OTP answer was made, recorded when the transaction finished.
    pub evidence: Option<Evidence>,
    pub details: Details,
}

/// The parts of a transaction that never change after it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Details {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_id: Option<String>,
    /// Push: the device the push went to, and its application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// Data the device signs when the type signs transactions; delivered encrypted, never in
    /// the push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_data: Option<String>,
    /// Number matching: the two-digit number shown to the requester, which the user must pick
    /// on the phone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u8>,
    /// Number matching by typing: the phone is not offered choices, the user types `number`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub number_typed: bool,
    /// The API client that started the transaction; `None` when the gateway's own proxy did.
    /// Only that starter may read, verify or resend it (`Owner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// Who may act on a transaction: its user, through whoever started it (the API client, or the
/// proxy when `client_id` is `None`). Another client's or another user's transaction answers as
/// unknown, so clients cannot learn which transactions exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner<'a> {
    pub user_id: &'a str,
    pub client_id: Option<&'a str>,
}

impl<'a> Owner<'a> {
    /// The user, acting through the gateway's own proxy.
    pub fn through_proxy(user_id: &'a str) -> Self {
        Self {
            user_id,
            client_id: None,
        }
    }

    /// The user, acting through the API client `client_id`.
    pub fn through_client(user_id: &'a str, client_id: &'a str) -> Self {
        Self {
            user_id,
            client_id: Some(client_id),
        }
    }
}

/// What the answer of a push or OTP transaction proved, for the result API
/// (`authentication_method`, `used_authentication_attempts`, `signature`, `user_public_key`,
/// `signature_verified`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The method the answer satisfied, e.g. `push_with_pin` (after a fallback to the PIN for
    /// a fingerprint type, still the type's method: the reference reports the method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_method: Option<String>,
    /// The authenticator that signed the answer: `device`, `pin`, `biometric`, `custom_authenticator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticator: Option<String>,
    /// PIN attempts this answer took, the right one included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_verified: Option<bool>,
    /// A denial the user marked "this wasn't me".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<bool>,
}

impl Transaction {
    /// The status a reader should see: a pending transaction past its expiry is expired even if
    /// no write has recorded that yet.
    pub fn effective_status(&self, now: Timestamp) -> Status {
        if self.status == Status::Pending && now >= self.expires_at {
            Status::Expired
        } else {
            self.status
        }
    }

    /// How the user answers the transaction's matching number on the phone: `None` without
    /// number matching.
    pub fn number_matching(&self) -> Option<NumberMatching> {
        self.details.number.map(|_| {
            if self.details.number_typed {
                NumberMatching::Type
            } else {
                NumberMatching::Pick
            }
        })
    }

    /// Whether the transaction was started by `client_id` (`None`: by the proxy).
    pub fn started_by(&self, client_id: Option<&str>) -> bool {
        self.details.client_id.as_deref() == client_id
    }

    /// Whether `owner` may act on it: its user, through the client that started it.
    pub fn is_owned_by(&self, owner: Owner<'_>) -> bool {
        self.user_id.as_deref() == Some(owner.user_id) && self.started_by(owner.client_id)
    }

    /// What is left of the lifetime, as the API's `time_to_live`.
    pub fn time_to_live(&self, now: Timestamp) -> Duration {
        now.until(self.expires_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pending_moves_and_only_to_a_terminal_state() {
        for from in Status::ALL {
            for to in Status::ALL {
                let allowed = from == Status::Pending && to != Status::Pending;
                assert_eq!(from.can_become(to), allowed, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn spellings_round_trip() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
        }
        for reason in Reason::ALL {
            assert_eq!(reason.as_str().parse::<Reason>(), Ok(reason));
        }
        let id = TransactionId::random();
        assert_eq!(id.to_string().parse::<TransactionId>(), Ok(id));
        assert!("not-a-uuid".parse::<TransactionId>().is_err());
    }
}
