//! OTP (QR) codes and the rule that redeems them.
//!
//! An OTP code is what a portal (or the proxy's interstitial page) shows as a QR code and the
//! enrolled phone submits: base64url without padding of the 16 bytes of the transaction id
//! followed by a 128-bit secret, 43 characters. The transaction id travels in clear so the
//! server can find the transaction; the secret is stored only as an HMAC (`OtpHasher`: a key
//! derived from the operator's secret key for OTP codes alone, bound to the transaction) and
//! compared in constant time. The key differs from the SMS codes' on purpose: whoever is shown
//! an OTP code knows its secret, and must not be able to redeem it as a typed SMS code. A deep
//! link carries the same string: `<scheme>://otp?c=<otp>`.
//!
//! `redeem` is the one atomic step a submission takes: it checks the secret and counts the
//! attempt (`regulation::verify`), and when the secret is right links the transaction to the
//! phone's user and finishes it as approved or denied. The memory store applies it under its
//! lock; the Redis store's Lua script implements the same rule.
//!
//! Pure: imports only the domain and crypto crates. `Debug` never shows a secret.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use uuid::Uuid;

use super::auth_type::Method;
use super::clock::Timestamp;
use super::code::{CodeHash, SecretKey};
use super::regulation::{self, VerifyOutcome};
use super::transaction::{Evidence, Reason, Status, Transaction, TransactionId};

/// Bytes of the secret part (128 bits).
pub const SECRET_LEN: usize = 16;
/// Bytes of a whole code: the transaction id, then the secret.
const CODE_LEN: usize = 16 + SECRET_LEN;
/// Characters of the encoded code (base64url without padding of 32 bytes).
pub const ENCODED_LEN: usize = 43;
/// The host part of a deep link (`<scheme>://otp?c=...`).
const DEEP_LINK_HOST: &str = "otp";
/// The query parameter of a deep link that holds the code.
const DEEP_LINK_PARAM: &str = "c";

/// Why a submitted text is not an OTP code at all (nothing is counted for it: it names no
/// transaction).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an OTP code (expected {ENCODED_LEN} base64url characters or a deep link)")]
pub struct InvalidOtp;

/// A plaintext OTP code: the transaction it names and its secret. It exists only between
/// generation and the answer that shows it (or between a scan and the submission); `Debug`
/// hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct OtpCode {
    transaction: TransactionId,
    secret: [u8; SECRET_LEN],
}

impl OtpCode {
    /// A fresh code for `transaction` with a secret from `rng` (the OS CSPRNG in production).
    pub fn generate<R: RngCore + CryptoRng>(transaction: TransactionId, rng: &mut R) -> Self {
        let mut secret = [0u8; SECRET_LEN];
        rng.fill_bytes(&mut secret);
        Self {
            transaction,
            secret,
        }
    }

    /// A code whose secret the gateway can rebuild later without storing it: HMAC-SHA256 under
    /// `key` (derived from the operator's secret key for this purpose only) of the transaction
    /// id and `binding`, cut to 128 bits. With a client's random binding token as `binding`,
    /// only that client can have the code shown again.
    pub fn derived(transaction: TransactionId, key: &[u8; 32], binding: &str) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        mac.update(b"stepgate otp v1\n");
        mac.update(transaction.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(binding.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut secret = [0u8; SECRET_LEN];
        secret.copy_from_slice(&digest[..SECRET_LEN]);
        Self {
            transaction,
            secret,
        }
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.transaction
    }

    /// The code as shown and submitted: base64url (no padding) of id bytes and secret.
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; CODE_LEN];
        bytes[..16].copy_from_slice(&transaction_bytes(&self.transaction));
        bytes[16..].copy_from_slice(&self.secret);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a submitted code (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, InvalidOtp> {
        let text = text.trim();
        if text.len() != ENCODED_LEN {
            return Err(InvalidOtp);
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| InvalidOtp)?;
        let bytes: [u8; CODE_LEN] = bytes.try_into().map_err(|_| InvalidOtp)?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[..16]);
        let mut secret = [0u8; SECRET_LEN];
        secret.copy_from_slice(&bytes[16..]);
        Ok(Self {
            transaction: transaction_from_bytes(id).ok_or(InvalidOtp)?,
            secret,
        })
    }

    /// Reads what a phone scanned: the code itself, or a deep link `<scheme>://otp?c=<code>`
    /// of any scheme.
    pub fn parse_scanned(text: &str) -> Result<Self, InvalidOtp> {
        let text = text.trim();
        let Some((_, rest)) = text.split_once("://") else {
            return Self::parse(text);
        };
        let (host, query) = rest.split_once('?').ok_or(InvalidOtp)?;
        if host.trim_end_matches('/') != DEEP_LINK_HOST {
            return Err(InvalidOtp);
        }
        let code = query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(name, _)| *name == DEEP_LINK_PARAM)
            .map(|(_, value)| value)
            .ok_or(InvalidOtp)?;
        Self::parse(code)
    }

    /// The deep link that opens the app with this code: `<scheme>://otp?c=<code>`. The code is
    /// base64url, so it needs no escaping in a query.
    pub fn deep_link(&self, scheme: &str) -> String {
        format!(
            "{scheme}://{DEEP_LINK_HOST}?{DEEP_LINK_PARAM}={}",
            self.encode()
        )
    }

    /// The HMAC stored for this code (and computed for a submission).
    pub fn hash(&self, hasher: &OtpHasher) -> CodeHash {
        hasher.hash(self)
    }
}

/// Hashes OTP codes: HMAC-SHA256 under a key derived from the secret key for this purpose
/// only, over the transaction id and the secret. Nothing an SMS verification computes can equal
/// it (another key), so a shown OTP code never works as a typed one.
#[derive(Clone)]
pub struct OtpHasher {
    key: [u8; 32],
}

impl OtpHasher {
    pub fn new(secret: &SecretKey) -> Self {
        Self {
            key: secret.derive("otp-code-hash"),
        }
    }

    pub fn hash(&self, code: &OtpCode) -> CodeHash {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(&transaction_bytes(&code.transaction));
        mac.update(&code.secret);
        // 32 bytes are always 64 hex characters, which always parse.
        CodeHash::from_hex(&hex::encode(mac.finalize().into_bytes()))
            .unwrap_or_else(|| unreachable!())
    }
}

impl fmt::Debug for OtpHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OtpHasher(..)")
    }
}

impl fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtpCode")
            .field("transaction", &self.transaction)
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn transaction_bytes(id: &TransactionId) -> [u8; 16] {
    // A TransactionId always prints as a UUID, so this parse cannot fail.
    Uuid::parse_str(&id.to_string()).map_or([0u8; 16], |uuid| *uuid.as_bytes())
}

fn transaction_from_bytes(bytes: [u8; 16]) -> Option<TransactionId> {
    Uuid::from_bytes(bytes)
        .hyphenated()
        .to_string()
        .parse()
        .ok()
}

/// What the phone answered with a code: its user (from the verified device) and its decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtpAnswer {
    pub user_id: String,
    pub approve: bool,
    /// Recorded when the code is right.
    pub evidence: Option<Evidence>,
}

/// What one submission came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedeemOutcome {
    /// The secret was right: the transaction is now `approved` or `denied` and linked to the
    /// phone's user. `attempts` counts this one.
    Finished { status: Status, attempts: u32 },
    /// The secret was wrong; `remaining` is `None` when attempts are unlimited.
    WrongCode {
        attempts: u32,
        remaining: Option<u32>,
    },
    /// The secret was wrong and used the last attempt; the transaction is now failed.
    Exhausted { attempts: u32 },
    /// The lifetime had passed; the transaction is now expired.
    Expired,
    /// The transaction had already ended (a code is single use); nothing was counted.
    NotPending(Status),
}

impl RedeemOutcome {
    /// Whether the transaction left `pending` with this step (its waiters should look).
    pub fn decided(&self) -> bool {
        matches!(
            self,
            RedeemOutcome::Finished { .. }
                | RedeemOutcome::Exhausted { .. }
                | RedeemOutcome::Expired
        )
    }
}

/// Whether an OTP submission by `user_id` may touch `tx` at all: it must be an OTP
/// transaction, and one bound to a user (started by the proxy for a known user) only answers
/// that user's phones. Checked before anything is counted, so a guess at another user's
/// transaction neither counts nor tells that it exists.
pub fn may_redeem(tx: &Transaction, user_id: &str) -> bool {
    tx.method == Method::Otp && tx.user_id.as_deref().is_none_or(|bound| bound == user_id)
}

/// Checks `candidate` (the submitted code's hash, compared in constant time) and counts the
/// attempt; a right code links the transaction to `answer.user_id`, records the evidence and
/// finishes it as the answer says (a deny with reason `not_accepted`). `None` when the
/// submission may not touch this transaction (`may_redeem`) or it has no code; then nothing
/// changed.
pub fn redeem(
    tx: &mut Transaction,
    candidate: &CodeHash,
    answer: &OtpAnswer,
    now: Timestamp,
) -> Option<RedeemOutcome> {
    if !may_redeem(tx, &answer.user_id) {
        return None;
    }
    Some(match regulation::verify(tx, candidate, now) {
        VerifyOutcome::Approved { attempts } => {
            // `verify` approved and stamped `finished_at`; a deny replaces only the status.
            if !answer.approve {
                tx.status = Status::Denied;
                tx.reason = Some(Reason::NotAccepted);
            }
            tx.user_id = Some(answer.user_id.clone());
            tx.evidence.clone_from(&answer.evidence);
            RedeemOutcome::Finished {
                status: tx.status,
                attempts,
            }
        }
        VerifyOutcome::WrongCode {
            attempts,
            remaining,
        } => RedeemOutcome::WrongCode {
            attempts,
            remaining,
        },
        VerifyOutcome::Exhausted { attempts } => RedeemOutcome::Exhausted { attempts },
        VerifyOutcome::Expired => RedeemOutcome::Expired,
        VerifyOutcome::NotPending(status) => RedeemOutcome::NotPending(status),
        VerifyOutcome::NoCode => return None,
    })
}

#[cfg(test)]
mod tests {
    use rand_core::OsRng;

    use super::*;
    use crate::domain::code::CodeHasher;
    use crate::domain::transaction::Details;

    fn hasher() -> OtpHasher {
        OtpHasher::new(&SecretKey::new(vec![5u8; 32]))
    }

    #[test]
    fn a_shown_code_never_hashes_like_a_typed_one() {
        let secret = SecretKey::new(vec![5u8; 32]);
        let code = OtpCode::generate(TransactionId::random(), &mut OsRng);
        let sms = CodeHasher::new(&secret);
        let id = code.transaction_id();
        let secret_text = URL_SAFE_NO_PAD.encode(code.secret);
        for typed in [
            secret_text.as_str(),
            &code.encode(),
            &hex::encode(code.secret),
        ] {
            assert!(!sms.hash_input(&id, typed).matches(&code.hash(&hasher())));
        }
        assert!(
            code.hash(&hasher())
                .matches(&OtpCode::parse(&code.encode()).unwrap().hash(&hasher()))
        );
        let other_key = OtpHasher::new(&SecretKey::new(vec![6u8; 32]));
        assert!(!code.hash(&hasher()).matches(&code.hash(&other_key)));
    }

    fn otp_tx(user_id: Option<&str>, max_attempts: u32) -> (Transaction, OtpCode) {
        let id = TransactionId::random();
        let code = OtpCode::generate(id, &mut OsRng);
        let tx = Transaction {
            id,
            auth_type: "qr_login".into(),
            method: Method::Otp,
            user_id: user_id.map(str::to_owned),
            status: Status::Pending,
            created_at: Timestamp(0),
            expires_at: Timestamp(1_000),
            finished_at: None,
            attempts: 0,
            max_attempts,
            resends: 0,
            max_resends: 0,
            code_hash: Some(code.hash(&hasher())),
            reason: None,
            evidence: None,
            details: Details::default(),
        };
        (tx, code)
    }

    fn answer(user: &str, approve: bool) -> OtpAnswer {
        OtpAnswer {
            user_id: user.into(),
            approve,
            evidence: Some(Evidence {
                authentication_method: Some("otp".into()),
                authenticator: Some("device".into()),
                ..Evidence::default()
            }),
        }
    }

    #[test]
    fn codes_round_trip_and_carry_the_transaction_id_in_clear() {
        let id = TransactionId::random();
        let code = OtpCode::generate(id, &mut OsRng);
        let text = code.encode();
        assert_eq!(text.len(), ENCODED_LEN);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let parsed = OtpCode::parse(&format!(" {text}\n")).unwrap();
        assert_eq!(parsed, code);
        assert_eq!(parsed.transaction_id(), id);
        let bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
        assert_eq!(
            &bytes[..16],
            Uuid::parse_str(&id.to_string()).unwrap().as_bytes()
        );
        assert_ne!(
            OtpCode::generate(id, &mut OsRng),
            code,
            "fresh secret each time"
        );
    }

    #[test]
    fn malformed_codes_are_refused() {
        let good = OtpCode::generate(TransactionId::random(), &mut OsRng).encode();
        let padded = format!("{good}=");
        let short = &good[..42];
        let bad_char = format!("{}+", &good[..42]);
        for bad in [
            "",
            short,
            padded.as_str(),
            bad_char.as_str(),
            "x".repeat(43).as_str(),
        ] {
            // 43 'x' decode to bytes, but the last character carries non-zero padding bits.
            assert_eq!(OtpCode::parse(bad), Err(InvalidOtp), "{bad:?}");
        }
    }

    #[test]
    fn deep_links_carry_the_code_and_scans_accept_either_form() {
        let code = OtpCode::generate(TransactionId::random(), &mut OsRng);
        let link = code.deep_link("bankapp");
        assert_eq!(link, format!("bankapp://otp?c={}", code.encode()));
        assert_eq!(OtpCode::parse_scanned(&link).unwrap(), code);
        assert_eq!(OtpCode::parse_scanned(&code.encode()).unwrap(), code);
        let with_more = format!("stepgate://otp/?x=1&c={}", code.encode());
        assert_eq!(OtpCode::parse_scanned(&with_more).unwrap(), code);
        for bad in [
            format!("stepgate://enroll?code={}", code.encode()),
            "stepgate://otp?c=".to_owned(),
            "stepgate://otp".to_owned(),
        ] {
            assert_eq!(OtpCode::parse_scanned(&bad), Err(InvalidOtp), "{bad}");
        }
    }

    #[test]
    fn derived_codes_are_stable_per_binding_and_differ_across_bindings_and_keys() {
        let id = TransactionId::random();
        let key = [1u8; 32];
        let a = OtpCode::derived(id, &key, "token-a");
        assert_eq!(a, OtpCode::derived(id, &key, "token-a"));
        assert_ne!(a, OtpCode::derived(id, &key, "token-b"));
        assert_ne!(a, OtpCode::derived(id, &[2u8; 32], "token-a"));
        assert_ne!(
            a,
            OtpCode::derived(TransactionId::random(), &key, "token-a")
        );
        assert_eq!(a.transaction_id(), id);
    }

    #[test]
    fn debug_hides_the_secret() {
        let code = OtpCode::generate(TransactionId::random(), &mut OsRng);
        let shown = format!("{code:?}");
        assert!(!shown.contains(&code.encode()[22..]), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn the_right_code_links_the_user_and_approves_once() {
        let (mut tx, code) = otp_tx(None, 3);
        let right = code.hash(&hasher());
        assert_eq!(
            redeem(&mut tx, &right, &answer("ann", true), Timestamp(1)),
            Some(RedeemOutcome::Finished {
                status: Status::Approved,
                attempts: 1
            })
        );
        assert_eq!(tx.user_id.as_deref(), Some("ann"));
        assert_eq!(tx.finished_at, Some(Timestamp(1)));
        assert_eq!(
            tx.evidence
                .as_ref()
                .unwrap()
                .authentication_method
                .as_deref(),
            Some("otp")
        );
        assert_eq!(
            redeem(&mut tx, &right, &answer("ann", true), Timestamp(2)),
            Some(RedeemOutcome::NotPending(Status::Approved)),
            "single use"
        );
        // Once linked, the transaction is ann's: another phone learns nothing about it.
        assert_eq!(
            redeem(&mut tx, &right, &answer("bob", true), Timestamp(2)),
            None
        );
        assert_eq!(tx.user_id.as_deref(), Some("ann"));
    }

    #[test]
    fn a_deny_with_the_right_code_denies_and_still_names_the_user() {
        let (mut tx, code) = otp_tx(None, 3);
        assert_eq!(
            redeem(
                &mut tx,
                &code.hash(&hasher()),
                &answer("ann", false),
                Timestamp(1)
            ),
            Some(RedeemOutcome::Finished {
                status: Status::Denied,
                attempts: 1
            })
        );
        assert_eq!(
            (tx.status, tx.reason, tx.user_id.as_deref()),
            (Status::Denied, Some(Reason::NotAccepted), Some("ann"))
        );
    }

    #[test]
    fn wrong_secrets_count_and_the_last_one_fails_the_transaction() {
        let (mut tx, code) = otp_tx(None, 2);
        let other = OtpCode::generate(tx.id, &mut OsRng).hash(&hasher());
        assert_eq!(
            redeem(&mut tx, &other, &answer("ann", true), Timestamp(1)),
            Some(RedeemOutcome::WrongCode {
                attempts: 1,
                remaining: Some(1)
            })
        );
        assert_eq!(tx.user_id, None, "a wrong code links nobody");
        assert_eq!(
            redeem(&mut tx, &other, &answer("ann", true), Timestamp(2)),
            Some(RedeemOutcome::Exhausted { attempts: 2 })
        );
        assert_eq!(
            redeem(
                &mut tx,
                &code.hash(&hasher()),
                &answer("ann", true),
                Timestamp(3)
            ),
            Some(RedeemOutcome::NotPending(Status::Failed))
        );
    }

    #[test]
    fn expiry_wins_over_a_right_code() {
        let (mut tx, code) = otp_tx(None, 3);
        assert_eq!(
            redeem(
                &mut tx,
                &code.hash(&hasher()),
                &answer("ann", true),
                Timestamp(1_000)
            ),
            Some(RedeemOutcome::Expired)
        );
        assert_eq!(
            (tx.status, tx.attempts, tx.user_id),
            (Status::Expired, 0, None)
        );
    }

    #[test]
    fn a_bound_transaction_answers_only_its_users_phones_and_other_methods_none() {
        let (mut bound, code) = otp_tx(Some("ann"), 3);
        let right = code.hash(&hasher());
        assert_eq!(
            redeem(&mut bound, &right, &answer("bob", true), Timestamp(1)),
            None
        );
        assert_eq!(bound.attempts, 0);
        assert!(matches!(
            redeem(&mut bound, &right, &answer("ann", true), Timestamp(1)),
            Some(RedeemOutcome::Finished { .. })
        ));

        let (mut sms, code) = otp_tx(Some("ann"), 3);
        sms.method = Method::Sms;
        let right = code.hash(&hasher());
        assert_eq!(
            redeem(&mut sms, &right, &answer("ann", true), Timestamp(1)),
            None
        );
        assert_eq!((sms.status, sms.attempts), (Status::Pending, 0));
    }
}
