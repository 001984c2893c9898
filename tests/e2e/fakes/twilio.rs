//! A fake Twilio Messages API: the real paths, HTTP Basic auth with the account SID and auth
//! token, form bodies, and Twilio's JSON answers (201 with a queued message, errors as
//! `{"code","message","more_info","status"}`). It records every accepted message and can be told
//! to refuse alphanumeric senders (error 21212), to fail (500) or to answer slowly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

use super::Server;

const ACCOUNT_SID: &str = "ACf00dfeedf00dfeedf00dfeedf00dfeed";
const AUTH_TOKEN: &str = "f4ke0auth0token0f4ke0auth0token0";
const API_VERSION: &str = "2010-04-01";
const DATE: &str = "Thu, 28 Nov 2026 12:00:00 +0000";

/// A message the fake accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub to: String,
    pub from: String,
    pub body: String,
}

#[derive(Default)]
struct Behaviour {
    messages: Vec<Recorded>,
    /// Message POSTs received, accepted or not.
    attempts: usize,
    refuse_alphanumeric_senders: bool,
    fail: bool,
    delay: Duration,
}

type Shared = Arc<Mutex<Behaviour>>;

pub struct FakeTwilio {
    behaviour: Shared,
    server: Server,
}

impl FakeTwilio {
    pub async fn start() -> Self {
        let behaviour = Shared::default();
        let router = Router::new()
            .route(
                &format!("/{API_VERSION}/Accounts/{{sid}}"),
                get(fetch_account),
            )
            .route(
                &format!("/{API_VERSION}/Accounts/{{sid}}/Messages.json"),
                post(create_message),
            )
            .with_state(behaviour.clone());
        Self {
            behaviour,
            server: Server::start(router),
        }
    }

    /// The value for `sms.twilio.base_url`.
    pub fn base_url(&self) -> String {
        self.server.url()
    }

    pub fn account_sid(&self) -> &'static str {
        ACCOUNT_SID
    }

    pub fn auth_token(&self) -> &'static str {
        AUTH_TOKEN
    }

    /// Every accepted message, oldest first.
    pub fn messages(&self) -> Vec<Recorded> {
        self.lock().messages.clone()
    }

    /// Message POSTs received, including refused and failed ones.
    #[allow(dead_code)]
    pub fn attempts(&self) -> usize {
        self.lock().attempts
    }

    /// When on, a `From` with a letter in it is refused with error 21212, as in countries that
    /// do not allow alphanumeric sender ids.
    pub fn set_refuse_alphanumeric_senders(&self, refuse: bool) {
        self.lock().refuse_alphanumeric_senders = refuse;
    }

    /// When on, message POSTs answer 500.
    pub fn set_fail(&self, fail: bool) {
        self.lock().fail = fail;
    }

    /// Every answer waits this long first.
    #[allow(dead_code)]
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Behaviour> {
        self.behaviour.lock().expect("fake twilio state")
    }
}

fn error(status: StatusCode, code: u32, message: String) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, axum::Json(body)).into_response()
}

/// Twilio answers 401 with code 20003 and a Basic challenge when the credentials are wrong.
fn authenticate(headers: &HeaderMap) -> Result<(), Box<Response>> {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT_SID}:{AUTH_TOKEN}"))
    );
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    if given == Some(expected.as_str()) {
        return Ok(());
    }
    let mut response = error(StatusCode::UNAUTHORIZED, 20003, "Authenticate".to_owned());
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"Twilio API\""),
    );
    Err(Box::new(response))
}

fn not_found(path: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        20404,
        format!("The requested resource {path} was not found"),
    )
}

async fn delay(behaviour: &Shared) {
    let delay = behaviour.lock().expect("fake twilio state").delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

async fn fetch_account(
    State(behaviour): State<Shared>,
    Path(sid_json): Path<String>,
    headers: HeaderMap,
) -> Response {
    delay(&behaviour).await;
    if let Err(refusal) = authenticate(&headers) {
        return *refusal;
    }
    let path = format!("/{API_VERSION}/Accounts/{sid_json}");
    if sid_json.strip_suffix(".json") != Some(ACCOUNT_SID) {
        return not_found(&path);
    }
    let body = json!({
        "sid": ACCOUNT_SID,
        "owner_account_sid": ACCOUNT_SID,
        "friendly_name": "stepgate test account",
        "status": "active",
        "type": "Full",
        "date_created": DATE,
        "date_updated": DATE,
        "uri": path,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn valid_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit())
    })
}

async fn create_message(
    State(behaviour): State<Shared>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    behaviour.lock().expect("fake twilio state").attempts += 1;
    delay(&behaviour).await;
    if let Err(refusal) = authenticate(&headers) {
        return *refusal;
    }
    if sid != ACCOUNT_SID {
        return not_found(&format!("/{API_VERSION}/Accounts/{sid}/Messages.json"));
    }
    let (fail, refuse_alphanumeric) = {
        let state = behaviour.lock().expect("fake twilio state");
        (state.fail, state.refuse_alphanumeric_senders)
    };
    if fail {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            20500,
            "An internal server error has occurred".to_owned(),
        );
    }
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return error(
            StatusCode::BAD_REQUEST,
            21601,
            "Request body must be application/x-www-form-urlencoded".to_owned(),
        );
    }
    let field = |name: &str| {
        url::form_urlencoded::parse(&body)
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    };
    let Some(to) = field("To") else {
        return error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number is required.".to_owned(),
        );
    };
    let Some(from) = field("From") else {
        return error(
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' phone number is required.".to_owned(),
        );
    };
    let Some(text) = field("Body").filter(|text| !text.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            21602,
            "Message body is required.".to_owned(),
        );
    };
    if !valid_e164(&to) {
        return error(
            StatusCode::BAD_REQUEST,
            21211,
            format!("Invalid 'To' Phone Number: {to}"),
        );
    }
    if text.chars().count() > 1600 {
        return error(
            StatusCode::BAD_REQUEST,
            21617,
            "The concatenated message body exceeds the 1600 character limit.".to_owned(),
        );
    }
    let alphanumeric = from.chars().any(|c| c.is_ascii_alphabetic());
    if refuse_alphanumeric && alphanumeric {
        return error(
            StatusCode::BAD_REQUEST,
            21212,
            format!(
                "The 'From' number {from} is not a valid phone number, shortcode, or alphanumeric sender ID."
            ),
        );
    }
    let index = {
        let mut state = behaviour.lock().expect("fake twilio state");
        state.messages.push(Recorded {
            to: to.clone(),
            from: from.clone(),
            body: text.clone(),
        });
        state.messages.len()
    };
    let message_sid = format!("SM{index:032x}");
    let uri = format!("/{API_VERSION}/Accounts/{ACCOUNT_SID}/Messages/{message_sid}");
    let answer: Value = json!({
        "account_sid": ACCOUNT_SID,
        "api_version": API_VERSION,
        "body": text,
        "date_created": DATE,
        "date_sent": null,
        "date_updated": DATE,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": from,
        "messaging_service_sid": null,
        "num_media": "0",
        "num_segments": "1",
        "price": null,
        "price_unit": "USD",
        "sid": message_sid,
        "status": "queued",
        "subresource_uris": { "media": format!("{uri}/Media.json") },
        "to": to,
        "uri": format!("{uri}.json"),
    });
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}
