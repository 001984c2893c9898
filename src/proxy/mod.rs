//! The sidecar: a pingora `ProxyHttp` in front of the app. Each request is matched against the
//! route policies; unprotected ones go straight upstream, protected ones need a grant for their
//! user and policy, or they are held and a step-up starts (challenge: page or JSON; hold: the
//! connection waits). After approval the held request goes upstream exactly once. stepgate's
//! own pages live under `/.stepgate/` (`routes`); every answer it gives itself comes from one
//! table (`respond`).
//!
//! Phases stay thin: `request_filter` decides, `upstream_request_filter` strips stepgate's own
//! cookies and headers and sets `X-Forwarded-*`, `logging` counts. Business rules live in
//! `service::stepup`.
//!
//! May import: service, domain, config, telemetry.

pub mod facts;
pub mod identity;
mod message;
pub mod pages;
pub mod replay;
pub mod respond;
mod routes;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ipnet::IpNet;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use serde_json::json;
use url::Url;

use self::facts::{
    BINDING_COOKIE, GRANT_COOKIE, GRANT_HEADER, RequestView, cookie, header, wants_html,
};
use self::identity::{IdentityError, IdentitySource};
use self::replay::{Origin, ReplayError};
use self::respond::{Refusal, Reply, send};
use crate::config::reload::PolicyHandle;
use crate::config::settings::UpstreamSettings;
use crate::domain::canonical::RouterModel;
use crate::domain::guard::Block;
use crate::domain::held::{HeldTicket, OriginalRequest};
use crate::domain::policy::{Bound, Decision, Mode, StepUp};
use crate::domain::transaction::{Status, Transaction, TransactionId};
use crate::service::guard::Refused;
use crate::service::stepup::{Challenge, Requester, StepUpError, StepUpService};
use crate::telemetry::metrics;

/// The reserved prefix of stepgate's own endpoints; never forwarded.
pub const PREFIX: &str = "/.stepgate/";

/// Everything the proxy needs, built once by `app`.
pub struct ProxyState {
    pub policies: PolicyHandle,
    pub stepup: StepUpService,
    /// `None` only when no policy demands step-up (config validation).
    pub identity: Option<IdentitySource>,
    pub upstream: UpstreamSettings,
    pub trusted_proxies: Vec<IpNet>,
    /// How liberal the app's router is assumed to be (`proxy.upstream.router`).
    pub router: RouterModel,
    pub max_held_body_bytes: usize,
    pub login_url: Option<Url>,
    pub max_message_length: usize,
    /// Turns `true` when the gate begins to stop (SIGTERM): waiting hold-mode requests answer
    /// then, instead of having their connection closed under them.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// How a hold-mode wait ended.
enum Waited {
    Decided(Box<Result<Transaction, StepUpError>>),
    /// The client closed its connection: the request stays held and completable.
    ClientGone,
    /// The gate is stopping.
    Stopping,
}

/// Resolves when the client closes its connection (its request was read whole before the
/// wait). Anything else it sends ends the watch without resolving.
async fn client_closed(session: &mut Session) {
    match session.downstream_session.read_body_or_idle(true).await {
        Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Resolves when the gate begins to stop.
async fn stopping(mut stopping: tokio::sync::watch::Receiver<bool>) {
    if stopping.wait_for(|stopping| *stopping).await.is_err() {
        // The sender is gone: nobody will say so, so this never resolves.
        std::future::pending::<()>().await;
    }
}

pub struct StepGateProxy {
    state: Arc<ProxyState>,
    peer: HttpPeer,
    /// For forwarding held requests after approval.
    connector: Connector,
}

impl StepGateProxy {
    pub fn new(state: Arc<ProxyState>) -> Self {
        let peer = replay::peer(&state.upstream);
        Self {
            state,
            peer,
            connector: Connector::new(None),
        }
    }
}

/// Per-request state carried between phases.
pub struct Ctx {
    arrived: Instant,
    policy: Option<String>,
    decision: &'static str,
    peer_ip: Option<IpAddr>,
    /// The socket peer is one of `proxy.trusted_proxies`.
    peer_trusted: bool,
    /// What to send upstream instead of what was received, when the two differ (rare: boxed,
    /// so that the context pingora moves with every request stays small).
    rewrite: Option<Box<Rewrite>>,
    scheme: &'static str,
}

/// What goes upstream besides the request as received: the request target and `Host` in the
/// form that was matched (`CanonicalRequest::forward_target`, `forward_host`), and the step-up
/// assertion of a request forwarded with a grant (`proxy.assertion`).
#[derive(Default)]
struct Rewrite {
    target: Option<String>,
    /// Set when the host came from an absolute-form target.
    host: Option<String>,
    assertion: Option<String>,
}

impl Ctx {
    fn policy_label(&self) -> &str {
        self.policy.as_deref().unwrap_or("none")
    }
}

#[async_trait]
impl ProxyHttp for StepGateProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            arrived: Instant::now(),
            policy: None,
            decision: "allow",
            peer_ip: None,
            peer_trusted: false,
            rewrite: None,
            scheme: "http",
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        match self.route(session, ctx) {
            Next::Upstream => Ok(false),
            // Boxed on its own: the answering paths hold far more state across awaits than
            // passing does, and an async fn's future is as large as its largest path, so
            // inlined they would make every passing request build and move that state.
            answer => Box::pin(self.answer(session, ctx, answer)).await,
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        // Read, not taken: pingora runs this phase again when it retries another connection.
        let rewrite = ctx.rewrite.as_deref();
        if let Some(rewrite) = rewrite {
            if let Some(target) = &rewrite.target {
                upstream_request.set_raw_path(target.as_bytes())?;
            }
            if let Some(host) = &rewrite.host {
                upstream_request.insert_header(http::header::HOST, host.as_str())?;
            }
        }
        if let Some(identity) = &self.state.identity {
            identity.strip_forged(upstream_request, ctx.peer_trusted);
        }
        facts::prepare_upstream(
            upstream_request,
            ctx.peer_ip,
            ctx.scheme,
            &self.state.trusted_proxies,
        )?;
        if let Some(assertion) = rewrite.and_then(|rewrite| rewrite.assertion.as_deref()) {
            upstream_request.insert_header(facts::ASSERTION_HEADER_CASED, assertion)?;
        }
        metrics::proxy_added_latency(ctx.decision, ctx.arrived.elapsed());
        Ok(())
    }

    async fn logging(
        &self,
        _session: &mut Session,
        _error: Option<&pingora::Error>,
        ctx: &mut Ctx,
    ) {
        metrics::proxy_request(ctx.policy_label(), ctx.decision);
    }
}

/// What `route` decided for a request.
enum Next {
    /// Forward it (no policy demands anything, or a valid grant).
    Upstream,
    /// One of stepgate's own endpoints under `PREFIX`.
    Endpoint,
    /// Answered at once (refused, login redirect).
    Reply(Reply),
    /// A policy demands a step-up: forwarded with a valid grant for the requester, else held
    /// and a step-up starts.
    Protected { policy: String, step_up: StepUp },
}

impl StepGateProxy {
    /// Decides, without waiting on anything, what happens to a request: most requests pass,
    /// so this path neither awaits nor allocates beyond the request facts.
    fn route(&self, session: &Session, ctx: &mut Ctx) -> Next {
        ctx.arrived = Instant::now();
        ctx.peer_ip = session
            .client_addr()
            .and_then(|addr| addr.as_inet())
            .map(|addr| addr.ip());
        let trusted = &self.state.trusted_proxies;
        ctx.peer_trusted = ctx.peer_ip.is_some_and(|ip| facts::is_trusted(ip, trusted));
        let req = session.req_header();
        ctx.scheme = facts::scheme(ctx.peer_ip, req, trusted, false);
        let policies = self.state.policies.current();
        let client_ip = facts::client_ip(ctx.peer_ip, req, trusted);
        let view = match RequestView::read(req, client_ip, &self.state.router, &policies) {
            Ok(view) => view,
            Err(unreadable) => {
                ctx.decision = "invalid";
                tracing::debug!(%unreadable, "request refused as unreadable");
                let refusal = Refusal::Unreadable(unreadable);
                return Next::Reply(Reply::refusal(&refusal, wants_html(req)));
            }
        };
        let path = view.canonical.path.as_ref();
        if path.starts_with(PREFIX) || path == "/.stepgate" {
            ctx.policy = Some("stepgate".to_owned());
            ctx.decision = "stepgate";
            return Next::Endpoint;
        }
        // Sent upstream in the form that was matched, never in another.
        if view.canonical.forward_target.is_some() || view.canonical.forward_host.is_some() {
            ctx.rewrite = Some(Box::new(Rewrite {
                target: view.canonical.forward_target.clone(),
                host: view.canonical.forward_host.clone(),
                assertion: None,
            }));
        }
        let verdict = view.decide(&policies);
        ctx.policy = verdict.policy.map(|policy| policy.name.clone());
        match verdict.decision {
            Decision::Allow => {
                ctx.decision = "allow";
                Next::Upstream
            }
            Decision::Deny => {
                ctx.decision = "deny";
                Next::Reply(Reply::refusal(&Refusal::Denied, wants_html(req)))
            }
            Decision::StepUp(step_up) => Next::Protected {
                policy: ctx.policy.clone().unwrap_or_default(),
                step_up: step_up.clone(),
            },
        }
    }

    /// The client's address behind the trusted proxies (for its SMS quota).
    pub(crate) fn client_ip(&self, session: &Session, ctx: &Ctx) -> Option<IpAddr> {
        facts::client_ip(
            ctx.peer_ip,
            session.req_header(),
            &self.state.trusted_proxies,
        )
    }

    /// Who is asking, for a protected request or one of stepgate's own pages: `Err` holds the
    /// answer to give instead (sign in, ambiguous, unavailable).
    async fn identify(&self, session: &Session, ctx: &Ctx) -> Result<Requester, Reply> {
        let req = session.req_header();
        let html = wants_html(req);
        let Some(identity) = &self.state.identity else {
            return Err(self.login_reply(req, html));
        };
        match identity.resolve(req, ctx.peer_trusted).await {
            Ok(requester) => Ok(requester),
            Err(IdentityError::Missing | IdentityError::Rejected(_)) => {
                Err(self.login_reply(req, html))
            }
            Err(IdentityError::Ambiguous(what)) => {
                Err(Reply::refusal(&Refusal::Ambiguous(what), html))
            }
            Err(IdentityError::Unavailable(cause)) => {
                tracing::warn!(%cause, "identity source unavailable");
                Err(Reply::refusal(&Refusal::Unavailable, html))
            }
        }
    }

    /// A request a policy protects: it passes with a valid grant for its user and policy;
    /// without an identity the client is sent to log in. `Ok(false)`: forward it.
    async fn protected(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        policy: &str,
        step_up: &StepUp,
    ) -> pingora::Result<bool> {
        let mut requester = match self.identify(session, ctx).await {
            Ok(requester) => requester,
            Err(reply) => {
                ctx.decision = "refused";
                send(session, reply).await?;
                return Ok(true);
            }
        };
        // Dynamic linking: a binding policy reads the request first, since a grant admits
        // only a request with the values its approval was bound to.
        let prepared = if step_up.bind.is_empty() {
            None
        } else {
            match self.prepare(session, ctx, step_up, policy).await? {
                Some(prepared) => Some(prepared),
                None => return Ok(true),
            }
        };
        let req = session.req_header();
        let grants = header(req, GRANT_HEADER).or_else(|| cookie(req, GRANT_COOKIE));
        let stepup = &self.state.stepup;
        let digest = prepared
            .as_ref()
            .and_then(|prepared| prepared.bound.as_ref())
            .map(|bound| bound.digest.as_str());
        if let Some(grant) = grants
            .and_then(|grants| stepup.grant_admitting(grants, &requester.user_id, policy, digest))
        {
            ctx.decision = "granted";
            let assertion = stepup.assertion_for_grant(&grant);
            let Some(Prepared { original, .. }) = prepared else {
                if let Some(assertion) = assertion {
                    ctx.rewrite.get_or_insert_with(Box::default).assertion = Some(assertion);
                }
                return Ok(false);
            };
            // The body is read already: the request goes upstream as held requests do.
            let html = wants_html(session.req_header());
            if self
                .replay(session, ctx, &original, assertion.as_deref(), &[], html)
                .await?
                .is_some()
            {
                tracing::info!(policy, "bound request forwarded on its grant");
            }
            return Ok(true);
        }
        // Only a step-up sends codes: the client's address (for its SMS quota) is read here,
        // not on the granted path.
        requester.client_ip = self.client_ip(session, ctx);
        self.step_up(session, ctx, policy, step_up, &requester, prepared)
            .await?;
        Ok(true)
    }

    /// Reads the protected request whole, fills the policy's message from it and, when the
    /// policy binds its approvals, reads the bound values; `None` when the request was refused
    /// (too large, unreadable, ambiguous) and the answer is sent.
    async fn prepare(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        step_up: &StepUp,
        policy: &str,
    ) -> pingora::Result<Option<Prepared>> {
        let html = wants_html(session.req_header());
        let original = match self.read_original(session, ctx).await? {
            Ok(original) => original,
            Err(refusal) => {
                refuse_unread(session, ctx, &refusal, html).await?;
                return Ok(None);
            }
        };
        let message = step_up
            .message
            .as_deref()
            .map(|template| message::fill(template, &original, self.state.max_message_length))
            .transpose();
        let read = message.and_then(|message| {
            let bound = if step_up.bind.is_empty() {
                None
            } else {
                let shown = message.as_deref().unwrap_or("");
                Some(Bound::of(&message::bound_values(
                    &step_up.bind,
                    &original,
                    shown,
                )?))
            };
            Ok((message, bound))
        });
        match read {
            Ok((message, bound)) => Ok(Some(Prepared {
                original,
                message,
                bound,
            })),
            Err(ambiguous) => {
                ctx.decision = "invalid";
                tracing::info!(policy, %ambiguous, "held request refused as ambiguous");
                let refusal = Refusal::Ambiguous(ambiguous.reason());
                send(session, Reply::refusal(&refusal, html)).await?;
                Ok(None)
            }
        }
    }

    /// Everything but passing: stepgate's own endpoints, immediate answers, step-ups.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        next: Next,
    ) -> pingora::Result<bool> {
        match next {
            Next::Upstream => return Ok(false),
            Next::Endpoint => routes::handle(self, session, ctx).await?,
            Next::Reply(reply) => send(session, reply).await?,
            Next::Protected { policy, step_up } => {
                return self.protected(session, ctx, &policy, &step_up).await;
            }
        }
        Ok(true)
    }

    /// Holds the protected request and starts a step-up: a challenge answers at once, hold mode
    /// keeps the connection until the transaction ends.
    async fn step_up(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        policy: &str,
        step_up: &StepUp,
        requester: &Requester,
        prepared: Option<Prepared>,
    ) -> pingora::Result<()> {
        let html = wants_html(session.req_header());
        let prepared = match prepared {
            Some(prepared) => prepared,
            None => match self.prepare(session, ctx, step_up, policy).await? {
                Some(prepared) => prepared,
                None => return Ok(()),
            },
        };
        let Prepared {
            original,
            message,
            bound,
        } = prepared;
        let challenge = match self
            .state
            .stepup
            .challenge(policy, step_up, requester, message, original, bound)
            .await
        {
            Ok(challenge) => challenge,
            Err(error) => {
                ctx.decision = if matches!(error, StepUpError::Store(_)) {
                    "unavailable"
                } else {
                    "refused"
                };
                tracing::warn!(policy, %error, "step-up could not start");
                return send(session, Reply::refusal(&refusal_for(&error), html)).await;
            }
        };
        match step_up.mode {
            Mode::Challenge => {
                ctx.decision = "challenged";
                let reply = challenge_reply(&challenge, ctx.scheme, html);
                send(session, reply).await
            }
            Mode::Hold => {
                ctx.decision = "held";
                self.hold(session, ctx, &challenge, requester, html).await
            }
        }
    }

    /// No identity: browsers go to the login page when one is configured, others get 401.
    fn login_reply(&self, req: &RequestHeader, html: bool) -> Reply {
        match (&self.state.login_url, html) {
            (Some(login), true) => {
                let mut url = login.clone();
                let back = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
                url.query_pairs_mut().append_pair("return_to", back);
                Reply::redirect(url.as_str())
            }
            _ => Reply::refusal(&Refusal::NoIdentity, html),
        }
    }

    /// Reads the whole request (bounded by `max_held_body_bytes`) so it can be held.
    async fn read_original(
        &self,
        session: &mut Session,
        ctx: &Ctx,
    ) -> pingora::Result<Result<OriginalRequest, Refusal>> {
        let limit = self.state.max_held_body_bytes;
        let declared =
            header(session.req_header(), "content-length").and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Ok(Err(Refusal::TooLarge));
        }
        let mut body = Vec::new();
        while let Some(chunk) = session.read_request_body().await? {
            if body.len() + chunk.len() > limit {
                return Ok(Err(Refusal::TooLarge));
            }
            body.extend_from_slice(&chunk);
        }
        let req = session.req_header();
        // The target as matched: canonicalizing refused anything that is not UTF-8.
        let forward_target = ctx.rewrite.as_ref().and_then(|r| r.target.as_ref());
        let forward_host = ctx.rewrite.as_ref().and_then(|r| r.host.as_ref());
        let uri = match forward_target {
            Some(target) => target.clone(),
            None => String::from_utf8_lossy(req.raw_path()).into_owned(),
        };
        let identity = self.state.identity.as_ref();
        let mut headers: Vec<(String, Vec<u8>)> = req
            .headers
            .iter()
            // The replay goes upstream like any forwarded request: a client's copies of the
            // trusted identity headers never reach the app, and the host is the one matched.
            .filter(|(name, _)| {
                let forged = identity
                    .is_some_and(|identity| identity.is_forged(name.as_str(), ctx.peer_trusted));
                let replaced_host = forward_host.is_some() && *name == http::header::HOST;
                !forged && !replaced_host
            })
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect();
        if let Some(host) = forward_host {
            headers.push(("host".to_owned(), host.as_bytes().to_vec()));
        }
        Ok(Ok(OriginalRequest {
            method: req.method.as_str().to_owned(),
            uri,
            headers,
            body,
        }))
    }

    /// Hold mode: the connection waits until the transaction ends, then the request goes
    /// upstream (approved) or the client gets 401.
    async fn hold(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        challenge: &Challenge,
        requester: &Requester,
        html: bool,
    ) -> pingora::Result<()> {
        let id = challenge.transaction.id;
        let wait = self
            .state
            .stepup
            .now()
            .until(challenge.transaction.expires_at);
        metrics::proxy_held(1);
        let stepup = &self.state.stepup;
        let outcome = {
            let waited = async {
                tokio::select! {
                    decided = stepup.wait_for_decision(&id, requester, wait) => Waited::Decided(Box::new(decided)),
                    () = client_closed(session) => Waited::ClientGone,
                    () = stopping(self.state.stopping.clone()) => Waited::Stopping,
                }
            };
            // While this connection waits, its lease says so: an approval given elsewhere then
            // leaves the forwarding to it; without the lease, whoever completes forwards.
            let lease = async {
                loop {
                    if let Err(error) = stepup.keep_waiting(&id, true).await {
                        tracing::debug!(transaction_id = %id, %error, "cannot renew the waiter lease");
                    }
                    tokio::time::sleep(crate::service::stepup::WAITER_RENEW).await;
                }
            };
            tokio::pin!(waited);
            tokio::select! {
                outcome = &mut waited => outcome,
                () = lease => (&mut waited).await,
            }
        };
        metrics::proxy_held(-1);
        let answered = match outcome {
            Waited::Decided(decided) => {
                self.answer_decided(session, ctx, &id, *decided, html).await
            }
            Waited::ClientGone => {
                ctx.decision = "client_gone";
                tracing::info!(transaction_id = %id, "the client of a held request left; it stays held and can be completed at /.stepgate/pending");
                Ok(())
            }
            Waited::Stopping => {
                ctx.decision = "restarting";
                tracing::info!(transaction_id = %id, "the gate stops; the held request stays held and can be completed at /.stepgate/pending");
                send(session, Reply::refusal(&Refusal::Restarting, html)).await
            }
        };
        // The lease ends only once this connection has taken the request (or given up): an
        // approval given elsewhere meanwhile leaves the forwarding to it.
        if let Err(error) = stepup.keep_waiting(&id, false).await {
            tracing::debug!(transaction_id = %id, %error, "cannot drop the waiter lease");
        }
        answered
    }

    /// Answers a hold-mode request whose transaction was decided (or whose wait ran out).
    async fn answer_decided(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        id: &TransactionId,
        decided: Result<Transaction, StepUpError>,
        html: bool,
    ) -> pingora::Result<()> {
        match decided {
            Ok(tx) if tx.status == Status::Approved => {
                ctx.decision = "approved";
                self.release_and_forward(session, ctx, &tx, html).await
            }
            Ok(tx) => {
                ctx.decision = "refused";
                let status = if tx.status == Status::Pending {
                    "expired"
                } else {
                    tx.status.as_str()
                };
                send(
                    session,
                    Reply::refusal(&Refusal::NotApproved(status), false),
                )
                .await
            }
            Err(error) => {
                ctx.decision = "unavailable";
                tracing::warn!(transaction_id = %id, %error, "held request lost its transaction");
                send(session, Reply::refusal(&refusal_for(&error), html)).await
            }
        }
    }

    /// Takes the held request of an approved transaction (once) and forwards it; the answer goes
    /// to this client with a fresh grant.
    async fn release_and_forward(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        tx: &Transaction,
        html: bool,
    ) -> pingora::Result<()> {
        let held = match self.state.stepup.release(&tx.id).await {
            Ok(Some(held)) => held,
            Ok(None) => {
                return send(session, Reply::refusal(&Refusal::AlreadyCompleted, html)).await;
            }
            Err(error) => {
                tracing::warn!(transaction_id = %tx.id, %error, "cannot release the held request");
                return send(session, Reply::refusal(&Refusal::Unavailable, html)).await;
            }
        };
        ctx.policy = Some(held.ticket.policy.clone());
        ctx.decision = "approved";
        let extra = self.grant_headers(session.req_header(), &held.ticket, tx, ctx.scheme);
        let assertion = self.state.stepup.assertion_for_approval(&held.ticket, tx);
        if let Some(status) = self
            .replay(
                session,
                ctx,
                &held.request,
                assertion.as_deref(),
                &extra,
                html,
            )
            .await?
        {
            tracing::info!(transaction_id = %tx.id, policy = %held.ticket.policy, status, "approved request forwarded");
        }
        Ok(())
    }

    /// Sends a request read in full (held, or bound) upstream and its answer to this client,
    /// with `extra` headers; `Some(status)` when the upstream answered, `None` when the client
    /// got 502 instead.
    async fn replay(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        request: &OriginalRequest,
        assertion: Option<&str>,
        extra: &[(&'static str, String)],
        html: bool,
    ) -> pingora::Result<Option<u16>> {
        let origin = Origin {
            peer_ip: ctx.peer_ip,
            scheme: ctx.scheme,
            trusted: &self.state.trusted_proxies,
        };
        match replay::forward(
            &self.connector,
            &self.state.upstream,
            request,
            &origin,
            assertion,
            session,
            extra,
        )
        .await
        {
            Ok(status) => Ok(Some(status)),
            Err(ReplayError::Upstream(cause)) => {
                tracing::error!(%cause, "request could not be forwarded");
                send(session, Reply::refusal(&Refusal::UpstreamFailed, html)).await?;
                Ok(None)
            }
            Err(ReplayError::BrokenOff(cause)) => {
                tracing::error!(%cause, "upstream answer broke off");
                Err(pingora::Error::explain(
                    pingora::ErrorType::WriteError,
                    "upstream answer broke off",
                ))
            }
        }
    }

    /// `Set-Cookie` (browsers) and `Stepgate-Grant` (API clients) for an approved ticket.
    fn grant_headers(
        &self,
        req: &RequestHeader,
        ticket: &HeldTicket,
        tx: &Transaction,
        scheme: &str,
    ) -> Vec<(&'static str, String)> {
        let existing = cookie(req, GRANT_COOKIE);
        let Some(grant) = self.state.stepup.grant_for(ticket, tx, existing) else {
            return Vec::new();
        };
        let secure = if scheme == "https" { "; Secure" } else { "" };
        vec![
            (
                "set-cookie",
                format!(
                    "{GRANT_COOKIE}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
                    grant.list,
                    grant.max_age.as_secs()
                ),
            ),
            ("stepgate-grant", grant.token),
        ]
    }
}

/// A protected request read whole: what is held, the message the user is shown, and what its
/// approval is bound to (with `require.bind`).
struct Prepared {
    original: OriginalRequest,
    message: Option<String>,
    bound: Option<Bound>,
}

/// Answers a request whose body could not be read for holding (too large, unreadable).
async fn refuse_unread(
    session: &mut Session,
    ctx: &mut Ctx,
    refusal: &Refusal,
    html: bool,
) -> pingora::Result<()> {
    ctx.decision = if *refusal == Refusal::TooLarge {
        "too_large"
    } else {
        "invalid"
    };
    send(session, Reply::refusal(refusal, html)).await
}

/// What a failed start or lookup tells the client.
fn refusal_for(error: &StepUpError) -> Refusal {
    match error {
        StepUpError::NoUsableMethod(_) | StepUpError::NoPhoneNumber => Refusal::StepUpUnavailable,
        StepUpError::RateLimited { retry_after, .. } => Refusal::RateLimited(*retry_after),
        StepUpError::SendFailed(_) => Refusal::DeliveryFailed,
        StepUpError::DestinationRefused => Refusal::DestinationRefused,
        StepUpError::UnknownTransaction => Refusal::UnknownTransaction,
        StepUpError::Blocked(Refused {
            block: Block::Busy { .. },
            retry_after,
        }) => Refusal::RateLimited(*retry_after),
        StepUpError::Blocked(Refused {
            block: Block::TooManyPending { .. } | Block::TooManyHeld { .. },
            retry_after,
        }) => Refusal::TooManyPending(*retry_after),
        StepUpError::Blocked(refused) if refused.is_lock() => {
            Refusal::AccountLocked(refused.retry_after)
        }
        StepUpError::Blocked(refused) => Refusal::PushHeldBack(refused.retry_after),
        StepUpError::Store(_) => Refusal::Unavailable,
    }
}

pub(crate) fn tx_path(tx: &Transaction) -> String {
    format!("{PREFIX}tx/{}", tx.id)
}

/// The binding cookie is scoped to its transaction's pages, so several step-ups can run side by
/// side in one browser.
pub(crate) fn binding_cookie(challenge: &Challenge, scheme: &str) -> String {
    let secure = if scheme == "https" { "; Secure" } else { "" };
    let max_age = challenge
        .transaction
        .expires_at
        .millis()
        .saturating_sub(challenge.transaction.created_at.millis())
        / 1000
        + 60;
    format!(
        "{BINDING_COOKIE}={}; Path={}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}",
        challenge.binding_token,
        tx_path(&challenge.transaction)
    )
}

pub(crate) fn time_to_live(tx: &Transaction, now: crate::domain::clock::Timestamp) -> u64 {
    tx.expires_at.millis().saturating_sub(now.millis())
}

/// Browsers go to the interstitial page; API clients get 401 with what they need to finish.
fn challenge_reply(challenge: &Challenge, scheme: &str, html: bool) -> Reply {
    let tx = &challenge.transaction;
    let base = tx_path(tx);
    let cookie = binding_cookie(challenge, scheme);
    if html {
        return Reply::redirect(&base).with_header("set-cookie", cookie);
    }
    let ttl = tx
        .expires_at
        .millis()
        .saturating_sub(tx.created_at.millis());
    let mut body = json!({
        "error": "step_up_required",
        "transaction_id": tx.id.to_string(),
        "auth_method": tx.method.as_str(),
        "time_to_live": ttl,
        "binding_token": challenge.binding_token,
        "status_uri": format!("{base}/status"),
        "verify_uri": format!("{base}/verify"),
        "complete_uri": format!("{base}/complete"),
        "number": tx.details.number,
        "number_matching": number_matching(tx),
    });
    // OTP: the code for the user's phone (to show as a QR code of the deep link).
    if let Some(otp) = &challenge.otp {
        body["otp"] = json!(otp.code);
        body["deep_link"] = json!(otp.deep_link);
    }
    Reply::json(401, &body)
        .with_header(
            "www-authenticate",
            format!("StepUp transaction_id=\"{}\"", tx.id),
        )
        .with_header("set-cookie", cookie)
}

/// How the user answers `number` on the phone: `type`, `pick`, or `null` without number
/// matching (for the challenge and status JSON).
pub(crate) fn number_matching(tx: &Transaction) -> Option<&'static str> {
    tx.number_matching()
        .map(crate::domain::auth_type::NumberMatching::as_str)
}

/// Waiting longer than this in one status poll is cut short; clients poll again.
pub(crate) const MAX_STATUS_WAIT: Duration = Duration::from_secs(30);

pub(crate) fn bytes_to_pairs(body: &Bytes) -> Option<Vec<(String, String)>> {
    serde_urlencoded::from_bytes(body).ok()
}
