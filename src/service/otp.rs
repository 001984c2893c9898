//! OTP (QR) authentication: starting an OTP transaction (for a portal: no user, a code with a
//! fresh 128-bit secret from the OS CSPRNG; for the proxy: bound to the signed-in user, with a
//! secret the gateway can rebuild for that user's page), the deep link the code travels in, and
//! the enrolled phone's signed submission: one atomic store step checks the code, counts the
//! attempt, links the transaction to the phone's user and approves or denies it; then the
//! evidence is recorded and the portal callback scheduled.
//!
//! Only an HMAC of the secret is ever stored. A portal's code exists in clear only in the init
//! answer. A proxy code is rebuilt when its page is shown: in challenge mode from the client's
//! binding token (which the store never sees, so nobody without that token can rebuild it, not
//! even with the store and the secret key); in hold mode, where any signed-in session of the
//! user may open the page, from the secret key and the transaction id alone (whoever holds the
//! secret key can mint grants anyway, so this adds no power).
//!
//! May import: domain, service (callbacks), telemetry.

use std::sync::Arc;

use rand_core::OsRng;

use super::callbacks::CallbackService;
use super::guard::{AccountGuard, GuardError, Refused};
use crate::domain::auth_type::{AuthType, Method};
use crate::domain::clock::SharedClock;
use crate::domain::code::SecretKey;
use crate::domain::device::{Authenticator, Device};
use crate::domain::otp::{self, InvalidOtp, OtpAnswer, OtpCode, OtpHasher, RedeemOutcome};
use crate::domain::ports::{StoreError, TransactionStore};
use crate::domain::transaction::{Details, Evidence, Status, Transaction, TransactionId};
use crate::telemetry::audit::AuditEvent;
use crate::telemetry::metrics;

/// The deep-link scheme when none is configured.
pub const DEFAULT_DEEP_LINK_SCHEME: &str = "stepgate";

/// The rebuild input of a hold-mode code (no client token exists for it).
const HOLD_BINDING: &str = "hold";

#[derive(Debug, thiserror::Error)]
pub enum OtpError {
    /// The submitted text is not an OTP code (it names no transaction; nothing counted).
    #[error(transparent)]
    InvalidCode(#[from] InvalidOtp),
    /// No such OTP transaction, or one bound to another user: one answer for both.
    #[error("unknown transaction")]
    UnknownTransaction,
    /// A code is single use; an expired transaction takes none.
    #[error("transaction is {0}")]
    NotPending(Status),
    /// The secret was wrong; the attempt was counted (`Some(0)`: that was the last one).
    #[error("wrong code")]
    WrongCode { remaining: Option<u32> },
    /// The user's account is locked by the account guard: nothing is approved.
    #[error("refused by the account guard: {}", .0.block.as_str())]
    Blocked(Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an OTP transaction starts with.
#[derive(Debug, Clone, Default)]
pub struct OtpStart {
    /// `None` for a portal (the phone that answers names the user); the proxy binds its
    /// transactions to the signed-in user.
    pub user_id: Option<String>,
    pub message: Option<String>,
    pub callback_uri: Option<String>,
    pub language: Option<String>,
    /// The API client starting it; `None` for the gateway's proxy.
    pub client_id: Option<String>,
}

/// Where the secret of a new code comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource<'a> {
    /// The OS CSPRNG; the code can never be shown again (portals).
    Random,
    /// Rebuildable by `OtpService::rebuild` for a challenge-mode client holding this binding
    /// token.
    BindingToken(&'a str),
    /// Rebuildable by `OtpService::rebuild_for_hold` (hold mode).
    Hold,
}

/// A started OTP transaction and its code, to show once.
#[derive(Debug)]
pub struct OtpStarted {
    pub transaction: Transaction,
    pub code: OtpCode,
}

/// What a phone's submission came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtpSubmitted {
    pub transaction_id: TransactionId,
    pub status: Status,
    /// The message of the transaction, for the app to show.
    pub message: Option<String>,
}

#[derive(Clone)]
pub struct OtpService {
    store: Arc<dyn TransactionStore>,
    clock: SharedClock,
    hasher: OtpHasher,
    callbacks: CallbackService,
    deep_link_scheme: String,
    rebuild_key: [u8; 32],
    /// The account guard: a locked account approves nothing; an approval is a success.
    guard: Option<AccountGuard>,
}

impl OtpService {
    pub fn new(
        store: Arc<dyn TransactionStore>,
        clock: SharedClock,
        secret: &SecretKey,
        callbacks: CallbackService,
        deep_link_scheme: impl Into<String>,
    ) -> Self {
        Self {
            store,
            clock,
            hasher: OtpHasher::new(secret),
            callbacks,
            deep_link_scheme: deep_link_scheme.into(),
            rebuild_key: secret.derive("otp-rebuild"),
            guard: None,
        }
    }

    /// Applies the account guard to approvals.
    pub fn with_guard(mut self, guard: AccountGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// `<scheme>://otp?c=<code>`, the link a QR code or an "open the app" button carries.
    pub fn deep_link(&self, code: &OtpCode) -> String {
        code.deep_link(&self.deep_link_scheme)
    }

    /// Starts an OTP transaction of `auth_type` (an `otp` type) and issues its code.
    pub async fn start(
        &self,
        auth_type: &AuthType,
        request: OtpStart,
        source: SecretSource<'_>,
    ) -> Result<OtpStarted, OtpError> {
        let now = self.clock.now();
        let id = TransactionId::random();
        let code = match source {
            SecretSource::Random => OtpCode::generate(id, &mut OsRng),
            SecretSource::BindingToken(token) => OtpCode::derived(id, &self.rebuild_key, token),
            SecretSource::Hold => OtpCode::derived(id, &self.rebuild_key, HOLD_BINDING),
        };
        let message = request.message.or_else(|| {
            auth_type
                .default_message(request.language.as_deref())
                .map(str::to_owned)
        });
        let transaction = Transaction {
            id,
            auth_type: auth_type.name.clone(),
            method: Method::Otp,
            user_id: request.user_id,
            status: Status::Pending,
            created_at: now,
            expires_at: now.plus(auth_type.ttl),
            finished_at: None,
            attempts: 0,
            max_attempts: auth_type.max_attempts,
            resends: 0,
            max_resends: 0,
            code_hash: Some(code.hash(&self.hasher)),
            reason: None,
            evidence: None,
            details: Details {
                callback_uri: request.callback_uri,
                message,
                language: request.language,
                client_id: request.client_id,
                ..Details::default()
            },
        };
        self.store.insert(&transaction).await?;
        metrics::transaction_started(&transaction.auth_type, Method::Otp.as_str());
        AuditEvent {
            event: "OTP_AUTH_INITIALIZED",
            transaction_id: Some(&id.to_string()),
            auth_type: Some(&transaction.auth_type),
            method: Some(Method::Otp.as_str()),
            user_id: transaction.user_id.as_deref(),
            ..AuditEvent::default()
        }
        .emit();
        Ok(OtpStarted { transaction, code })
    }

    /// The code of a pending proxy transaction started with `SecretSource::BindingToken`, for
    /// the client holding that token; `None` for any other token or transaction.
    pub fn rebuild(&self, tx: &Transaction, binding_token: &str) -> Option<OtpCode> {
        self.rebuild_from(tx, binding_token)
    }

    /// The code of a pending proxy transaction started with `SecretSource::Hold`.
    pub fn rebuild_for_hold(&self, tx: &Transaction) -> Option<OtpCode> {
        self.rebuild_from(tx, HOLD_BINDING)
    }

    fn rebuild_from(&self, tx: &Transaction, binding: &str) -> Option<OtpCode> {
        if tx.method != Method::Otp || tx.status != Status::Pending {
            return None;
        }
        let code = OtpCode::derived(tx.id, &self.rebuild_key, binding);
        // Only a code whose hash is the stored one: never show a code that cannot work.
        tx.code_hash?
            .matches(&code.hash(&self.hasher))
            .then_some(code)
    }

    /// The phone's signed submission of a scanned code (the code itself or its deep link).
    pub async fn submit(
        &self,
        device: &Device,
        scanned: &str,
        approve: bool,
    ) -> Result<OtpSubmitted, OtpError> {
        let code = OtpCode::parse_scanned(scanned)?;
        let id = code.transaction_id();
        let now = self.clock.now();
        // Read first for the labels, the message and the callback; the decision itself is the
        // one atomic step below (which checks type and binding again).
        let tx = self
            .store
            .get(&id)
            .await?
            .filter(|tx| otp::may_redeem(tx, &device.user_id))
            .ok_or(OtpError::UnknownTransaction)?;
        if approve && let Some(guard) = &self.guard {
            guard
                .check(&device.user_id, Some(&id))
                .await
                .map_err(|error| match error {
                    GuardError::Blocked(refused) => OtpError::Blocked(refused),
                    GuardError::Store(error) => OtpError::Store(error),
                })?;
        }
        let answer = OtpAnswer {
            user_id: device.user_id.clone(),
            approve,
            evidence: Some(Evidence {
                authentication_method: Some(Method::Otp.as_str().to_owned()),
                authenticator: Some(Authenticator::Device.as_str().to_owned()),
                ..Evidence::default()
            }),
        };
        let outcome = self
            .store
            .redeem_otp(&id, &code.hash(&self.hasher), &answer)
            .await?
            .ok_or(OtpError::UnknownTransaction)?;
        let audit = |event: &'static str, detail: Option<&str>| {
            AuditEvent {
                event,
                transaction_id: Some(&id.to_string()),
                auth_type: Some(&tx.auth_type),
                method: Some(Method::Otp.as_str()),
                user_id: Some(&device.user_id),
                detail,
                ..AuditEvent::default()
            }
            .emit();
        };
        match outcome {
            RedeemOutcome::Finished { status, .. } => {
                let approved = status == Status::Approved;
                audit(
                    if approved {
                        "MOBILE_AUTH_AUTHENTICATED"
                    } else {
                        "MOBILE_AUTH_NOT_AUTHENTICATED"
                    },
                    Some(device.id.as_str()),
                );
                let finished = Transaction {
                    status,
                    user_id: Some(device.user_id.clone()),
                    finished_at: Some(now),
                    ..tx.clone()
                };
                self.finished(&finished).await;
                if approved && let Some(guard) = &self.guard {
                    guard.succeeded(&device.user_id).await;
                }
                Ok(OtpSubmitted {
                    transaction_id: id,
                    status,
                    message: tx.details.message.clone(),
                })
            }
            RedeemOutcome::WrongCode { remaining, .. } => {
                audit("OTP_AUTH_NOT_AUTHENTICATED_INVALID_OTP", None);
                Err(OtpError::WrongCode { remaining })
            }
            RedeemOutcome::Exhausted { .. } => {
                audit("OTP_AUTH_VALIDATION_LIMIT_EXCEEDED", None);
                let failed = Transaction {
                    status: Status::Failed,
                    finished_at: Some(now),
                    ..tx.clone()
                };
                self.finished(&failed).await;
                Err(OtpError::WrongCode { remaining: Some(0) })
            }
            RedeemOutcome::Expired => {
                audit("OTP_AUTH_NOT_AUTHENTICATED_TRANSACTION_EXPIRED", None);
                metrics::transaction_finished(
                    &tx.auth_type,
                    Method::Otp.as_str(),
                    Status::Expired.as_str(),
                );
                Err(OtpError::NotPending(Status::Expired))
            }
            RedeemOutcome::NotPending(status) => Err(OtpError::NotPending(status)),
        }
    }

    /// Counts a final state and queues the portal callback (a queue failure is logged: the
    /// decision stands, and the portal can still fetch the result).
    async fn finished(&self, tx: &Transaction) {
        metrics::transaction_finished(&tx.auth_type, Method::Otp.as_str(), tx.status.as_str());
        if let Err(error) = self.callbacks.schedule(tx).await {
            tracing::warn!(%error, transaction_id = %tx.id, "callback not queued");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::domain::clock::{ManualClock, Timestamp};
    use crate::domain::device::{DeviceId, DeviceKeys, Platform, PublicKeyBytes};
    use crate::store::memory::MemoryStore;

    fn auth_type() -> AuthType {
        AuthType {
            name: "qr_login".into(),
            method: Method::Otp,
            ttl: Duration::from_secs(120),
            max_attempts: 2,
            max_resends: 0,
            sender_id: None,
            fallback: None,
            default_messages: BTreeMap::from([("en".to_owned(), "Sign in".to_owned())]),
            transaction_signing: false,
            number_matching: crate::domain::auth_type::NumberMatching::Off,
        }
    }

    fn device(user: &str) -> Device {
        let key = PublicKeyBytes(vec![4u8; 65]);
        Device {
            id: DeviceId::random(),
            user_id: user.into(),
            application: "bank-app".into(),
            name: "phone".into(),
            platform: Platform::Android,
            model: None,
            os_version: None,
            keys: DeviceKeys {
                signing: key.clone(),
                encryption: key,
                pin: None,
                biometric: None,
                custom_authenticator: None,
            },
            push: None,
            created_at: Timestamp(0),
            last_used_at: None,
        }
    }

    fn service() -> (OtpService, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::starting_now());
        let store = Arc::new(MemoryStore::new(clock.clone(), Duration::from_secs(60)));
        let callbacks = CallbackService::new(
            Arc::new(crate::store::callbacks::memory::MemoryCallbackQueue::new()),
            Arc::new(NoCallbacks),
            clock.clone(),
            crate::service::callbacks::CallbackWorkerOptions::new(1, Duration::from_secs(1)),
        );
        let secret = SecretKey::new(vec![3u8; 32]);
        (
            OtpService::new(store, clock.clone(), &secret, callbacks, "bankapp"),
            clock,
        )
    }

    struct NoCallbacks;

    #[async_trait::async_trait]
    impl crate::domain::callback::CallbackDelivery for NoCallbacks {
        async fn deliver(
            &self,
            _job: &crate::domain::callback::CallbackJob,
        ) -> Result<(), crate::domain::callback::CallbackError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_portal_code_is_random_links_the_phone_user_and_works_once() {
        let (otp, _) = service();
        let started = otp
            .start(&auth_type(), OtpStart::default(), SecretSource::Random)
            .await
            .unwrap();
        let tx = &started.transaction;
        assert_eq!((tx.user_id.as_deref(), tx.method), (None, Method::Otp));
        assert_eq!(tx.details.message.as_deref(), Some("Sign in"));
        assert_eq!(
            otp.rebuild_for_hold(tx),
            None,
            "a random code cannot be rebuilt"
        );
        let link = otp.deep_link(&started.code);
        assert!(link.starts_with("bankapp://otp?c="), "{link}");

        let phone = device("ann");
        let done = otp.submit(&phone, &link, true).await.unwrap();
        assert_eq!(done.status, Status::Approved);
        assert_eq!(done.message.as_deref(), Some("Sign in"));
        assert!(matches!(
            otp.submit(&phone, &started.code.encode(), true).await,
            Err(OtpError::NotPending(Status::Approved))
        ));
    }

    #[tokio::test]
    async fn wrong_and_malformed_codes_and_expiry() {
        let (otp, clock) = service();
        let started = otp
            .start(&auth_type(), OtpStart::default(), SecretSource::Random)
            .await
            .unwrap();
        let phone = device("ann");
        assert!(matches!(
            otp.submit(&phone, "not a code", true).await,
            Err(OtpError::InvalidCode(_))
        ));
        let forged = OtpCode::generate(started.transaction.id, &mut OsRng).encode();
        assert!(matches!(
            otp.submit(&phone, &forged, true).await,
            Err(OtpError::WrongCode { remaining: Some(1) })
        ));
        let unknown = OtpCode::generate(TransactionId::random(), &mut OsRng).encode();
        assert!(matches!(
            otp.submit(&phone, &unknown, true).await,
            Err(OtpError::UnknownTransaction)
        ));

        let later = otp
            .start(&auth_type(), OtpStart::default(), SecretSource::Random)
            .await
            .unwrap();
        clock.advance(Duration::from_secs(120));
        assert!(matches!(
            otp.submit(&phone, &later.code.encode(), true).await,
            Err(OtpError::NotPending(Status::Expired))
        ));
    }

    #[tokio::test]
    async fn proxy_codes_are_rebuilt_only_with_their_binding_and_answer_only_their_user() {
        let (otp, _) = service();
        let request = OtpStart {
            user_id: Some("ann".into()),
            ..OtpStart::default()
        };
        let started = otp
            .start(&auth_type(), request, SecretSource::BindingToken("token-1"))
            .await
            .unwrap();
        let tx = &started.transaction;
        assert_eq!(otp.rebuild(tx, "token-1"), Some(started.code.clone()));
        assert_eq!(otp.rebuild(tx, "token-2"), None);
        assert_eq!(otp.rebuild_for_hold(tx), None);

        assert!(matches!(
            otp.submit(&device("bob"), &started.code.encode(), true)
                .await,
            Err(OtpError::UnknownTransaction)
        ));
        let done = otp
            .submit(&device("ann"), &started.code.encode(), false)
            .await
            .unwrap();
        assert_eq!(done.status, Status::Denied);
        let finished = Transaction {
            status: Status::Denied,
            ..tx.clone()
        };
        assert_eq!(
            otp.rebuild(&finished, "token-1"),
            None,
            "only while pending"
        );

        let held = otp
            .start(
                &auth_type(),
                OtpStart {
                    user_id: Some("ann".into()),
                    ..OtpStart::default()
                },
                SecretSource::Hold,
            )
            .await
            .unwrap();
        assert_eq!(otp.rebuild_for_hold(&held.transaction), Some(held.code));
    }
}
