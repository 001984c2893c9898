//! The one table from proxy outcomes to responses (status, JSON error body, page), and the
//! writer that puts a response on the wire. Clients get generic answers (an unknown, foreign or
//! finished transaction all read the same); the cause goes to the log.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::{Value, json};

use super::pages;
use crate::domain::canonical::Unreadable;

/// Why the proxy answered a request itself instead of forwarding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request cannot be made sense of (bad path escapes, bad form).
    BadRequest(&'static str),
    /// The request's host, path or method cannot be read one way only.
    Unreadable(Unreadable),
    /// The request can be read two ways (two credentials, duplicated fields of the message or
    /// the signed data, an unparsable content type): refused before anything is sent.
    Ambiguous(&'static str),
    /// A protected route without an identity.
    NoIdentity,
    /// A policy says deny.
    Denied,
    /// No such transaction, or not this user's or this client's, or no longer held.
    UnknownTransaction,
    /// The body is larger than `proxy.max_held_body_bytes`.
    TooLarge,
    /// The policy's method cannot run for this user (no phone number, no enrolled app).
    StepUpUnavailable,
    RateLimited(Duration),
    /// Too many failed confirmations in a row: the account guard's lock, until it opens.
    AccountLocked(Duration),
    /// Push is held back for the user (too many unanswered pushes, or "this wasn't me") and
    /// nothing else could run.
    PushHeldBack(Duration),
    /// The user has as many step-ups pending, or requests held, as allowed.
    TooManyPending(Duration),
    /// The SMS-pumping guard refuses the user's phone number as a destination.
    DestinationRefused,
    /// The SMS gateway refused or failed.
    DeliveryFailed,
    /// The store is unreachable: protected routes fail closed.
    Unavailable,
    /// A browser form without the right CSRF token.
    Forbidden,
    /// The transaction ended without approval (`expired`, `failed`, `denied`).
    NotApproved(&'static str),
    /// The held request was already forwarded.
    AlreadyCompleted,
    /// The transaction is still waiting for approval.
    Pending,
    /// The upstream could not be reached or broke off.
    UpstreamFailed,
    /// The gate stops while a hold-mode request waits: the request stays held, and the user
    /// finishes it at `/.stepgate/pending` (on any gate).
    Restarting,
    MethodNotAllowed,
    NotFound,
}

impl Refusal {
    /// Status, error code, page title, explanation.
    fn spec(&self) -> (u16, &'static str, &'static str, String) {
        match self {
            Refusal::BadRequest(what) => (400, "invalid_request", "Bad request", format!("The request could not be read: {what}.")),
            Refusal::Unreadable(why) => (400, "invalid_request", "Bad request", format!("The request could not be read: {why}.")),
            Refusal::Ambiguous(what) => (400, "ambiguous_request", "Ambiguous request", format!("The request can be read more than one way: {what}.")),
            Refusal::NoIdentity => (401, "login_required", "Sign in first", "This page needs you to be signed in.".to_owned()),
            Refusal::Denied => (403, "forbidden", "Not allowed", "This request is not allowed.".to_owned()),
            Refusal::UnknownTransaction => (404, "not_found", "Unknown confirmation", "This confirmation does not exist or has ended.".to_owned()),
            Refusal::TooLarge => (413, "payload_too_large", "Request too large", "The request is too large to be confirmed.".to_owned()),
            Refusal::StepUpUnavailable => (403, "step_up_unavailable", "Cannot confirm", "This request needs a confirmation that cannot be done for your account (no phone number or app).".to_owned()),
            Refusal::RateLimited(_) => (429, "too_many_requests", "Too many requests", "Too many codes were requested. Try again later.".to_owned()),
            Refusal::AccountLocked(_) => (429, "account_locked", "Confirmations locked", "Too many confirmations failed in a row, so confirmations are locked for your account for a while. Try again later, or ask the helpdesk to unlock it.".to_owned()),
            Refusal::TooManyPending(_) => (429, "too_many_pending", "Too many confirmations waiting", "You have too many confirmations waiting. Finish one, or try again when one has expired.".to_owned()),
            Refusal::PushHeldBack(_) => (429, "push_held_back", "Too many requests", "Too many confirmation requests were sent to your phone. Try again later.".to_owned()),
            Refusal::DestinationRefused => (403, "destination_refused", "Cannot send a code", "Confirmation codes cannot be sent to your phone number. Contact the helpdesk.".to_owned()),
            Refusal::DeliveryFailed => (502, "delivery_failed", "Code not sent", "The confirmation code could not be sent. Try again in a moment.".to_owned()),
            Refusal::Unavailable => (503, "temporarily_unavailable", "Temporarily unavailable", "Confirmations are temporarily unavailable. Try again in a minute.".to_owned()),
            Refusal::Forbidden => (403, "forbidden", "Not allowed", "This form is not valid here; reload the page.".to_owned()),
            Refusal::NotApproved(status) => (401, "step_up_failed", "Not confirmed", format!("The confirmation was not given ({status}). Start again.")),
            Refusal::AlreadyCompleted => (409, "already_completed", "Already done", "This request was already sent.".to_owned()),
            Refusal::Pending => (409, "pending", "Waiting", "The confirmation is still pending.".to_owned()),
            Refusal::Restarting => (503, "gateway_restarting", "Please continue elsewhere", "The gateway is restarting. Your request is kept: confirm it, then continue it at /.stepgate/pending.".to_owned()),
            Refusal::UpstreamFailed => (502, "bad_gateway", "Service unavailable", "The application did not answer. Try again in a moment.".to_owned()),
            Refusal::MethodNotAllowed => (405, "method_not_allowed", "Not allowed", "This method is not allowed here.".to_owned()),
            Refusal::NotFound => (404, "not_found", "Not found", "There is nothing here.".to_owned()),
        }
    }

    pub fn status(&self) -> u16 {
        self.spec().0
    }
}

/// A complete response the proxy writes itself.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: Bytes::from(value.to_string()),
        }
    }

    pub fn html(status: u16, page: String) -> Self {
        Self {
            status,
            headers: vec![
                ("content-type", "text/html; charset=utf-8".to_owned()),
                (
                    "content-security-policy",
                    pages::CONTENT_SECURITY_POLICY.to_owned(),
                ),
                ("x-frame-options", "DENY".to_owned()),
                ("referrer-policy", "same-origin".to_owned()),
            ],
            body: Bytes::from(page),
        }
    }

    pub fn redirect(location: &str) -> Self {
        Self {
            status: 303,
            headers: vec![("location", location.to_owned())],
            body: Bytes::new(),
        }
    }

    pub fn asset(content_type: &'static str, body: &'static str) -> Self {
        Self {
            status: 200,
            headers: vec![
                ("content-type", content_type.to_owned()),
                ("cache-control", "public, max-age=3600".to_owned()),
            ],
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn refusal(refusal: &Refusal, html: bool) -> Self {
        let (status, code, title, detail) = refusal.spec();
        let reply = if html {
            Reply::html(status, pages::message_page(title, &detail))
        } else {
            Reply::json(
                status,
                &json!({ "error": code, "error_description": detail }),
            )
        };
        match refusal {
            Refusal::RateLimited(after)
            | Refusal::AccountLocked(after)
            | Refusal::PushHeldBack(after)
            | Refusal::TooManyPending(after) => {
                let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
                reply.with_header("retry-after", seconds.max(1).to_string())
            }
            Refusal::Unavailable => reply.with_header("retry-after", "5".to_owned()),
            Refusal::Restarting => reply.with_header("retry-after", "1".to_owned()),
            _ => reply,
        }
    }
}

/// Writes `reply`; every answer of stepgate's own is uncacheable and unsniffable.
pub async fn send(session: &mut Session, reply: Reply) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(reply.status, Some(reply.headers.len() + 4))?;
    let has_cache_control = reply
        .headers
        .iter()
        .any(|(name, _)| *name == "cache-control");
    for (name, value) in reply.headers {
        header.append_header(name, value)?;
    }
    if !has_cache_control {
        header.insert_header("cache-control", "no-store")?;
    }
    header.insert_header("x-content-type-options", "nosniff")?;
    header.insert_header("content-length", reply.body.len().to_string())?;
    let empty = reply.body.is_empty();
    session
        .write_response_header(Box::new(header), empty)
        .await?;
    if !empty {
        session.write_response_body(Some(reply.body), true).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_have_json_and_pages_without_leaking_details() {
        let reply = Reply::refusal(&Refusal::UnknownTransaction, false);
        assert_eq!(reply.status, 404);
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"], "not_found");
        let page = Reply::refusal(&Refusal::Unavailable, true);
        assert_eq!(page.status, 503);
        assert!(
            page.headers
                .iter()
                .any(|(n, v)| *n == "retry-after" && v == "5")
        );
        assert!(String::from_utf8_lossy(&page.body).contains("<!doctype html>"));
    }

    #[test]
    fn rate_limits_carry_retry_after() {
        let reply = Reply::refusal(&Refusal::RateLimited(Duration::from_secs(90)), false);
        assert_eq!(reply.status, 429);
        assert!(
            reply
                .headers
                .iter()
                .any(|(n, v)| *n == "retry-after" && v == "90")
        );
    }
}
