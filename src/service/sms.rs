//! SMS authentication: start (rate limits, message, code, delivery with the sender-id fallback),
//! verify and resend, with metrics and audit events for each outcome. Codes leave this module
//! only inside the message handed to the SMS gateway.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::transactions::{EngineError, ResendResult, TransactionEngine};
use crate::domain::address;
use crate::domain::auth_type::AuthType;
use crate::domain::code::SecretKey;
use crate::domain::destination::{DestinationRefused, DestinationRules, country_code};
use crate::domain::ports::{RateLimitStore, SendError, SmsMessage, SmsSender, StoreError};
use crate::domain::regulation::{Finish, ResendOutcome, VerifyOutcome, WindowLimit};
use crate::domain::sms::render_body;
use crate::domain::transaction::{Details, Owner, Reason, Status, Transaction, TransactionId};
use crate::telemetry::audit::{AuditEvent, mask_phone};
use crate::telemetry::metrics;

#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    #[error("rate limit {limit} reached")]
    RateLimited {
        limit: &'static str,
        retry_after: Duration,
    },
    #[error("no message given and the type has no default message")]
    MissingMessage,
    /// The SMS-pumping guard refuses the destination (denied range, or not an allowed country).
    #[error("destination refused: {0}")]
    DestinationRefused(DestinationRefused),
    /// Another resend of the same transaction is being sent: one at a time, so the SMS that
    /// arrives last always holds the code that works.
    #[error("a resend of this transaction is in progress")]
    ResendInProgress,
    #[error("the SMS could not be sent: {0}")]
    SendFailed(SendError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<StoreError> for SmsError {
    fn from(error: StoreError) -> Self {
        SmsError::Engine(EngineError::Store(error))
    }
}

/// The SMS-pumping guard: where SMS may go, and how many may go per user, phone number,
/// country, client address and in all (init and resend alike: each one costs money). Only sends
/// that reached the provider stay counted.
#[derive(Debug, Clone, Default)]
pub struct SmsLimits {
    pub per_user: Option<WindowLimit>,
    pub per_phone: Option<WindowLimit>,
    pub global: Option<WindowLimit>,
    pub per_country: Option<WindowLimit>,
    pub per_client_ip: Option<WindowLimit>,
    pub destinations: DestinationRules,
}

/// The quota hits one send took, given back when nothing reached the provider.
#[must_use]
struct Spent(Vec<String>);

/// How long a resend holds its transaction's resend lock at most (the provider's timeout is
/// below this; the lock is given back as soon as the send ends).
const RESEND_LOCK: Duration = Duration::from_secs(70);

/// What a portal asks for when it starts an SMS authentication.
#[derive(Debug, Clone)]
pub struct SmsStart {
    pub user_id: String,
    /// Already normalized to `+digits`.
    pub phone_number: String,
    pub message: Option<String>,
    pub language: Option<String>,
    /// The API client starting it; `None` for the gateway's proxy.
    pub client_id: Option<String>,
    /// The end user's address, when known (the proxy's client, or an API caller's address
    /// forwarded by a trusted proxy): the per-client-IP quota counts it.
    pub client_ip: Option<IpAddr>,
}

#[derive(Clone)]
pub struct SmsService {
    engine: TransactionEngine,
    sender: Arc<dyn SmsSender>,
    limiter: Arc<dyn RateLimitStore>,
    limits: SmsLimits,
    origin_host: Option<String>,
    /// Keys rate-limit counters, so no phone number or user id is stored in clear.
    limit_key: [u8; 32],
}

impl SmsService {
    pub fn new(
        engine: TransactionEngine,
        sender: Arc<dyn SmsSender>,
        limiter: Arc<dyn RateLimitStore>,
        limits: SmsLimits,
        origin_host: Option<String>,
        secret: &SecretKey,
    ) -> Self {
        Self {
            engine,
            sender,
            limiter,
            limits,
            origin_host,
            limit_key: secret.derive("rate-limit-key"),
        }
    }

    fn limit_key(&self, scope: &str, value: &str) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.limit_key)
            .unwrap_or_else(|_| unreachable!());
        mac.update(scope.as_bytes());
        mac.update(b":");
        mac.update(value.as_bytes());
        format!(
            "sms:{scope}:{}",
            hex::encode(&mac.finalize().into_bytes()[..16])
        )
    }

    /// Checks the destination and counts one SMS against every quota; refuses (giving back
    /// what it counted) when the destination is refused or any quota is exceeded.
    async fn admit(
        &self,
        user_id: &str,
        phone: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<Spent, SmsError> {
        if let Err(refused) = self.limits.destinations.check(phone) {
            metrics::rate_limited(refused.as_str());
            AuditEvent {
                event: "SMS_DESTINATION_REFUSED",
                user_id: Some(user_id),
                phone: Some(mask_phone(phone)),
                detail: Some(&refused.to_string()),
                ..Default::default()
            }
            .emit();
            return Err(SmsError::DestinationRefused(refused));
        }
        let country = country_code(phone);
        let ip = client_ip.map(address::quota_key);
        let checks = [
            ("sms_global", "global", Some("all"), self.limits.global),
            (
                "sms_per_country",
                "country",
                Some(country),
                self.limits.per_country,
            ),
            (
                "sms_per_client_ip",
                "ip",
                ip.as_deref(),
                self.limits.per_client_ip,
            ),
            ("sms_per_user", "user", Some(user_id), self.limits.per_user),
            ("sms_per_phone", "phone", Some(phone), self.limits.per_phone),
        ];
        let mut spent = Spent(Vec::new());
        for (name, scope, value, limit) in checks {
            let (Some(limit), Some(value)) = (limit, value) else {
                continue;
            };
            let key = self.limit_key(scope, value);
            let decision = match self.limiter.hit(&key, limit.limit, limit.window).await {
                Ok(decision) => decision,
                Err(error) => {
                    self.refund(spent).await;
                    return Err(error.into());
                }
            };
            spent.0.push(key);
            if !decision.allowed {
                self.refund(spent).await;
                metrics::rate_limited(name);
                AuditEvent {
                    event: "SMS_RATE_LIMITED",
                    user_id: Some(user_id),
                    phone: Some(mask_phone(phone)),
                    detail: Some(name),
                    ..Default::default()
                }
                .emit();
                return Err(SmsError::RateLimited {
                    limit: name,
                    retry_after: decision.retry_after,
                });
            }
        }
        Ok(spent)
    }

    /// Gives back the quota hits of a send that never reached the provider. Logged, not
    /// raised: a hit left counted only makes a quota stricter.
    async fn refund(&self, spent: Spent) {
        for key in spent.0 {
            if let Err(error) = self.limiter.refund(&key).await {
                tracing::warn!(%error, "SMS quota hit not given back");
            }
        }
    }

    /// Sends with the type's sender id; when the gateway refuses that sender, once more with the
    /// gateway's default number, as the spec prescribes.
    async fn deliver(
        &self,
        to: &str,
        sender_id: Option<&str>,
        body: String,
    ) -> Result<(), SendError> {
        let message = SmsMessage {
            to: to.to_owned(),
            from: sender_id.map(str::to_owned),
            body,
        };
        match self.sender.send(&message).await {
            Err(SendError::SenderRefused(cause)) if message.from.is_some() => {
                tracing::warn!(gateway = self.sender.gateway(), sender_id = ?message.from, %cause, "sender id refused; retrying with the default sender");
                self.sender
                    .send(&SmsMessage {
                        from: None,
                        ..message
                    })
                    .await
            }
            other => other,
        }
    }

    pub async fn start(
        &self,
        auth_type: &AuthType,
        request: SmsStart,
    ) -> Result<Transaction, SmsError> {
        let template = request
            .message
            .clone()
            .or_else(|| {
                auth_type
                    .default_message(request.language.as_deref())
                    .map(str::to_owned)
            })
            .ok_or(SmsError::MissingMessage)?;
        let spent = self
            .admit(&request.user_id, &request.phone_number, request.client_ip)
            .await?;
        let details = Details {
            message: Some(template.clone()),
            language: request.language.clone(),
            phone_number: Some(request.phone_number.clone()),
            sender_id: auth_type.sender_id.clone(),
            client_id: request.client_id.clone(),
            ..Details::default()
        };
        let started = match self
            .engine
            .start(auth_type, Some(request.user_id.clone()), details)
            .await
        {
            Ok(started) => started,
            Err(error) => {
                self.refund(spent).await;
                return Err(error.into());
            }
        };
        let tx = started.transaction;
        let method = tx.method.as_str();
        metrics::transaction_started(&tx.auth_type, method);
        let id = tx.id.to_string();
        let code = started.code.ok_or(SmsError::MissingMessage)?;
        let body = render_body(&template, &code, self.origin_host.as_deref());
        let sent = self
            .deliver(&request.phone_number, auth_type.sender_id.as_deref(), body)
            .await;
        let reason = sent.as_ref().err().map(ToString::to_string);
        AuditEvent {
            event: if sent.is_ok() {
                "SMS_AUTH_INIT_MESSAGE_SENT"
            } else {
                "SMS_AUTH_INIT_MESSAGE_FAILED"
            },
            transaction_id: Some(&id),
            auth_type: Some(&tx.auth_type),
            method: Some(method),
            user_id: Some(&request.user_id),
            phone: Some(mask_phone(&request.phone_number)),
            detail: reason.as_deref(),
            ..Default::default()
        }
        .emit();
        match sent {
            Ok(()) => Ok(tx),
            Err(error) => {
                self.refund(spent).await;
                let failed = Finish {
                    evidence: None,
                    status: Status::Failed,
                    reason: Some(Reason::FailedToSend),
                    user_id: None,
                };
                if let Err(store_error) = self.engine.finish(&tx.id, &failed).await {
                    tracing::warn!(transaction_id = %tx.id, error = %store_error, "could not mark the unsent transaction failed; it will expire");
                }
                metrics::transaction_finished(&tx.auth_type, method, Status::Failed.as_str());
                Err(SmsError::SendFailed(error))
            }
        }
    }

    pub async fn verify(
        &self,
        id: &TransactionId,
        owner: Owner<'_>,
        typed: &str,
    ) -> Result<VerifyOutcome, SmsError> {
        let user_id = owner.user_id;
        let verified = self.engine.verify(id, owner, typed).await?;
        let outcome = verified.outcome;
        let finished = match outcome {
            VerifyOutcome::Approved { .. } => Some(("SMS_AUTH_AUTHENTICATED", Status::Approved)),
            VerifyOutcome::Exhausted { .. } => {
                Some(("SMS_AUTH_VALIDATION_LIMIT_EXCEEDED", Status::Failed))
            }
            VerifyOutcome::Expired => Some((
                "SMS_AUTH_NOT_AUTHENTICATED_TRANSACTION_EXPIRED",
                Status::Expired,
            )),
            VerifyOutcome::WrongCode { .. } => {
                self.audit_tx(
                    "SMS_AUTH_NOT_AUTHENTICATED_INVALID_VERIFICATION_CODE",
                    id,
                    user_id,
                );
                None
            }
            VerifyOutcome::NotPending(_) | VerifyOutcome::NoCode => None,
        };
        if let Some((event, status)) = finished {
            self.audit_tx(event, id, user_id);
            metrics::transaction_finished(
                &verified.auth_type,
                verified.method.as_str(),
                status.as_str(),
            );
        }
        Ok(outcome)
    }

    fn audit_tx(&self, event: &'static str, id: &TransactionId, user_id: &str) {
        let id = id.to_string();
        AuditEvent {
            event,
            transaction_id: Some(&id),
            user_id: Some(user_id),
            method: Some("sms"),
            ..Default::default()
        }
        .emit();
    }

    /// Sends a fresh code (the previous one stops working). `Ok(Err(outcome))` is a refusal by
    /// the resend rules.
    pub async fn resend(
        &self,
        id: &TransactionId,
        owner: Owner<'_>,
        client_ip: Option<IpAddr>,
    ) -> Result<Result<(), ResendOutcome>, SmsError> {
        let tx = self.engine.get_owned(id, owner).await?;
        let phone = tx
            .details
            .phone_number
            .clone()
            .ok_or(EngineError::UnknownTransaction)?;
        if tx.status != Status::Pending {
            return Ok(Err(ResendOutcome::NotPending(tx.status)));
        }
        // One resend of a transaction at a time: two at once could deliver the older code last.
        let lock = self.limit_key("resend", &id.to_string());
        if !self.limiter.hit(&lock, 1, RESEND_LOCK).await?.allowed {
            self.limiter.refund(&lock).await?;
            return Err(SmsError::ResendInProgress);
        }
        let outcome = self
            .resend_locked(tx, &phone, owner.user_id, client_ip)
            .await;
        if let Err(error) = self.limiter.refund(&lock).await {
            tracing::warn!(%error, "resend lock not given back; it runs out by itself");
        }
        outcome
    }

    async fn resend_locked(
        &self,
        tx: Transaction,
        phone: &str,
        user_id: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<Result<(), ResendOutcome>, SmsError> {
        let id = &tx.id.clone();
        // A locked account is sent nothing, resends included.
        if let Some(guard) = self.engine.guard() {
            guard
                .check(user_id, Some(id))
                .await
                .map_err(EngineError::from)?;
        }
        let spent = self.admit(user_id, phone, client_ip).await?;
        let resent = match self.engine.resend(tx.clone()).await {
            Ok(ResendResult::Resent(resent)) => resent,
            Ok(ResendResult::Refused(outcome)) => {
                self.refund(spent).await;
                return Ok(Err(outcome));
            }
            Err(error) => {
                self.refund(spent).await;
                return Err(error.into());
            }
        };
        let template = tx
            .details
            .message
            .clone()
            .unwrap_or_else(|| "{code}".to_owned());
        let body = render_body(&template, &resent.code, self.origin_host.as_deref());
        let sent = self
            .deliver(phone, tx.details.sender_id.as_deref(), body)
            .await;
        let event = if sent.is_ok() {
            "SMS_RESEND_SUCCEEDED"
        } else {
            self.refund(spent).await;
            "SMS_RESEND_FAILED"
        };
        self.audit_tx(event, id, user_id);
        sent.map(Ok).map_err(SmsError::SendFailed)
    }
}
