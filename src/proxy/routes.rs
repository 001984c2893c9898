//! stepgate's own endpoints under `/.stepgate/`: the interstitial page of a transaction, its
//! status (long poll), code verification, resend and completion, the user's pending hold-mode
//! request, and the page assets. Everything but the assets needs the user's identity; a
//! challenge-mode transaction also needs the binding token of the client that started it, and
//! browser forms a CSRF token.

use std::time::Duration;

use bytes::Bytes;
use pingora::proxy::Session;
use serde_json::json;

use super::facts::{BINDING_COOKIE, BINDING_HEADER, cookie, header, wants_html};
use super::pages::{self, ChallengeView, PageMethod};
use super::respond::{Refusal, Reply, send};
use super::{Ctx, MAX_STATUS_WAIT, PREFIX, StepGateProxy, number_matching, time_to_live, tx_path};
use crate::domain::auth_type::Method;
use crate::domain::held::{HeldMode, HeldTicket};
use crate::domain::regulation::{ResendOutcome, VerifyOutcome};
use crate::domain::transaction::{Status, Transaction, TransactionId};
use crate::service::stepup::{Requester, StepUpError};

/// Form posts to stepgate's endpoints are small.
const MAX_FORM_BYTES: usize = 8 * 1024;

enum Route {
    Asset(&'static str, &'static str),
    /// The step-up assertion's public key (`proxy.assertion`), for the app behind.
    Jwks,
    Pending,
    Page(TransactionId),
    Status(TransactionId),
    Verify(TransactionId),
    Resend(TransactionId),
    Complete(TransactionId),
}

fn route(method: &str, path: &str) -> Result<Route, Refusal> {
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').collect();
    let get = method == "GET" || method == "HEAD";
    let post = method == "POST";
    let tx = |id: &str| {
        id.parse::<TransactionId>()
            .map_err(|_| Refusal::UnknownTransaction)
    };
    match segments.as_slice() {
        ["assets", "stepgate.js"] if get => Ok(Route::Asset(
            "text/javascript; charset=utf-8",
            pages::SCRIPT,
        )),
        ["assets", "stepgate.css"] if get => {
            Ok(Route::Asset("text/css; charset=utf-8", pages::STYLE))
        }
        ["jwks.json"] if get => Ok(Route::Jwks),
        ["pending"] if get => Ok(Route::Pending),
        ["tx", id] if get => Ok(Route::Page(tx(id)?)),
        ["tx", id, "status"] if get => Ok(Route::Status(tx(id)?)),
        ["tx", id, "verify"] if post => Ok(Route::Verify(tx(id)?)),
        ["tx", id, "resend"] if post => Ok(Route::Resend(tx(id)?)),
        ["tx", id, "complete"] if post => Ok(Route::Complete(tx(id)?)),
        ["assets", _]
        | ["jwks.json"]
        | ["pending"]
        | ["tx", _]
        | ["tx", _, "status" | "verify" | "resend" | "complete"] => Err(Refusal::MethodNotAllowed),
        _ => Err(Refusal::NotFound),
    }
}

/// How the client proved it started the transaction, and whether its form needs a CSRF token.
struct Binding {
    token: Option<String>,
    /// From a cookie: browsers, whose form posts must carry the CSRF token.
    from_cookie: bool,
}

fn binding(session: &Session) -> Binding {
    let req = session.req_header();
    match header(req, BINDING_HEADER) {
        Some(token) => Binding {
            token: Some(token.to_owned()),
            from_cookie: false,
        },
        None => Binding {
            token: cookie(req, BINDING_COOKIE).map(str::to_owned),
            from_cookie: true,
        },
    }
}

pub(super) async fn handle(
    proxy: &StepGateProxy,
    session: &mut Session,
    ctx: &mut Ctx,
) -> pingora::Result<()> {
    let html = wants_html(session.req_header());
    let req = session.req_header();
    let route = match route(req.method.as_str(), req.uri.path()) {
        Ok(route) => route,
        Err(refusal) => return send(session, Reply::refusal(&refusal, html)).await,
    };
    if let Route::Asset(content_type, body) = route {
        return send(session, Reply::asset(content_type, body)).await;
    }
    if let Route::Jwks = route {
        let reply = match proxy.state.stepup.assertion_jwks() {
            Some(jwks) => Reply::json(200, &jwks),
            None => Reply::refusal(&Refusal::NotFound, html),
        };
        return send(session, reply).await;
    }
    let mut requester = match proxy.identify(session, ctx).await {
        Ok(requester) => requester,
        Err(reply) => return send(session, reply).await,
    };
    // A resend sends a code: its SMS quota counts the client's address.
    if matches!(route, Route::Resend(_)) {
        requester.client_ip = proxy.client_ip(session, ctx);
    }
    let handler = Handler {
        proxy,
        requester,
        html,
    };
    match route {
        Route::Asset(..) | Route::Jwks => Ok(()),
        Route::Pending => handler.pending(session).await,
        Route::Page(id) => handler.page(session, id).await,
        Route::Status(id) => handler.status(session, id).await,
        Route::Verify(id) => handler.verify(session, ctx, id).await,
        Route::Resend(id) => handler.resend(session, id).await,
        Route::Complete(id) => handler.complete(session, ctx, id).await,
    }
}

struct Handler<'a> {
    proxy: &'a StepGateProxy,
    requester: Requester,
    html: bool,
}

impl Handler<'_> {
    async fn refuse(&self, session: &mut Session, refusal: Refusal) -> pingora::Result<()> {
        send(session, Reply::refusal(&refusal, self.html)).await
    }

    async fn fail(&self, session: &mut Session, error: StepUpError) -> pingora::Result<()> {
        if matches!(error, StepUpError::Store(_)) {
            tracing::warn!(%error, "store unavailable on a step-up page");
        }
        self.refuse(session, super::refusal_for(&error)).await
    }

    /// The ticket and the transaction, when this user and client may see them.
    async fn lookup(
        &self,
        id: &TransactionId,
        binding: &Binding,
    ) -> Result<(HeldTicket, Transaction), StepUpError> {
        let stepup = &self.proxy.state.stepup;
        let ticket = stepup
            .ticket(id, &self.requester, binding.token.as_deref())
            .await?;
        let tx = stepup.transaction(id, &self.requester).await?;
        Ok((ticket, tx))
    }

    /// The CSRF token for this transaction's forms: bound to the binding token, or to the user
    /// for hold-mode requests (any session of the user may approve those).
    fn csrf(&self, id: &TransactionId, ticket: &HeldTicket, binding: &Binding) -> String {
        let input = self.csrf_input(ticket, binding);
        self.proxy.state.stepup.csrf_token(id, &input)
    }

    fn csrf_input(&self, ticket: &HeldTicket, binding: &Binding) -> String {
        match (ticket.mode, &binding.token) {
            (HeldMode::Challenge, Some(token)) => token.clone(),
            _ => format!("hold:{}", self.requester.user_id),
        }
    }

    async fn pending(&self, session: &mut Session) -> pingora::Result<()> {
        let stepup = &self.proxy.state.stepup;
        match stepup.latest_held(&self.requester).await {
            Ok(Some(id)) => {
                let base = format!("{PREFIX}tx/{id}");
                let reply = if self.html {
                    Reply::redirect(&base)
                } else {
                    // Number matching: the waiting request's number, for this other screen.
                    let tx = match stepup.transaction(&id, &self.requester).await {
                        Ok(tx) => tx,
                        Err(error) => return self.fail(session, error).await,
                    };
                    Reply::json(
                        200,
                        &json!({
                            "transaction_id": id.to_string(),
                            "status": tx.status.as_str(),
                            "status_uri": format!("{base}/status"),
                            "verify_uri": format!("{base}/verify"),
                            "complete_uri": format!("{base}/complete"),
                            "number": tx.details.number,
                            "number_matching": number_matching(&tx),
                        }),
                    )
                };
                send(session, reply).await
            }
            Ok(None) => self.refuse(session, Refusal::UnknownTransaction).await,
            Err(error) => self.fail(session, error).await,
        }
    }

    async fn page(&self, session: &mut Session, id: TransactionId) -> pingora::Result<()> {
        let binding = binding(session);
        let (ticket, tx) = match self.lookup(&id, &binding).await {
            Ok(found) => found,
            Err(error) => return self.fail(session, error).await,
        };
        // OTP: the code is rebuilt for this client (never stored), so a reload shows it again.
        let otp = self
            .proxy
            .state
            .stepup
            .otp_display(&tx, &ticket, binding.token.as_deref());
        if !self.html {
            let mut body = self.status_body(&tx);
            if let Some(otp) = &otp {
                body["otp"] = json!(otp.code);
                body["deep_link"] = json!(otp.deep_link);
            }
            return send(session, Reply::json(200, &body)).await;
        }
        let csrf = self.csrf(&id, &ticket, &binding);
        let otp_link = otp.as_ref().map(|otp| otp.deep_link.as_str());
        self.render(session, &tx, &ticket, &csrf, None, otp_link)
            .await
    }

    async fn render(
        &self,
        session: &mut Session,
        tx: &Transaction,
        ticket: &HeldTicket,
        csrf: &str,
        error: Option<&str>,
        otp_link: Option<&str>,
    ) -> pingora::Result<()> {
        if tx.status == Status::Approved
            && ticket.mode == HeldMode::Hold
            && !self
                .proxy
                .state
                .stepup
                .is_waited_on(&tx.id)
                .await
                .unwrap_or(false)
        {
            // Approved while nobody waited for it: it continues from here.
            let page = pages::continue_page(&tx_path(tx), csrf);
            return send(session, Reply::html(200, page)).await;
        }
        if tx.status != Status::Pending {
            return self
                .refuse(session, Refusal::NotApproved(tx.status.as_str()))
                .await;
        }
        let now = self.proxy.state.stepup.now();
        let id = tx.id.to_string();
        let view = ChallengeView {
            transaction_id: &id,
            method: page_method(tx.method),
            message: ticket.message.as_deref(),
            seconds_left: time_to_live(tx, now) / 1000,
            csrf,
            error,
            can_resend: tx.method == Method::Sms && tx.resends < tx.max_resends,
            otp_link,
            hold_mode: ticket.mode == HeldMode::Hold,
            number: tx.details.number,
            number_typed: tx.details.number_typed,
        };
        send(session, Reply::html(200, pages::challenge_page(&view))).await
    }

    fn status_body(&self, tx: &Transaction) -> serde_json::Value {
        let now = self.proxy.state.stepup.now();
        let base = tx_path(tx);
        json!({
            "transaction_id": tx.id.to_string(),
            "status": tx.status.as_str(),
            "auth_method": tx.method.as_str(),
            "time_to_live": time_to_live(tx, now),
            "status_uri": format!("{base}/status"),
            "verify_uri": format!("{base}/verify"),
            "complete_uri": format!("{base}/complete"),
            "number": tx.details.number,
            "number_matching": number_matching(tx),
        })
    }

    async fn status(&self, session: &mut Session, id: TransactionId) -> pingora::Result<()> {
        let binding = binding(session);
        if let Err(error) = self.lookup(&id, &binding).await {
            return self.fail(session, error).await;
        }
        let wait = session
            .req_header()
            .uri
            .query()
            .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
            .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == "wait"))
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_secs)
            .min(MAX_STATUS_WAIT);
        let stepup = &self.proxy.state.stepup;
        match stepup.wait_for_decision(&id, &self.requester, wait).await {
            Ok(tx) => send(session, Reply::json(200, &self.status_body(&tx))).await,
            Err(error) => self.fail(session, error).await,
        }
    }

    /// Reads a small form (urlencoded) or JSON object body; checks the CSRF token when the
    /// client is a browser posting a form.
    async fn read_form(
        &self,
        session: &mut Session,
        id: &TransactionId,
        ticket: &HeldTicket,
        binding: &Binding,
    ) -> pingora::Result<Result<Vec<(String, String)>, Refusal>> {
        let mut body = Vec::new();
        while let Some(chunk) = session.read_request_body().await? {
            if body.len() + chunk.len() > MAX_FORM_BYTES {
                return Ok(Err(Refusal::TooLarge));
            }
            body.extend_from_slice(&chunk);
        }
        let content_type = header(session.req_header(), "content-type")
            .unwrap_or_default()
            .to_ascii_lowercase();
        if content_type.starts_with("application/json") {
            let Ok(serde_json::Value::Object(map)) =
                serde_json::from_slice::<serde_json::Value>(&body)
            else {
                return Ok(Err(Refusal::BadRequest("the body is not a JSON object")));
            };
            let pairs = map
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                .collect();
            return Ok(Ok(pairs));
        }
        if !(content_type.is_empty()
            || content_type.starts_with("application/x-www-form-urlencoded"))
        {
            return Ok(Err(Refusal::BadRequest(
                "expected a urlencoded form or JSON",
            )));
        }
        let Some(pairs) = super::bytes_to_pairs(&Bytes::from(body)) else {
            return Ok(Err(Refusal::BadRequest("the form is malformed")));
        };
        // A form post without the binding header can come from a browser, so it must carry the
        // token only our page knows (a cross-site page can neither read it nor set the header).
        if binding.from_cookie || binding.token.is_none() {
            let input = self.csrf_input(ticket, binding);
            let csrf = pairs
                .iter()
                .find(|(k, _)| k == "csrf")
                .map(|(_, v)| v.as_str())
                .unwrap_or_default();
            if !self.proxy.state.stepup.csrf_matches(id, &input, csrf) {
                return Ok(Err(Refusal::Forbidden));
            }
        }
        Ok(Ok(pairs))
    }

    async fn verify(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        id: TransactionId,
    ) -> pingora::Result<()> {
        let binding = binding(session);
        let (ticket, tx) = match self.lookup(&id, &binding).await {
            Ok(found) => found,
            Err(error) => return self.fail(session, error).await,
        };
        let form = match self.read_form(session, &id, &ticket, &binding).await? {
            Ok(form) => form,
            Err(refusal) => return self.refuse(session, refusal).await,
        };
        let code = form
            .iter()
            .find(|(k, _)| k == "sms_code")
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let stepup = &self.proxy.state.stepup;
        let outcome = match stepup.verify(&id, &self.requester, &code).await {
            Ok(outcome) => outcome,
            Err(error) => return self.fail(session, error).await,
        };
        match outcome {
            VerifyOutcome::Approved { .. } | VerifyOutcome::NotPending(Status::Approved) => {
                self.approved(session, ctx, &tx, &ticket).await
            }
            VerifyOutcome::WrongCode { remaining, .. } => {
                let error = match remaining {
                    Some(1) => "Wrong code. 1 attempt left.".to_owned(),
                    Some(n) => format!("Wrong code. {n} attempts left."),
                    None => "Wrong code.".to_owned(),
                };
                if self.html {
                    let csrf = self.csrf(&id, &ticket, &binding);
                    let tx = Transaction {
                        attempts: tx.attempts + 1,
                        ..tx
                    };
                    return self
                        .render(session, &tx, &ticket, &csrf, Some(&error), None)
                        .await;
                }
                let body = json!({
                    "error": "invalid_code",
                    "error_description": error,
                    "attempts_remaining": remaining,
                });
                send(session, Reply::json(401, &body)).await
            }
            VerifyOutcome::Exhausted { .. } => {
                self.refuse(session, Refusal::NotApproved("failed")).await
            }
            VerifyOutcome::Expired => self.refuse(session, Refusal::NotApproved("expired")).await,
            VerifyOutcome::NotPending(status) => {
                self.refuse(session, Refusal::NotApproved(status.as_str()))
                    .await
            }
            VerifyOutcome::NoCode => {
                self.refuse(
                    session,
                    Refusal::BadRequest("this confirmation takes no code"),
                )
                .await
            }
        }
    }

    /// The transaction is approved: a challenge-mode request goes upstream now, from this
    /// connection; a hold-mode one is sent by its waiting connection.
    async fn approved(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        tx: &Transaction,
        ticket: &HeldTicket,
    ) -> pingora::Result<()> {
        match ticket.mode {
            HeldMode::Challenge => {
                self.proxy
                    .release_and_forward(session, ctx, tx, self.html)
                    .await
            }
            HeldMode::Hold => {
                let stepup = &self.proxy.state.stepup;
                // Nobody waits for it any more (its connection closed, its gate stopped): it
                // is forwarded here, to this client, once. Unknown: tried here too, since only
                // one taker ever gets the held request.
                if !stepup.is_waited_on(&tx.id).await.unwrap_or(false) {
                    return self
                        .proxy
                        .release_and_forward(session, ctx, tx, self.html)
                        .await;
                }
                let reply = if self.html {
                    Reply::html(
                        200,
                        pages::message_page(
                            "Confirmed",
                            "Your request continues by itself; you can close this page.",
                        ),
                    )
                } else {
                    Reply::json(
                        200,
                        &json!({ "transaction_id": tx.id.to_string(), "status": "approved" }),
                    )
                };
                send(session, reply).await
            }
        }
    }

    async fn resend(&self, session: &mut Session, id: TransactionId) -> pingora::Result<()> {
        let binding = binding(session);
        let (ticket, _) = match self.lookup(&id, &binding).await {
            Ok(found) => found,
            Err(error) => return self.fail(session, error).await,
        };
        if let Err(refusal) = self.read_form(session, &id, &ticket, &binding).await? {
            return self.refuse(session, refusal).await;
        }
        match self.proxy.state.stepup.resend(&id, &self.requester).await {
            Ok(Ok(())) if self.html => {
                send(session, Reply::redirect(&format!("{PREFIX}tx/{id}"))).await
            }
            Ok(Ok(())) => send(session, Reply::json(202, &json!({ "status": "resent" }))).await,
            Ok(Err(refused)) => {
                let why = match refused {
                    ResendOutcome::LimitReached | ResendOutcome::Disabled => {
                        "No more codes can be sent for this confirmation."
                    }
                    _ => "This confirmation has ended.",
                };
                let body = json!({ "error": "resend_refused", "error_description": why });
                if self.html {
                    send(
                        session,
                        Reply::html(409, pages::message_page("No new code", why)),
                    )
                    .await
                } else {
                    send(session, Reply::json(409, &body)).await
                }
            }
            Err(error) => self.fail(session, error).await,
        }
    }

    async fn complete(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        id: TransactionId,
    ) -> pingora::Result<()> {
        let binding = binding(session);
        let (ticket, tx) = match self.lookup(&id, &binding).await {
            Ok(found) => found,
            Err(error) => return self.fail(session, error).await,
        };
        if let Err(refusal) = self.read_form(session, &id, &ticket, &binding).await? {
            return self.refuse(session, refusal).await;
        }
        match tx.status {
            Status::Approved => self.approved(session, ctx, &tx, &ticket).await,
            Status::Pending if self.html => send(session, Reply::redirect(&tx_path(&tx))).await,
            Status::Pending => self.refuse(session, Refusal::Pending).await,
            other => {
                self.refuse(session, Refusal::NotApproved(other.as_str()))
                    .await
            }
        }
    }
}

fn page_method(method: Method) -> PageMethod {
    match method {
        Method::Sms => PageMethod::Sms,
        Method::Otp => PageMethod::Otp,
        _ => PageMethod::Push,
    }
}
