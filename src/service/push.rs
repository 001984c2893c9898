//! Push authentication: starting a push transaction on one of the user's enrolled devices,
//! the device's pending list and once-only details (secure message and signing data sealed
//! for the device), and the device's answer: which key must sign it for the method, wrong PINs
//! counted toward the application's limit, number matching, transaction signing, and the
//! evidence the result API reports. Every final state schedules the portal callback.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::{OsRng, RngCore};

use crate::domain::application::{AppVersion, accepted_authenticators};
use crate::domain::auth_type::{AuthType, AuthTypes, Method, NumberMatching};
use crate::domain::clock::SharedClock;
use crate::domain::device::{
    Authenticator, Device, DeviceId, PinCheck, PinFailure, PublicKeyBytes, PushRegistration,
};
use crate::domain::device_crypto::{self, SealedPayload};
use crate::domain::ports::StoreError;
use crate::domain::push::{PushError, PushMessage, PushSender};
use crate::domain::regulation::{Finish, FinishOutcome, ResendOutcome};
use crate::domain::transaction::{
    Details, Evidence, Owner, Reason, Status, Transaction, TransactionId,
};
use crate::service::callbacks::CallbackService;
use crate::service::devices::{DeviceError, DeviceService};
use crate::service::guard::Refused;
use crate::service::transactions::{EngineError, TransactionEngine};
use crate::telemetry::audit::AuditEvent;
use crate::telemetry::metrics;

#[derive(Debug, thiserror::Error)]
pub enum PushServiceError {
    #[error("push authorization is disabled")]
    Disabled,
    /// The user has no device that can answer this method (for this target): fall back.
    #[error("no push enrollment for this user")]
    NoDevice,
    /// The provider did not take the push; the transaction failed (`failed_to_send`).
    #[error("push not sent: {0}")]
    SendFailed(PushError),
    #[error("message missing and no default message")]
    MissingMessage,
    /// Resends are off for the type, or all used.
    #[error("resend refused: {0:?}")]
    ResendRefused(ResendOutcome),
    #[error("unknown transaction")]
    UnknownTransaction,
    #[error("details already fetched")]
    AlreadyFetched,
    #[error("transaction is {0}")]
    NotPending(Status),
    #[error("invalid answer: {0}")]
    InvalidAnswer(String),
    /// A biometric or custom-authenticator signature that does not verify.
    #[error("answer signature invalid")]
    InvalidSignature,
    #[error("wrong PIN")]
    WrongPin { remaining: Option<u32> },
    #[error("device disconnected after too many wrong PINs")]
    Disconnected,
    /// The account guard refused: the account is locked, or push is held back for the user.
    #[error("refused by the account guard: {}", .0.block.as_str())]
    Blocked(Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<EngineError> for PushServiceError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::UnknownTransaction => PushServiceError::UnknownTransaction,
            EngineError::Blocked(refused) => PushServiceError::Blocked(refused),
            EngineError::Store(error) => PushServiceError::Store(error),
        }
    }
}

impl From<DeviceError> for PushServiceError {
    fn from(error: DeviceError) -> Self {
        match error {
            DeviceError::Store(error) => PushServiceError::Store(error),
            _ => PushServiceError::UnknownTransaction,
        }
    }
}

/// Which of the user's devices a push goes to (API v4, v3, v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushTarget {
    Device(String),
    Application(String),
    /// The only device with a push registration (v2, and the proxy).
    Any,
}

#[derive(Debug, Clone, Default)]
pub struct PushStart {
    pub user_id: String,
    pub message: Option<String>,
    pub secure_message: Option<String>,
    pub signing_data: Option<String>,
    pub callback_uri: Option<String>,
    pub language: Option<String>,
    /// The API client starting it; `None` for the gateway's proxy.
    pub client_id: Option<String>,
}

#[derive(Debug)]
pub struct PushStarted {
    pub transaction: Transaction,
    pub device: Device,
}

/// What the device posts.
#[derive(Debug, Clone)]
pub struct Answer {
    pub approve: bool,
    /// With a denial: "this wasn't me" (the user did not ask for it). Blocks push step-ups
    /// for the user for the configured time.
    pub report: bool,
    pub number: Option<u8>,
    pub authenticator: Authenticator,
    pub authenticator_signature: Option<String>,
    pub signing_signature: Option<String>,
}

/// A pending transaction as the device's list shows it.
#[derive(Debug, Clone)]
pub struct PendingItem {
    pub transaction: Transaction,
}

/// The once-only details of a transaction for its device.
#[derive(Debug)]
pub struct TransactionDetails {
    pub transaction: Transaction,
    pub number_choices: Option<Vec<u8>>,
    pub sealed: Option<SealedPayload>,
}

#[derive(Clone)]
pub struct PushService {
    engine: TransactionEngine,
    devices: DeviceService,
    sender: Arc<dyn PushSender>,
    auth_types: AuthTypes,
    callbacks: CallbackService,
    clock: SharedClock,
    authorization_enabled: bool,
}

impl PushService {
    pub fn new(
        engine: TransactionEngine,
        devices: DeviceService,
        sender: Arc<dyn PushSender>,
        auth_types: AuthTypes,
        callbacks: CallbackService,
        clock: SharedClock,
        authorization_enabled: bool,
    ) -> Self {
        Self {
            engine,
            devices,
            sender,
            auth_types,
            callbacks,
            clock,
            authorization_enabled,
        }
    }

    pub fn devices(&self) -> &DeviceService {
        &self.devices
    }

    /// A transaction as the result API reports it (expired when its time has passed).
    pub async fn transaction(
        &self,
        id: &TransactionId,
    ) -> Result<Option<Transaction>, PushServiceError> {
        Ok(self.engine.get(id).await?)
    }

    /// The user's devices that can answer `method` now: a push registration and the keys the
    /// method needs, in an application that allows it.
    pub async fn push_devices(
        &self,
        user_id: &str,
        method: Method,
    ) -> Result<Vec<Device>, PushServiceError> {
        let applications = self.devices.applications();
        Ok(self
            .devices
            .devices_of_user(user_id)
            .await?
            .into_iter()
            .filter(|device| {
                device.push.is_some()
                    && applications
                        .get(&device.application)
                        .is_some_and(|app| app.supports(method))
                    && key_for_any(device, method)
            })
            .collect())
    }

    /// Starts a push of `auth_type` (a push method) to the targeted device.
    pub async fn start(
        &self,
        auth_type: &AuthType,
        target: &PushTarget,
        request: PushStart,
    ) -> Result<PushStarted, PushServiceError> {
        if !self.authorization_enabled {
            return Err(PushServiceError::Disabled);
        }
        let candidates = self
            .push_devices(&request.user_id, auth_type.method)
            .await?;
        let device = match target {
            PushTarget::Device(id) => candidates.into_iter().find(|d| d.id.as_str() == id),
            PushTarget::Application(app) => {
                let mut of_app = candidates.into_iter().filter(|d| &d.application == app);
                of_app.next()
            }
            PushTarget::Any => candidates.into_iter().next(),
        }
        .ok_or(PushServiceError::NoDevice)?;
        // Checked before anything is stored: a device whose registration leads to no push
        // config (the config changed since it registered) falls back like one without.
        if self.route(&device).is_none() {
            return Err(PushServiceError::NoDevice);
        }

        let message = request
            .message
            .clone()
            .or_else(|| {
                auth_type
                    .default_message(request.language.as_deref())
                    .map(str::to_owned)
            })
            .ok_or(PushServiceError::MissingMessage)?;
        let number = auth_type
            .number_matching
            .is_on()
            .then(|| two_digit_number(&mut OsRng));
        let details = Details {
            callback_uri: request.callback_uri,
            message: Some(message.clone()),
            secure_message: request.secure_message,
            language: request.language,
            device_id: Some(device.id.to_string()),
            application: Some(device.application.clone()),
            signing_data: request
                .signing_data
                .filter(|_| auth_type.transaction_signing),
            number,
            number_typed: auth_type.number_matching == NumberMatching::Type,
            client_id: request.client_id,
            ..Details::default()
        };
        let started = self
            .engine
            .start(auth_type, Some(request.user_id.clone()), details)
            .await?;
        let tx = started.transaction;
        metrics::transaction_started(&tx.auth_type, tx.method.as_str());
        self.devices
            .store()
            .add_pending(&device.id, &tx.id, tx.expires_at)
            .await?;
        let (push, token) = self.push_message(&device, &tx)?;
        let audit = |event: &'static str, detail: Option<&str>| {
            AuditEvent {
                event,
                transaction_id: Some(&tx.id.to_string()),
                auth_type: Some(&tx.auth_type),
                method: Some(tx.method.as_str()),
                user_id: Some(&request.user_id),
                detail,
                ..AuditEvent::default()
            }
            .emit();
        };
        match self.sender.send(&push).await {
            Ok(()) => {
                audit("PUSH_AUTH_INITIALIZED", Some(device.id.as_str()));
                Ok(PushStarted {
                    transaction: tx,
                    device,
                })
            }
            Err(error) => {
                if error == PushError::Unregistered {
                    self.devices.store().drop_push_by_token(&token).await?;
                }
                audit("PUSH_AUTH_PUSH_SERVICE_FAILURE", Some(&error.to_string()));
                let failed = Finish {
                    status: Status::Failed,
                    reason: Some(Reason::FailedToSend),
                    user_id: None,
                    evidence: None,
                };
                if self.engine.finish(&tx.id, &failed).await? == FinishOutcome::Finished {
                    metrics::transaction_finished(
                        &tx.auth_type,
                        tx.method.as_str(),
                        Status::Failed.as_str(),
                    );
                }
                Err(PushServiceError::SendFailed(error))
            }
        }
    }

    /// Sends the push of a pending transaction again (the portal's resend), counted against
    /// the type's `max_resends` in the same atomic store step that checks it. A provider
    /// failure leaves the transaction pending.
    pub async fn resend(
        &self,
        id: &TransactionId,
        owner: Owner<'_>,
    ) -> Result<(), PushServiceError> {
        let tx = self.engine.get_owned(id, owner).await?;
        if !tx.method.is_push() {
            return Err(PushServiceError::UnknownTransaction);
        }
        let device_id: DeviceId = tx
            .details
            .device_id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .ok_or(PushServiceError::NoDevice)?;
        let device = self
            .devices
            .get_device(&device_id)
            .await?
            .ok_or(PushServiceError::NoDevice)?;
        let (push, _) = self.push_message(&device, &tx)?;
        // A resent push is a push: the lock, a report and the push cap apply to it too.
        if let Some(guard) = self.engine.guard() {
            guard
                .admit_push(owner.user_id)
                .await
                .map_err(EngineError::from)?;
        }
        match self.engine.count_resend(id).await? {
            ResendOutcome::Resent { .. } => {}
            refused => return Err(PushServiceError::ResendRefused(refused)),
        }
        self.sender
            .send(&push)
            .await
            .map_err(PushServiceError::SendFailed)?;
        AuditEvent {
            event: "PUSH_AUTH_RESEND_SUCCEEDED",
            transaction_id: Some(&tx.id.to_string()),
            auth_type: Some(&tx.auth_type),
            user_id: Some(owner.user_id),
            ..AuditEvent::default()
        }
        .emit();
        Ok(())
    }

    /// Where a push to `device` goes: its registration, the application version it registered
    /// and that version's push config.
    fn route<'a>(
        &'a self,
        device: &'a Device,
    ) -> Option<(&'a PushRegistration, &'a AppVersion, String)> {
        let registration = device.push.as_ref()?;
        let version = self
            .devices
            .applications()
            .get(&device.application)?
            .version(&registration.version, registration.platform)?;
        let push_config = version.push_config.clone()?;
        Some((registration, version, push_config))
    }

    /// The push for `tx` to `device`'s registration, and the registration's token.
    fn push_message(
        &self,
        device: &Device,
        tx: &Transaction,
    ) -> Result<(PushMessage, String), PushServiceError> {
        let (registration, version, push_config) =
            self.route(device).ok_or(PushServiceError::NoDevice)?;
        Ok((
            PushMessage {
                token: registration.token.clone(),
                platform: registration.platform,
                push_config,
                topic: version.bundle_id.clone(),
                environment: version.apns_environment,
                transaction_id: tx.id.to_string(),
                message: tx.details.message.clone(),
                expires_at_secs: tx.expires_at.millis() / 1000,
            },
            registration.token.clone(),
        ))
    }

    /// The device's pending push transactions, oldest first.
    pub async fn pending(&self, device: &Device) -> Result<Vec<Transaction>, PushServiceError> {
        let ids = self.devices.store().pending(&device.id).await?;
        let mut pending = Vec::new();
        for id in ids {
            if let Some(tx) = self.engine.get(&id).await?
                && tx.status == Status::Pending
                && owned_by(&tx, &device.id)
            {
                pending.push(tx);
            }
        }
        Ok(pending)
    }

    /// The transaction as the device may see it; the first call also hands out the sealed
    /// secure message and signing data and the number choices, later ones `AlreadyFetched`.
    pub async fn details(
        &self,
        device: &Device,
        id: &TransactionId,
    ) -> Result<TransactionDetails, PushServiceError> {
        let tx = self.owned_pending(device, id).await?;
        let once_key = format!("fetched:{id}");
        let ttl = tx.time_to_live(self.clock.now()) + std::time::Duration::from_secs(60);
        if !self.devices.store().claim_once(&once_key, ttl).await? {
            return Err(PushServiceError::AlreadyFetched);
        }
        let sealed = if tx.details.secure_message.is_some() || tx.details.signing_data.is_some() {
            // Both values travel base64url inside the sealed JSON (docs/device-protocol.md), so
            // the signing data the device signs is exactly these bytes.
            let encode = |value: &Option<String>| {
                value
                    .as_ref()
                    .map(|text| URL_SAFE_NO_PAD.encode(text.as_bytes()))
            };
            let plaintext = serde_json::json!({
                "secure_message": encode(&tx.details.secure_message),
                "signing_data": encode(&tx.details.signing_data),
            })
            .to_string();
            let server = self.devices.server_key(&device.id);
            Some(
                device_crypto::encrypt_for_device(
                    &server.0,
                    &device.keys.encryption,
                    &tx.id.to_string(),
                    plaintext.as_bytes(),
                )
                .map_err(|err| PushServiceError::InvalidAnswer(err.to_string()))?,
            )
        } else {
            None
        };
        // Typed: the phone gets no choices (it must not hint at the number).
        let number_choices = tx
            .details
            .number
            .filter(|_| !tx.details.number_typed)
            .map(|n| number_choices(n, &mut OsRng));
        Ok(TransactionDetails {
            transaction: tx,
            number_choices,
            sealed,
        })
    }

    async fn owned_pending(
        &self,
        device: &Device,
        id: &TransactionId,
    ) -> Result<Transaction, PushServiceError> {
        let tx = self
            .engine
            .get(id)
            .await?
            .filter(|tx| owned_by(tx, &device.id))
            .ok_or(PushServiceError::UnknownTransaction)?;
        if tx.status != Status::Pending {
            return Err(PushServiceError::NotPending(tx.status));
        }
        Ok(tx)
    }

    /// Applies the device's answer.
    pub async fn answer(
        &self,
        device: &Device,
        id: &TransactionId,
        answer: Answer,
    ) -> Result<Status, PushServiceError> {
        let tx = self.owned_pending(device, id).await?;
        if !answer.approve {
            // The portal's callback and result say so too (`reported`).
            let evidence = answer.report.then(|| Evidence {
                reported: Some(true),
                ..Evidence::default()
            });
            let denied = self
                .finish(&tx, Status::Denied, Some(Reason::NotAccepted), evidence)
                .await?;
            // The denial stands whatever happens to the report: a store fault only loses the
            // block, never the user's "no".
            if answer.report
                && let Some(guard) = self.engine.guard()
                && let Err(error) = guard
                    .report(&device.user_id, &tx.id, device.id.as_str())
                    .await
            {
                tracing::warn!(%error, transaction_id = %tx.id, "report not recorded; push stays open for the user");
            }
            return Ok(denied);
        }
        if answer.report {
            return Err(PushServiceError::InvalidAnswer(
                "report goes with a denial only".into(),
            ));
        }
        // An approval is an authentication attempt of the user: counted by the account guard
        // before it is checked (refused while the account is locked, whenever the push went
        // out), then settled by what it came to.
        // Counted, checked and settled to the end even when the phone goes away mid-answer,
        // so an attempt is never left counted in flight.
        let service = self.clone();
        let device = device.clone();
        tokio::spawn(async move { service.approve_counted(&device, &tx, &answer).await })
            .await
            .map_err(|error| PushServiceError::Store(StoreError::Unavailable(error.to_string())))?
    }

    async fn approve_counted(
        &self,
        device: &Device,
        tx: &Transaction,
        answer: &Answer,
    ) -> Result<Status, PushServiceError> {
        self.engine.begin_attempt(&device.user_id, &tx.id).await?;
        let (outcome, settle) = self.approve(device, tx, answer).await;
        match settle {
            Settle::Success => self.engine.record_success(&device.user_id).await,
            Settle::Failure => {
                self.engine
                    .record_failure(&device.user_id, &tx.id, tx.method)
                    .await;
            }
            Settle::Refund => self.engine.refund_attempt(&device.user_id).await,
        }
        outcome
    }

    /// Checks an approving answer (number, authenticator, signature, PIN) and finishes the
    /// transaction; says how the account guard's attempt settles.
    async fn approve(
        &self,
        device: &Device,
        tx: &Transaction,
        answer: &Answer,
    ) -> (Result<Status, PushServiceError>, Settle) {
        match self.check_approval(device, tx, answer).await {
            Ok(Checked::WrongNumber) => (
                self.finish(tx, Status::Failed, Some(Reason::InvalidAnswer), None)
                    .await,
                Settle::Failure,
            ),
            Ok(Checked::WrongPin) => (self.wrong_pin(device, tx).await, Settle::Failure),
            Ok(Checked::Right(evidence)) => {
                match self
                    .finish(tx, Status::Approved, None, Some(*evidence))
                    .await
                {
                    Ok(status) => (Ok(status), Settle::Success),
                    Err(error) => (Err(error), Settle::Refund),
                }
            }
            Err(error @ PushServiceError::InvalidSignature) => (Err(error), Settle::Failure),
            Err(error) => (Err(error), Settle::Refund),
        }
    }

    async fn check_approval(
        &self,
        device: &Device,
        tx: &Transaction,
        answer: &Answer,
    ) -> Result<Checked, PushServiceError> {
        if let Some(expected) = tx.details.number
            && answer.number != Some(expected)
        {
            return Ok(Checked::WrongNumber);
        }
        if !accepted_authenticators(tx.method).contains(&answer.authenticator) {
            return Err(PushServiceError::InvalidAnswer(format!(
                "{} cannot answer a {} transaction",
                answer.authenticator.as_str(),
                tx.method
            )));
        }
        let key = authenticator_key(device, answer.authenticator).ok_or_else(|| {
            PushServiceError::InvalidAnswer(format!(
                "the device has no {} key",
                answer.authenticator.as_str()
            ))
        })?;
        let statement =
            device_crypto::answer_statement(&tx.id.to_string(), "approve", answer.number);
        let mut used_attempts = None;
        if answer.authenticator != Authenticator::Device {
            if answer.authenticator == Authenticator::Pin {
                // Counted before it is checked, in one atomic step with the limit: answers
                // arriving together cannot check more PINs than allowed, and past the limit
                // every answer is the same, right PIN or wrong.
                match self
                    .devices
                    .store()
                    .begin_pin_check(&device.id, self.max_pin_attempts(device))
                    .await?
                {
                    PinCheck::Allowed { .. } => {}
                    // Gone in the meantime: disconnected by another answer's last wrong PIN.
                    PinCheck::Exhausted | PinCheck::UnknownDevice => {
                        return Err(PushServiceError::Disconnected);
                    }
                }
            }
            let signature = answer
                .authenticator_signature
                .as_deref()
                .unwrap_or_default();
            let verified = device_crypto::verify(key, statement.as_bytes(), signature).is_ok();
            match (verified, answer.authenticator) {
                (true, Authenticator::Pin) => {
                    let counted = self.devices.store().reset_pin_failures(&device.id).await?;
                    used_attempts = Some(counted.max(1));
                }
                (true, _) => {}
                (false, Authenticator::Pin) => return Ok(Checked::WrongPin),
                (false, _) => return Err(PushServiceError::InvalidSignature),
            }
        }
        Ok(Checked::Right(Box::new(self.evidence(
            tx,
            key,
            answer,
            used_attempts,
        ))))
    }

    fn evidence(
        &self,
        tx: &Transaction,
        key: &PublicKeyBytes,
        answer: &Answer,
        used_attempts: Option<u32>,
    ) -> Evidence {
        let signs = self
            .auth_types
            .get(&tx.auth_type)
            .is_some_and(|t| t.transaction_signing);
        let mut evidence = Evidence {
            authentication_method: Some(tx.method.as_str().to_owned()),
            authenticator: Some(answer.authenticator.as_str().to_owned()),
            used_attempts,
            ..Evidence::default()
        };
        if signs && let Some(data) = &tx.details.signing_data {
            let signature = answer.signing_signature.clone().unwrap_or_default();
            evidence.signature_verified =
                Some(device_crypto::verify(key, data.as_bytes(), &signature).is_ok());
            evidence.signature = Some(signature);
            evidence.user_public_key = device_crypto::public_key_pem(key).ok();
        }
        evidence
    }

    /// The device's application's limit (0 = unlimited).
    fn max_pin_attempts(&self, device: &Device) -> u32 {
        self.devices
            .applications()
            .get(&device.application)
            .map_or(0, |app| app.max_pin_attempts)
    }

    /// Settles a counted PIN attempt that was wrong.
    async fn wrong_pin(
        &self,
        device: &Device,
        tx: &Transaction,
    ) -> Result<Status, PushServiceError> {
        let max = self.max_pin_attempts(device);
        match self
            .devices
            .store()
            .settle_pin_failure(&device.id, max)
            .await?
        {
            PinFailure::Counted { remaining, .. } => Err(PushServiceError::WrongPin { remaining }),
            PinFailure::Disconnected { failures } => {
                AuditEvent {
                    event: "PUSH_AUTH_VALIDATION_PIN_LIMIT_EXCEEDED",
                    transaction_id: Some(&tx.id.to_string()),
                    user_id: Some(&device.user_id),
                    detail: Some(device.id.as_str()),
                    ..AuditEvent::default()
                }
                .emit();
                let evidence = Evidence {
                    authentication_method: Some(tx.method.as_str().to_owned()),
                    authenticator: Some(Authenticator::Pin.as_str().to_owned()),
                    used_attempts: Some(failures),
                    ..Evidence::default()
                };
                self.finish(
                    tx,
                    Status::Failed,
                    Some(Reason::InvalidAnswer),
                    Some(evidence),
                )
                .await?;
                Err(PushServiceError::Disconnected)
            }
            PinFailure::UnknownDevice => Err(PushServiceError::Disconnected),
        }
    }

    async fn finish(
        &self,
        tx: &Transaction,
        status: Status,
        reason: Option<Reason>,
        evidence: Option<Evidence>,
    ) -> Result<Status, PushServiceError> {
        let update = Finish {
            status,
            reason,
            user_id: None,
            evidence,
        };
        match self.engine.finish(&tx.id, &update).await? {
            FinishOutcome::Finished => {
                metrics::transaction_finished(&tx.auth_type, tx.method.as_str(), status.as_str());
                AuditEvent {
                    event: if status == Status::Approved {
                        "MOBILE_AUTH_AUTHENTICATED"
                    } else {
                        "MOBILE_AUTH_NOT_AUTHENTICATED"
                    },
                    transaction_id: Some(&tx.id.to_string()),
                    auth_type: Some(&tx.auth_type),
                    method: Some(tx.method.as_str()),
                    user_id: tx.user_id.as_deref(),
                    detail: reason.map(Reason::as_str),
                    ..AuditEvent::default()
                }
                .emit();
                let finished = Transaction {
                    status,
                    ..tx.clone()
                };
                if let Err(error) = self.callbacks.schedule(&finished).await {
                    tracing::warn!(%error, transaction_id = %tx.id, "callback not queued");
                }
                Ok(status)
            }
            FinishOutcome::Expired => Err(PushServiceError::NotPending(Status::Expired)),
            FinishOutcome::NotPending(status) => Err(PushServiceError::NotPending(status)),
        }
    }

    /// The configured auth types (availability walks their fallback chains).
    pub fn auth_types(&self) -> &AuthTypes {
        &self.auth_types
    }
}

/// What checking an approving answer found.
enum Checked {
    WrongNumber,
    WrongPin,
    Right(Box<Evidence>),
}

/// How an approval settles its account-guard attempt.
enum Settle {
    Success,
    Failure,
    Refund,
}

fn owned_by(tx: &Transaction, device: &DeviceId) -> bool {
    tx.details.device_id.as_deref() == Some(device.as_str())
}

fn authenticator_key(device: &Device, authenticator: Authenticator) -> Option<&PublicKeyBytes> {
    match authenticator {
        Authenticator::Device => Some(&device.keys.signing),
        Authenticator::Pin => device.keys.pin.as_ref(),
        Authenticator::Biometric => device.keys.biometric.as_ref(),
        Authenticator::CustomAuthenticator => device.keys.custom_authenticator.as_ref(),
    }
}

/// Whether the device holds a key for at least one authenticator the method accepts.
fn key_for_any(device: &Device, method: Method) -> bool {
    accepted_authenticators(method)
        .iter()
        .any(|authenticator| authenticator_key(device, *authenticator).is_some())
}

/// A number from 10 to 99, uniform (rejection sampling).
fn two_digit_number(rng: &mut impl RngCore) -> u8 {
    loop {
        let draw = (rng.next_u32() & 0x7f) as u8;
        if draw < 90 {
            return draw + 10;
        }
    }
}

/// Three distinct two-digit numbers, one of them `right`, in random order.
fn number_choices(right: u8, rng: &mut impl RngCore) -> Vec<u8> {
    let mut choices = vec![right];
    while choices.len() < 3 {
        let candidate = two_digit_number(rng);
        if !choices.contains(&candidate) {
            choices.push(candidate);
        }
    }
    let position = (rng.next_u32() % 3) as usize;
    choices.swap(0, position);
    choices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_two_digits_and_choices_hold_the_right_one_once() {
        for _ in 0..500 {
            let n = two_digit_number(&mut OsRng);
            assert!((10..=99).contains(&n));
            let choices = number_choices(n, &mut OsRng);
            assert_eq!(choices.len(), 3);
            assert_eq!(choices.iter().filter(|c| **c == n).count(), 1);
            assert_ne!(choices[1], choices[2]);
        }
    }
}
