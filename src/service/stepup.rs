//! Step-up for the proxy: start a transaction for a protected request (push, SMS or OTP) and
//! hold the request, check who may see and complete it (user and binding token), show an OTP
//! transaction's code again to who may see it, verify SMS codes, wait for a decision, hand out
//! the held request exactly once, and issue and check grants. The proxy edge calls these; it
//! never touches the store itself.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::guard::{Refused, StillCounts};
use super::otp::{OtpError, OtpService, OtpStart, SecretSource};
use super::push::{PushService, PushServiceError, PushStart, PushTarget};
use super::sms::{SmsError, SmsService, SmsStart};
use super::transactions::{EngineError, TransactionEngine};
use crate::domain::assertion::{AssertionSigner, StepUpFacts};
use crate::domain::auth_type::{AuthTypes, CODE_PLACEHOLDER, Method};
use crate::domain::clock::{SharedClock, Timestamp};
use crate::domain::code::SecretKey;
use crate::domain::grant::{Grant, GrantKey};
use crate::domain::held::{BindingDigest, HeldMode, HeldRequest, HeldTicket, OriginalRequest};
use crate::domain::policy::Bound;
use crate::domain::policy::StepUp;
use crate::domain::ports::{
    BoundedList, HeldRequestStore, SendError, StoreError, TransactionSignals,
};
use crate::domain::regulation::{ResendOutcome, VerifyOutcome};
use crate::domain::transaction::{Owner, Status, Transaction, TransactionId};

/// How often a waiting request looks at the transaction again when nothing signals changes.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often a waiting request looks at the transaction again although signals wake it: the
/// safety net for a lost signal (a gate restarted, a store failover).
const SAFETY_POLL: Duration = Duration::from_secs(5);
/// A waiting connection's lease on its held request: renewed every `WAITER_RENEW`, so a gate
/// that stopped without saying so is noticed within this.
const WAITER_LEASE: Duration = Duration::from_secs(15);
/// How often a waiting connection renews its lease.
pub const WAITER_RENEW: Duration = Duration::from_secs(5);
/// Held requests outlive their transaction a little, so an approval in its last second can
/// still be completed.
const HOLD_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StepUpError {
    /// The policy's auth type (and its fallbacks) cannot run for this user yet (push and OTP
    /// need an enrolled phone app).
    #[error("no usable authentication method for auth type '{0}'")]
    NoUsableMethod(String),
    #[error("the user has no phone number for SMS")]
    NoPhoneNumber,
    /// The SMS-pumping guard refuses the user's phone number as a destination.
    #[error("the phone number is not an allowed SMS destination")]
    DestinationRefused,
    #[error("rate limit {limit} reached")]
    RateLimited {
        limit: &'static str,
        retry_after: Duration,
    },
    #[error("the SMS could not be sent: {0}")]
    SendFailed(SendError),
    /// The account guard refused: the account is locked (or push is held back and nothing
    /// else could run).
    #[error("refused by the account guard: {}", .0.block.as_str())]
    Blocked(Refused),
    /// No such transaction, not this user's, not this client's, or no longer held: one answer
    /// for all, so nobody learns which transactions exist.
    #[error("unknown transaction")]
    UnknownTransaction,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<EngineError> for StepUpError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::UnknownTransaction => StepUpError::UnknownTransaction,
            EngineError::Blocked(refused) => StepUpError::Blocked(refused),
            EngineError::Store(error) => StepUpError::Store(error),
        }
    }
}

impl From<OtpError> for StepUpError {
    fn from(error: OtpError) -> Self {
        match error {
            OtpError::Store(error) => StepUpError::Store(error),
            // Starting a transaction fails only in the store.
            _ => StepUpError::UnknownTransaction,
        }
    }
}

impl From<SmsError> for StepUpError {
    fn from(error: SmsError) -> Self {
        match error {
            SmsError::RateLimited { limit, retry_after } => {
                StepUpError::RateLimited { limit, retry_after }
            }
            SmsError::SendFailed(error) => StepUpError::SendFailed(error),
            SmsError::DestinationRefused(_) => StepUpError::DestinationRefused,
            // One resend at a time: the other is answered as a short rate limit.
            SmsError::ResendInProgress => StepUpError::RateLimited {
                limit: "resend_in_progress",
                retry_after: Duration::from_secs(1),
            },
            SmsError::Engine(error) => error.into(),
            // The proxy always passes a message or the type has a default; treat the
            // impossible as "this method cannot run".
            SmsError::MissingMessage => StepUpError::NoUsableMethod("sms".to_owned()),
        }
    }
}

/// Who is asking, as the proxy established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    pub user_id: String,
    pub phone_number: Option<String>,
    /// The client's address (behind trusted proxies), for the per-client-IP SMS quota.
    pub client_ip: Option<std::net::IpAddr>,
}

/// A step-up just started: what the client needs to follow it.
#[derive(Debug)]
pub struct Challenge {
    pub transaction: Transaction,
    /// Proves "I started this" on status, verify and complete; the client keeps it (cookie or
    /// header). Only its digest is stored.
    pub binding_token: String,
    /// Hidden form field for browser forms, bound to the transaction and the binding token.
    pub csrf_token: String,
    /// OTP: the code for the phone and its deep link, to show as a QR code.
    pub otp: Option<OtpDisplay>,
}

/// An OTP code as the interstitial page and the JSON challenge show it. `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct OtpDisplay {
    /// The code itself (what `stepgate device otp` takes).
    pub code: String,
    /// `<scheme>://otp?c=<code>`: what the QR code carries.
    pub deep_link: String,
}

impl std::fmt::Debug for OtpDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtpDisplay(..)")
    }
}

#[derive(Clone)]
pub struct StepUpService {
    auth_types: AuthTypes,
    engine: TransactionEngine,
    sms: SmsService,
    held: Arc<dyn HeldRequestStore>,
    grants: GrantKey,
    clock: SharedClock,
    csrf_key: [u8; 32],
    user_key: [u8; 32],
    push: Option<PushService>,
    otp: Option<OtpService>,
    assertions: Option<AssertionSigner>,
    signals: Option<Arc<dyn TransactionSignals>>,
}

impl StepUpService {
    pub fn new(
        auth_types: AuthTypes,
        engine: TransactionEngine,
        sms: SmsService,
        held: Arc<dyn HeldRequestStore>,
        clock: SharedClock,
        secret: &SecretKey,
    ) -> Self {
        Self {
            auth_types,
            engine,
            sms,
            held,
            grants: GrantKey::new(secret),
            clock,
            csrf_key: secret.derive("proxy-csrf"),
            user_key: secret.derive("held-user-key"),
            push: None,
            otp: None,
            assertions: None,
            signals: None,
        }
    }

    /// Waiting requests are woken by `signals` instead of polling the store.
    pub fn with_signals(mut self, signals: Arc<dyn TransactionSignals>) -> Self {
        self.signals = Some(signals);
        self
    }

    /// Asserts every forwarded step-up to the app (`proxy.assertion`).
    pub fn with_assertions(mut self, signer: Option<AssertionSigner>) -> Self {
        self.assertions = signer;
        self
    }

    /// The assertion key as a JWK Set, when assertions are on.
    pub fn assertion_jwks(&self) -> Option<serde_json::Value> {
        self.assertions.as_ref().map(|signer| signer.key.jwks())
    }

    /// A fresh assertion for a request forwarded with `grant`.
    pub fn assertion_for_grant(&self, grant: &Grant) -> Option<String> {
        let signer = self.assertions.as_ref()?;
        let facts = StepUpFacts {
            user_id: &grant.user_id,
            policy: &grant.policy,
            method: grant
                .method
                .as_deref()
                .and_then(|method| method.parse::<Method>().ok()),
            auth_time: grant.approved_at.unwrap_or_else(|| self.clock.now()),
            transaction_id: grant.transaction_id.as_deref(),
            bound: grant.bound.as_deref(),
        };
        signer.sign(&facts, self.clock.now())
    }

    /// An assertion for the held request `ticket` that `tx` approved.
    pub fn assertion_for_approval(&self, ticket: &HeldTicket, tx: &Transaction) -> Option<String> {
        let signer = self.assertions.as_ref()?;
        let now = self.clock.now();
        let id = tx.id.to_string();
        let facts = StepUpFacts {
            user_id: &ticket.user_id,
            policy: &ticket.policy,
            method: Some(tx.method),
            auth_time: tx.finished_at.unwrap_or(now),
            transaction_id: Some(&id),
            bound: ticket.bound.as_deref(),
        };
        signer.sign(&facts, now)
    }

    /// Lets policies whose type is an OTP method show a QR code for the user's enrolled phone.
    pub fn with_otp(mut self, otp: OtpService) -> Self {
        self.otp = Some(otp);
        self
    }

    /// Lets policies whose type is a push method push to the user's enrolled phone.
    pub fn with_push(mut self, push: PushService) -> Self {
        self.push = Some(push);
        self
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The grant among `grants` (as the client sent them) that admits `user_id` to `policy`
    /// now, if one does. Needs no store.
    /// `bound`: the request's binding digest when the policy binds its approvals.
    pub fn grant_admitting(
        &self,
        grants: &str,
        user_id: &str,
        policy: &str,
        bound: Option<&str>,
    ) -> Option<Grant> {
        self.grants
            .admitting(grants, user_id, policy, bound, self.clock.now())
    }

    /// A grant for the `ticket` that `tx` approved, added in front of the client's `existing`
    /// ones; `None` when the policy's freshness is zero (every request needs its own approval).
    pub fn grant_for(
        &self,
        ticket: &HeldTicket,
        tx: &Transaction,
        existing: Option<&str>,
    ) -> Option<IssuedGrant> {
        if ticket.freshness_seconds == 0 {
            return None;
        }
        let now = self.clock.now();
        let max_age = Duration::from_secs(ticket.freshness_seconds);
        let asserting = self.assertions.is_some();
        let token = self.grants.issue(&Grant {
            user_id: ticket.user_id.clone(),
            policy: ticket.policy.clone(),
            expires_at: now.plus(max_age),
            // The approval's facts travel only where an assertion will need them: they make
            // the grant, which every granted request opens, longer.
            transaction_id: asserting.then(|| tx.id.to_string()),
            method: asserting.then(|| tx.method.as_str().to_owned()),
            approved_at: asserting.then(|| tx.finished_at.unwrap_or(now)),
            // A bound approval's grant admits only requests with the same bound values.
            bound: ticket.bound.clone(),
        });
        Some(IssuedGrant {
            list: self.grants.add_to_list(existing, &token, now),
            token,
            max_age,
        })
    }

    fn user_key(&self, user_id: &str) -> String {
        let mut mac = self.mac(&self.user_key);
        mac.update(user_id.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    fn mac(&self, key: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
    }

    /// The CSRF token of a browser form: bound to the transaction and the binding token, so a
    /// page of one transaction cannot post for another.
    pub fn csrf_token(&self, id: &TransactionId, binding_token: &str) -> String {
        let mut mac = self.mac(&self.csrf_key);
        mac.update(id.to_string().as_bytes());
        mac.update(b"|");
        mac.update(binding_token.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    pub fn csrf_matches(&self, id: &TransactionId, binding_token: &str, csrf: &str) -> bool {
        let expected = self.csrf_token(id, binding_token);
        bool::from(expected.as_bytes().ct_eq(csrf.as_bytes()))
    }

    /// Starts a step-up for `request`: picks the first type of the policy's fallback chain that
    /// can run, starts its transaction (an SMS goes out) and holds the request until the
    /// transaction ends (plus a short grace).
    pub async fn challenge(
        &self,
        policy: &str,
        step_up: &StepUp,
        requester: &Requester,
        message: Option<String>,
        request: OriginalRequest,
        bound: Option<Bound>,
    ) -> Result<Challenge, StepUpError> {
        let binding_token = random_token();
        let mode = HeldMode::from(step_up.mode);
        // Room for one more held request of this user is reserved before anything is sent;
        // the reservation becomes the transaction's entry once it is held.
        let reservation = format!("r:{}", random_token());
        if let Some(guard) = self.engine.guard() {
            let longest = self
                .auth_types
                .fallback_chain(&step_up.auth_type)
                .into_iter()
                .map(|auth_type| auth_type.ttl)
                .max()
                .unwrap_or_default();
            guard
                .admit(
                    &requester.user_id,
                    BoundedList::HeldRequests,
                    &reservation,
                    self.clock.now().plus(longest + HOLD_GRACE),
                    self.held_check(),
                )
                .await
                .map_err(EngineError::from)?;
        }
        let started = self
            .start_first_usable(
                step_up,
                requester,
                &message,
                mode,
                &binding_token,
                bound.as_ref(),
            )
            .await;
        let (transaction, otp) = match started {
            Ok(started) => started,
            Err(error) => {
                if let Some(guard) = self.engine.guard() {
                    guard
                        .release(&requester.user_id, BoundedList::HeldRequests, &reservation)
                        .await;
                }
                return Err(error);
            }
        };
        let held = HeldRequest {
            ticket: HeldTicket {
                bound: bound.as_ref().map(|bound| bound.digest.clone()),
                policy: policy.to_owned(),
                user_id: requester.user_id.clone(),
                mode,
                freshness_seconds: step_up.freshness.as_secs(),
                binding: BindingDigest::of(&binding_token),
                held_at: self.clock.now(),
                message,
            },
            request,
        };
        let ttl = self.clock.now().until(transaction.expires_at) + HOLD_GRACE;
        let user_key = (mode == HeldMode::Hold).then(|| self.user_key(&requester.user_id));
        // Hold mode: the connection that sent it waits for it from the moment it can be found
        // (`/.stepgate/pending`), so an approval given at once still leaves the forwarding to
        // that connection, which renews the lease while it waits.
        if mode == HeldMode::Hold
            && let Err(error) = self.keep_waiting(&transaction.id, true).await
        {
            tracing::debug!(transaction_id = %transaction.id, %error, "cannot take the waiter lease");
        }
        if let Err(error) = self
            .held
            .hold(&transaction.id, &held, ttl, user_key.as_deref())
            .await
        {
            if let Some(guard) = self.engine.guard() {
                guard
                    .release(&requester.user_id, BoundedList::HeldRequests, &reservation)
                    .await;
            }
            return Err(error.into());
        }
        if let Some(guard) = self.engine.guard()
            && let Err(error) = guard
                .replace(
                    &requester.user_id,
                    BoundedList::HeldRequests,
                    &reservation,
                    &transaction.id.to_string(),
                    transaction.expires_at.plus(HOLD_GRACE),
                )
                .await
        {
            // The reservation keeps counting until its time passes: fails toward the bound.
            tracing::warn!(%error, "held-request entry not recorded");
        }
        let csrf_token = self.csrf_token(&transaction.id, &binding_token);
        Ok(Challenge {
            transaction,
            binding_token,
            csrf_token,
            otp,
        })
    }

    /// The held bound's check of a listed entry: a reservation counts (its step-up is being
    /// started), a transaction id counts while its request is held. A store fault counts:
    /// fail closed.
    fn held_check(&self) -> StillCounts {
        let held = self.held.clone();
        Box::new(move |entry: String| {
            let held = held.clone();
            Box::pin(async move {
                if entry.starts_with("r:") {
                    return true;
                }
                let Ok(id) = entry.parse::<TransactionId>() else {
                    return false;
                };
                !matches!(held.ticket(&id).await, Ok(None))
            })
        })
    }

    /// Starts the first type of the policy's fallback chain that can run for this user: a push
    /// type when the user has a phone enrolled for it and the push goes out, an SMS type when
    /// the user has a phone number, an OTP type (bound to the user, its code shown by the
    /// interstitial page) when OTP is wired in. The OTP code is rebuilt for the page from the
    /// binding token in challenge mode (only that client can see it), from the transaction in
    /// hold mode (any session of the user may open that page).
    async fn start_first_usable(
        &self,
        step_up: &StepUp,
        requester: &Requester,
        message: &Option<String>,
        mode: HeldMode,
        binding_token: &str,
        bound: Option<&Bound>,
    ) -> Result<(Transaction, Option<OtpDisplay>), StepUpError> {
        let mut last_failure = None;
        for auth_type in self.auth_types.fallback_chain(&step_up.auth_type) {
            if auth_type.method == Method::Otp {
                let Some(otp) = &self.otp else {
                    last_failure = Some(StepUpError::NoUsableMethod(auth_type.name.clone()));
                    continue;
                };
                let source = match mode {
                    HeldMode::Challenge => SecretSource::BindingToken(binding_token),
                    HeldMode::Hold => SecretSource::Hold,
                };
                // The OTP path has no engine start of its own: a locked account is refused here.
                if let Some(guard) = self.engine.guard() {
                    guard
                        .check(&requester.user_id, None)
                        .await
                        .map_err(EngineError::from)?;
                }
                let request = OtpStart {
                    user_id: Some(requester.user_id.clone()),
                    message: message.clone(),
                    ..OtpStart::default()
                };
                let started = otp.start(auth_type, request, source).await?;
                let display = OtpDisplay {
                    code: started.code.encode(),
                    deep_link: otp.deep_link(&started.code),
                };
                return Ok((started.transaction, Some(display)));
            }
            if auth_type.method.is_push()
                && let Some(push) = &self.push
            {
                let request = PushStart {
                    user_id: requester.user_id.clone(),
                    message: message.clone(),
                    // Dynamic linking: the phone shows the bound values and, when the type
                    // signs transactions, signs them.
                    signing_data: bound.map(|bound| bound.text.clone()),
                    ..PushStart::default()
                };
                match push.start(auth_type, &PushTarget::Any, request).await {
                    Ok(started) => return Ok((started.transaction, None)),
                    Err(PushServiceError::Store(error)) => return Err(error.into()),
                    // A locked account starts nothing; push held back for the user falls back.
                    Err(PushServiceError::Blocked(refused)) if refused.is_lock() => {
                        return Err(StepUpError::Blocked(refused));
                    }
                    Err(PushServiceError::Blocked(refused)) => {
                        last_failure = Some(StepUpError::Blocked(refused));
                        continue;
                    }
                    Err(error) => {
                        tracing::debug!(%error, auth_type = %auth_type.name, "push cannot start; trying the fallback");
                        last_failure = Some(StepUpError::NoUsableMethod(auth_type.name.clone()));
                        continue;
                    }
                }
            }
            if auth_type.method != Method::Sms {
                continue;
            }
            let Some(phone_number) = requester.phone_number.clone() else {
                last_failure = Some(StepUpError::NoPhoneNumber);
                continue;
            };
            // The SMS carries the policy's message and then the type's own text with the code.
            let code_line = auth_type.default_message(None).unwrap_or(CODE_PLACEHOLDER);
            let template = message
                .as_ref()
                .map(|message| format!("{message}\n{code_line}"));
            let transaction = self
                .sms
                .start(
                    auth_type,
                    SmsStart {
                        user_id: requester.user_id.clone(),
                        phone_number,
                        message: template,
                        language: None,
                        client_id: None,
                        client_ip: requester.client_ip,
                    },
                )
                .await?;
            return Ok((transaction, None));
        }
        Err(last_failure.unwrap_or_else(|| StepUpError::NoUsableMethod(step_up.auth_type.clone())))
    }

    /// The ticket of a held request, when `requester` may act on it: it must be the user's,
    /// and a challenge-mode request also needs the binding token of the client that started
    /// it. (A hold-mode request is completed by its own waiting connection, so any session of
    /// the user may approve it.)
    pub async fn ticket(
        &self,
        id: &TransactionId,
        requester: &Requester,
        binding_token: Option<&str>,
    ) -> Result<HeldTicket, StepUpError> {
        let ticket = self
            .held
            .ticket(id)
            .await?
            .ok_or(StepUpError::UnknownTransaction)?;
        let owner = ticket.user_id == requester.user_id;
        let bound = match (ticket.mode, binding_token) {
            (HeldMode::Hold, _) => true,
            (HeldMode::Challenge, Some(token)) => ticket.binding.matches(token),
            (HeldMode::Challenge, None) => false,
        };
        if owner && bound {
            Ok(ticket)
        } else {
            Err(StepUpError::UnknownTransaction)
        }
    }

    /// The OTP code of a pending OTP transaction, for its page: in challenge mode only for the
    /// client holding the binding token, in hold mode for the user (the caller has checked the
    /// ticket with `ticket`). `None` when there is none to show.
    pub fn otp_display(
        &self,
        tx: &Transaction,
        ticket: &HeldTicket,
        binding_token: Option<&str>,
    ) -> Option<OtpDisplay> {
        let otp = self.otp.as_ref()?;
        let code = match ticket.mode {
            HeldMode::Challenge => otp.rebuild(tx, binding_token?)?,
            HeldMode::Hold => otp.rebuild_for_hold(tx)?,
        };
        Some(OtpDisplay {
            code: code.encode(),
            deep_link: otp.deep_link(&code),
        })
    }

    /// The transaction as the user should see it (expired when past its lifetime).
    pub async fn transaction(
        &self,
        id: &TransactionId,
        requester: &Requester,
    ) -> Result<Transaction, StepUpError> {
        Ok(self
            .engine
            .get_owned(id, Owner::through_proxy(&requester.user_id))
            .await?)
    }

    /// Waits up to `max_wait` for the transaction to leave `pending`, and returns it as it
    /// then is.
    pub async fn wait_for_decision(
        &self,
        id: &TransactionId,
        requester: &Requester,
        max_wait: Duration,
    ) -> Result<Transaction, StepUpError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        // Listening before the first read: a decision between the read and the wait still wakes.
        let mut listener = self.signals.as_ref().map(|signals| signals.listen(id));
        loop {
            let transaction = self.transaction(id, requester).await?;
            let now = tokio::time::Instant::now();
            if transaction.status != Status::Pending || now >= deadline {
                return Ok(transaction);
            }
            let left = deadline - now;
            match &mut listener {
                Some(listener) => listener.changed(SAFETY_POLL.min(left)).await,
                None => tokio::time::sleep(POLL_INTERVAL.min(left)).await,
            }
        }
    }

    /// Says that a client connection waits for this hold-mode request (renewed every
    /// `WAITER_RENEW`), or that none does any more.
    pub async fn keep_waiting(&self, id: &TransactionId, waiting: bool) -> Result<(), StepUpError> {
        self.held
            .set_waiter(id, waiting.then_some(WAITER_LEASE))
            .await
            .map_err(StepUpError::from)
    }

    /// Whether a client connection waits for this hold-mode request now.
    pub async fn is_waited_on(&self, id: &TransactionId) -> Result<bool, StepUpError> {
        Ok(self.held.has_waiter(id).await?)
    }

    /// Checks an SMS code and counts the attempt (atomic in the store). Only SMS transactions
    /// take a typed code: any other answers `NoCode` and nothing is counted (an OTP code is
    /// shown to this very client, and must be redeemed by the phone, never typed back here).
    pub async fn verify(
        &self,
        id: &TransactionId,
        requester: &Requester,
        code: &str,
    ) -> Result<VerifyOutcome, StepUpError> {
        let tx = self
            .engine
            .get_owned(id, Owner::through_proxy(&requester.user_id))
            .await?;
        if tx.method != Method::Sms {
            return Ok(VerifyOutcome::NoCode);
        }
        Ok(self
            .sms
            .verify(id, Owner::through_proxy(&requester.user_id), code)
            .await?)
    }

    pub async fn resend(
        &self,
        id: &TransactionId,
        requester: &Requester,
    ) -> Result<Result<(), ResendOutcome>, StepUpError> {
        Ok(self
            .sms
            .resend(
                id,
                Owner::through_proxy(&requester.user_id),
                requester.client_ip,
            )
            .await?)
    }

    /// Hands out the held request of an approved transaction, once: of two concurrent calls
    /// one gets it, the other `None`.
    pub async fn release(&self, id: &TransactionId) -> Result<Option<HeldRequest>, StepUpError> {
        Ok(self.held.take(id).await?)
    }

    /// The user's latest request waiting in hold mode, for approving it from another session.
    pub async fn latest_held(
        &self,
        requester: &Requester,
    ) -> Result<Option<TransactionId>, StepUpError> {
        Ok(self
            .held
            .latest_for_user(&self.user_key(&requester.user_id))
            .await?)
    }
}

/// A grant just issued.
#[derive(Debug, Clone)]
pub struct IssuedGrant {
    /// The new grant alone (for the `Stepgate-Grant` header and JSON).
    pub token: String,
    /// The client's grants with the new one in front (for the cookie).
    pub list: String,
    pub max_age: Duration,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Longest value a placeholder contributes; messages end up in SMS and on phones.
const MAX_PLACEHOLDER_CHARS: usize = 64;

/// The value `{source.name}` stands for: the first form field, query parameter or header (by
/// any case) of that name; `None` for an unknown source or an absent field.
pub fn placeholder_value<'a>(
    source: &str,
    name: &str,
    form: &'a [(String, String)],
    query: &'a [(String, String)],
    headers: &'a [(String, String)],
) -> Option<&'a str> {
    let (list, case_blind) = match source {
        "form" => (form, false),
        "query" => (query, false),
        "header" => (headers, true),
        _ => return None,
    };
    list.iter()
        .find(|(key, _)| {
            if case_blind {
                key.eq_ignore_ascii_case(name)
            } else {
                key == name
            }
        })
        .map(|(_, value)| value.as_str())
}

/// Fills `{form.x}`, `{query.x}` and `{header.x}` in a policy message from the held request.
/// Values lose control characters and braces (so no value can smuggle in a `{code}`) and are
/// cut to 64 characters; a missing value reads `?`.
/// The result is cut to `max_chars`.
pub fn fill_message(
    template: &str,
    form: &[(String, String)],
    query: &[(String, String)],
    headers: &[(String, String)],
    max_chars: usize,
) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            rest = "";
            break;
        };
        let inner = &after[..close];
        let value = inner
            .split_once('.')
            .and_then(|(source, name)| placeholder_value(source, name, form, query, headers));
        match value {
            Some(value) => out.extend(
                value
                    .chars()
                    .filter(|c| !c.is_control() && *c != '{' && *c != '}')
                    .take(MAX_PLACEHOLDER_CHARS),
            ),
            None => out.push('?'),
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn messages_fill_from_form_query_and_headers() {
        let form = pairs(&[("amount", "10"), ("iban", "NL91ABNA0417164300")]);
        let query = pairs(&[("ref", "r-1")]);
        let headers = pairs(&[("X-Shop", "Acme")]);
        let text = fill_message(
            "Pay {form.amount} EUR to {form.iban} ({query.ref}) at {header.x-shop}",
            &form,
            &query,
            &headers,
            155,
        );
        assert_eq!(text, "Pay 10 EUR to NL91ABNA0417164300 (r-1) at Acme");
    }

    #[test]
    fn missing_values_read_as_a_question_mark_and_control_characters_go() {
        let form = pairs(&[("to", "Eve\r\nBcc: x\u{7}")]);
        assert_eq!(
            fill_message("{form.amount} to {form.to}", &form, &[], &[], 155),
            "? to EveBcc: x"
        );
    }

    #[test]
    fn long_values_and_messages_are_cut() {
        let long = "9".repeat(500);
        let form = pairs(&[("amount", &long)]);
        let text = fill_message("{form.amount}", &form, &[], &[], 155);
        assert_eq!(text.len(), MAX_PLACEHOLDER_CHARS);
        let text = fill_message("abcdef {form.amount}", &form, &[], &[], 10);
        assert_eq!(text, "abcdef 999");
    }

    #[test]
    fn unclosed_braces_are_kept_as_text() {
        assert_eq!(fill_message("a {b", &[], &[], &[], 155), "a {b");
    }
}
