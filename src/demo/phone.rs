//! The demo user's phone: a browser page that stands for the bank's phone app, so `stepgate
//! demo` shows a push approval with typed number matching, and the transfer details the phone
//! signs, without a real phone. At start it enrolls itself for the demo user as the app would:
//! the portal's one-time code from the End User API, `POST /device/v1/enroll`, then a push
//! registration on the console push provider. From then on every action is the reference phone
//! client (`device::Phone`) over the signed device API: list the pending pushes, fetch and
//! decrypt one, answer it with the number the user typed.
//!
//! Routes: `GET /` (status and pending pushes; refreshes itself), `GET /tx/{id}` (what the user
//! approves, the number field), `POST /tx/{id}` (approve, deny, or "this wasn't me"),
//! `GET /style.css`. Forms carry a per-run token, so another site cannot answer for the user.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::pages::escape;
use super::{Background, ServerThread, spawn_server};
use crate::device::{PendingTransaction, Phone, Secret, Shown};

/// How the phone enrolls: the gateway's API, the portal's End User API client, and who it is.
#[derive(Clone)]
pub struct PhoneSetup {
    /// The gateway's API listener, e.g. `http://127.0.0.1:8081`.
    pub api: String,
    /// An API client with `apis: [end_user]`, for the one-time enrollment code.
    pub portal_client_id: String,
    pub portal_client_secret: String,
    pub user_id: String,
    /// `applications[].id` and one of its android versions (on a console push config).
    pub application: String,
    pub version: String,
    /// The phone's key store: a directory that must not exist yet.
    pub state: PathBuf,
    /// The random value every form of this run carries.
    pub form_token: String,
}

impl std::fmt::Debug for PhoneSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneSetup")
            .field("api", &self.api)
            .field("user_id", &self.user_id)
            .field("application", &self.application)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Enrolling waits this long for the gateway's API to come up.
const API_WAIT: Duration = Duration::from_secs(60);

enum Enrollment {
    Enrolling,
    Failed(String),
}

struct PhoneApp {
    setup: PhoneSetup,
    phone: OnceLock<Phone>,
    /// Until `phone` is set: still enrolling, or why it failed.
    enrollment: Mutex<Enrollment>,
}

type Shared = Arc<PhoneApp>;

/// Starts the phone on `listener` in a new thread; it enrolls itself in the background.
pub fn spawn(listener: std::net::TcpListener, setup: PhoneSetup) -> std::io::Result<ServerThread> {
    spawn_server("demo-phone", listener, move || {
        let app = Arc::new(PhoneApp {
            setup,
            phone: OnceLock::new(),
            enrollment: Mutex::new(Enrollment::Enrolling),
        });
        let background: Background = Box::pin(enroll_in_background(app.clone()));
        (router(app), Some(background))
    })
}

fn router(app: Shared) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/tx/{id}", get(show).post(answer))
        .route("/style.css", get(style))
        .with_state(app)
}

async fn enroll_in_background(app: Shared) {
    match enroll(&app.setup).await {
        Ok(phone) => {
            tracing::info!(user = %app.setup.user_id, "demo phone enrolled");
            let _ = app.phone.set(phone);
        }
        Err(reason) => {
            tracing::error!(%reason, "the demo phone could not enroll");
            *app.enrollment
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Enrollment::Failed(reason);
        }
    }
}

/// The portal's part (an enrollment code for the user), then the app's (enroll, register).
async fn enroll(setup: &PhoneSetup) -> Result<Phone, String> {
    // reqwest is built without a rustls provider (stepgate uses ring); plain HTTP here, but the
    // client wants one in place.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| error.to_string())?;
    let api = setup.api.trim_end_matches('/');
    let deadline = Instant::now() + API_WAIT;
    loop {
        match http.get(format!("{api}/health")).send().await {
            Ok(response) if response.status().is_success() => break,
            _ if Instant::now() >= deadline => {
                return Err(format!("the gateway's API at {api} did not come up"));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let response = http
        .post(format!(
            "{api}/oauth/api/v4/users/{}/enrollment-codes",
            setup.user_id
        ))
        .basic_auth(&setup.portal_client_id, Some(&setup.portal_client_secret))
        .send()
        .await
        .map_err(|error| format!("asking for an enrollment code: {error}"))?;
    if response.status() != StatusCode::CREATED {
        return Err(format!(
            "asking for an enrollment code: HTTP {}",
            response.status()
        ));
    }
    let answer: serde_json::Value = response
        .json()
        .await
        .map_err(|error| format!("the enrollment code answer: {error}"))?;
    let code = answer["code"]
        .as_str()
        .ok_or("the enrollment code answer has no code")?;
    let phone = Phone::enroll(
        &setup.api,
        &setup.state,
        code,
        &setup.application,
        "Demo phone",
    )
    .await
    .map_err(|error| format!("enrolling: {error}"))?;
    let token = Secret::new(format!("demo-phone-{}", Uuid::new_v4().simple()));
    phone
        .register_push(&setup.version, &token)
        .await
        .map_err(|error| format!("registering for push: {error}"))?;
    Ok(phone)
}

impl PhoneApp {
    /// The enrolled phone, or why there is none yet.
    fn phone(&self) -> Result<&Phone, String> {
        if let Some(phone) = self.phone.get() {
            return Ok(phone);
        }
        Err(
            match &*self
                .enrollment
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
            {
                Enrollment::Enrolling => "This phone is enrolling with stepgate…".to_owned(),
                Enrollment::Failed(reason) => format!("This phone could not enroll: {reason}"),
            },
        )
    }
}

/// The page while the phone has not enrolled (it refreshes itself).
fn not_enrolled(status: &str) -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Phone",
        &format!(
            "<p id=\"status\" class=\"note\">{}</p>{REFRESH_LINK}",
            escape(status)
        ),
        true,
    )
}

const STYLE_EXTRA: &str = "\
main { max-width: 24rem; }
.message { font-size: 1.15rem; font-weight: 600; }
.signing { background: #eef4f7; border-left: 4px solid #0b4f6c; padding: 0.6rem 0.8rem; }
.actions button { margin-right: 0.6rem; }
button.deny { background: #6c757d; }
ul.pending { padding-left: 1.2rem; }
";

const REFRESH_LINK: &str = "<p class=\"note\"><a href=\"/\">Refresh</a></p>";

async fn style() -> Response {
    (
        [(CONTENT_TYPE, "text/css; charset=utf-8")],
        format!("{}{STYLE_EXTRA}", super::pages::STYLE),
    )
        .into_response()
}

/// One page of the phone; `refresh`: reloads itself every two seconds (the list, while
/// waiting for a push).
fn page(status: StatusCode, title: &str, body: &str, refresh: bool) -> Response {
    let refresh = if refresh {
        "<meta http-equiv=\"refresh\" content=\"2\">"
    } else {
        ""
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Demo phone: {title}</title><link rel=\"stylesheet\" href=\"/style.css\"></head>\
         <body><header><strong>Demo phone</strong><small>the bank's app, as stepgate's reference \
         phone client</small></header><main>{body}</main></body></html>\n",
        title = escape(title)
    );
    (
        status,
        [
            (CACHE_CONTROL, "no-store"),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'",
            ),
        ],
        Html(html),
    )
        .into_response()
}

fn error_page(status: StatusCode, text: &str) -> Response {
    page(
        status,
        "Error",
        &format!(
            "<p id=\"error\" class=\"error\">{}</p>{REFRESH_LINK}",
            escape(text)
        ),
        false,
    )
}

async fn home(State(app): State<Shared>) -> Response {
    let phone = match app.phone() {
        Ok(phone) => phone,
        Err(status) => return not_enrolled(&status),
    };
    let pending = match phone.pending().await {
        Ok(pending) => pending,
        Err(error) => {
            return error_page(
                StatusCode::BAD_GATEWAY,
                &format!("stepgate did not answer: {error}"),
            );
        }
    };
    let mut body = format!(
        "<h1>Approvals</h1><p id=\"status\" class=\"note\">Enrolled for <strong>{}</strong>. \
         Pushes from stepgate show up here; this page refreshes itself.</p>",
        escape(phone.user_id())
    );
    body.push_str(&pending_list(&pending));
    page(StatusCode::OK, "Approvals", &body, true)
}

fn pending_list(pending: &[PendingTransaction]) -> String {
    if pending.is_empty() {
        return "<p id=\"nothing\">Nothing to approve.</p>".to_owned();
    }
    let mut list = String::from("<ul class=\"pending\">");
    for transaction in pending {
        let Ok(id) = Uuid::parse_str(&transaction.transaction_id) else {
            continue;
        };
        let text = transaction
            .message
            .as_deref()
            .unwrap_or("A request to approve");
        list.push_str(&format!(
            "<li><a class=\"pending-push\" href=\"/tx/{id}\">{}</a></li>",
            escape(text)
        ));
    }
    list.push_str("</ul>");
    list
}

async fn show(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    let phone = match app.phone() {
        Ok(phone) => phone,
        Err(status) => return not_enrolled(&status),
    };
    let Ok(id) = Uuid::parse_str(&id) else {
        return error_page(StatusCode::NOT_FOUND, "No such request.");
    };
    match phone.show(id).await {
        Ok(shown) => page(
            StatusCode::OK,
            "Approve?",
            &question(&app.setup.form_token, id, &shown, None),
            false,
        ),
        Err(error) => error_page(
            StatusCode::BAD_GATEWAY,
            &format!("This request cannot be shown: {error}"),
        ),
    }
}

/// What the user is asked: the message, what the phone signs, the number, the three answers.
fn question(form_token: &str, id: Uuid, shown: &Shown, error: Option<&str>) -> String {
    let details = &shown.details;
    let mut body = String::from("<h1>Approve this request?</h1>");
    if let Some(error) = error {
        body.push_str(&format!(
            "<p id=\"error\" class=\"error\">{}</p>",
            escape(error)
        ));
    }
    if let Some(message) = &details.message {
        body.push_str(&format!(
            "<p id=\"message\" class=\"message\">{}</p>",
            escape(message)
        ));
    }
    if let Some(signing) = &shown.signing_data {
        // One bound value per line, as the gateway wrote them.
        let lines: Vec<String> = signing.lines().map(escape).collect();
        body.push_str(&format!(
            "<p class=\"note\">Approving signs exactly this, and nothing else:</p>\
             <p id=\"signing-data\" class=\"signing\">{}</p>",
            lines.join("<br>")
        ));
    }
    if let Some(secure) = &shown.secure_message {
        body.push_str(&format!(
            "<p id=\"secure-message\" class=\"note\">{}</p>",
            escape(secure)
        ));
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/tx/{id}\">\
         <input type=\"hidden\" name=\"token\" value=\"{}\">",
        escape(form_token)
    ));
    match (
        details.number_matching.as_deref(),
        details.number_choices.as_deref(),
    ) {
        (Some("pick"), Some(choices)) => {
            body.push_str("<p>Pick the number shown where you asked for this:</p>");
            for choice in choices {
                body.push_str(&format!(
                    "<label><input type=\"radio\" name=\"number\" value=\"{choice}\" required> \
                     {choice}</label>"
                ));
            }
        }
        (Some(_), _) => body.push_str(
            "<label for=\"number\">Type the number shown where you asked for this</label>\
             <input id=\"number\" name=\"number\" inputmode=\"numeric\" autocomplete=\"off\" \
             pattern=\"[0-9]{1,3}\" maxlength=\"3\" required autofocus>",
        ),
        (None, _) => {}
    }
    body.push_str(
        "<p class=\"actions\"><button id=\"approve\" name=\"decision\" value=\"approve\">Approve</button>\
         <button id=\"deny\" class=\"deny\" name=\"decision\" value=\"deny\" formnovalidate>Deny</button></p>\
         <p><button id=\"report\" class=\"link\" name=\"decision\" value=\"report\" formnovalidate>\
         I did not ask for this</button></p></form>",
    );
    body
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AnswerForm {
    token: String,
    decision: String,
    number: String,
}

async fn answer(
    State(app): State<Shared>,
    Path(id): Path<String>,
    Form(form): Form<AnswerForm>,
) -> Response {
    let phone = match app.phone() {
        Ok(phone) => phone,
        Err(status) => return not_enrolled(&status),
    };
    let Ok(id) = Uuid::parse_str(&id) else {
        return error_page(StatusCode::NOT_FOUND, "No such request.");
    };
    let expected = app.setup.form_token.as_bytes();
    if !bool::from(form.token.as_bytes().ct_eq(expected)) {
        return error_page(
            StatusCode::FORBIDDEN,
            "This answer did not come from the phone's own page.",
        );
    }
    let outcome = match form.decision.as_str() {
        "approve" => {
            let shown = match phone.show(id).await {
                Ok(shown) => shown,
                Err(error) => {
                    return error_page(
                        StatusCode::BAD_GATEWAY,
                        &format!("This request cannot be answered: {error}"),
                    );
                }
            };
            let number = match (shown.details.number_matching.is_some(), form.number.trim()) {
                (false, _) => None,
                (true, typed) => match typed.parse::<u8>() {
                    Ok(number) => Some(number),
                    Err(_) => {
                        let ask = question(
                            &app.setup.form_token,
                            id,
                            &shown,
                            Some("Type the number shown where you asked for this (digits only)."),
                        );
                        return page(StatusCode::BAD_REQUEST, "Approve?", &ask, false);
                    }
                },
            };
            phone.approve(id, number).await
        }
        "deny" => phone.deny(id, false).await,
        "report" => phone.deny(id, true).await,
        _ => return error_page(StatusCode::BAD_REQUEST, "Approve or deny."),
    };
    let (title, text) = match (form.decision.as_str(), outcome.as_deref()) {
        (_, Ok("approved")) => (
            "Approved",
            "Approved. Your browser continues by itself.".to_owned(),
        ),
        ("report", Ok(_)) => (
            "Reported",
            "Denied and reported: stepgate holds back push approvals for this account for a while."
                .to_owned(),
        ),
        (_, Ok("denied")) => ("Denied", "Denied.".to_owned()),
        (_, Ok("failed")) => (
            "Failed",
            "That is not the number shown: the request failed. Start again where you asked for it."
                .to_owned(),
        ),
        (_, Ok(other)) => ("Answered", format!("stepgate answered: {other}.")),
        (_, Err(error)) => ("Not accepted", format!("stepgate did not accept: {error}")),
    };
    page(
        StatusCode::OK,
        title,
        &format!(
            "<p id=\"outcome\" class=\"message\">{}</p>{REFRESH_LINK}",
            escape(&text)
        ),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::state::TransactionDetails;

    fn shown(number_matching: Option<&str>, choices: Option<Vec<u8>>) -> Shown {
        Shown {
            details: TransactionDetails {
                transaction_id: Uuid::nil(),
                auth_method: "push".into(),
                message: Some("Approve transfer of 10 <b>EUR</b>".into()),
                expires_at: None,
                number_choices: choices,
                number_matching: number_matching.map(str::to_owned),
                secure_message: None,
                signing_data: None,
            },
            secure_message: None,
            signing_data: Some("form.amount=10\nform.iban=NL91".into()),
        }
    }

    #[test]
    fn typed_number_matching_asks_for_the_number_and_offers_no_hint() {
        let html = question("tok", Uuid::nil(), &shown(Some("type"), None), None);
        assert!(html.contains("id=\"number\""), "{html}");
        assert!(!html.contains("type=\"radio\""), "{html}");
        assert!(html.contains("10 &lt;b&gt;EUR&lt;/b&gt;"), "{html}");
        assert!(html.contains("id=\"signing-data\""), "{html}");
        assert!(html.contains("name=\"token\" value=\"tok\""), "{html}");
    }

    #[test]
    fn picked_number_matching_offers_the_choices() {
        let html = question(
            "tok",
            Uuid::nil(),
            &shown(Some("pick"), Some(vec![12, 47, 83])),
            None,
        );
        for choice in ["12", "47", "83"] {
            assert!(
                html.contains(&format!("value=\"{choice}\" required")),
                "{html}"
            );
        }
        let plain = question("tok", Uuid::nil(), &shown(None, None), None);
        assert!(!plain.contains("name=\"number\""), "{plain}");
    }
}
