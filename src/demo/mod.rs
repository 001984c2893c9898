//! The demo bank: a small upstream web app that `stepgate demo` puts behind the gateway, so a
//! newcomer sees the whole step-up flow in a browser. It is NOT part of the gateway: it stands
//! for the customer's app. Sign-in is a prefilled form (no password) that sets the
//! `demo_session` cookie, an HS256 JWT (`sub`, `phone_number`, `exp`) that stepgate's JWT
//! identity reads; `/account` shows a balance and a transfer form; `POST /transfer` records the
//! transfer in memory and counts what the bank received, which proves that an approved
//! transfer arrives exactly once. The bank checks its own session, never step-up: guarding
//! `/transfer` is stepgate's job. Given stepgate's assertion key, it verifies the
//! `Stepgate-Assertion` of each transfer and says on the receipt whether (and how) the
//! transfer was stepped up, so a transfer that came around the gateway shows as such.
//!
//! Routes: `GET /` (sign-in form), `POST /login`, `GET /account`, `POST /transfer`,
//! `POST /logout`, `GET /style.css`.
//!
//! `phone` is the demo user's phone: a page in front of the reference phone client.
//!
//! May import: the pure domain (its phone-number rule, the binding digest an approval carries),
//! `device` (the reference phone client, which the demo phone drives over the device API, as a
//! phone app would) and external crates; nothing else of the gateway.

pub mod pages;
pub mod phone;
pub mod session;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use self::session::{Claims, Sessions};

/// Prefilled on the sign-in form.
pub const DEFAULT_USER: &str = "alice";
/// Prefilled on the sign-in form.
pub const DEFAULT_PHONE: &str = "+31612345678";
/// Every account starts with 1,000.00 EUR.
pub const OPENING_BALANCE_CENTS: u64 = 100_000;
/// Transfers listed per account.
const RECENT: usize = 10;

/// One transfer the bank received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub cents: u64,
    /// Upper case, without spaces.
    pub iban: String,
}

/// One user's account.
#[derive(Debug, Clone, Default)]
pub struct Account {
    spent_cents: u64,
    recent: VecDeque<Transfer>,
}

impl Account {
    pub fn balance_cents(&self) -> u64 {
        OPENING_BALANCE_CENTS.saturating_sub(self.spent_cents)
    }
}

#[derive(Debug, Default)]
struct Ledger {
    /// Every transfer the bank received, from anyone.
    received: u64,
    accounts: HashMap<String, Account>,
}

struct Bank {
    sessions: Sessions,
    ledger: Mutex<Ledger>,
    /// stepgate's step-up assertion key (from its JWKS), when the bank checks assertions.
    assertion_key: Option<jsonwebtoken::DecodingKey>,
}

impl Bank {
    /// What stepgate's assertion on this request proves, for the receipt: `None` when the bank
    /// does not check assertions.
    fn step_up(&self, headers: &HeaderMap, user: &str, form: &TransferForm) -> Option<String> {
        let key = self.assertion_key.as_ref()?;
        let Some(token) = headers
            .get("stepgate-assertion")
            .and_then(|value| value.to_str().ok())
        else {
            return Some(
                "No step-up assertion: this request did not come through stepgate.".into(),
            );
        };
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.validate_aud = false;
        let verified = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation);
        Some(match verified {
            Ok(data) if data.claims["sub"] == user && data.claims["policy"] == "transfers" => {
                let amr = data.claims["amr"]
                    .as_array()
                    .map(|values| {
                        values
                            .iter()
                            .filter_map(|value| value.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                // Dynamic linking: the approval's digest of the amount and IBAN it was for.
                let expected = crate::domain::policy::binding_digest(&[
                    ("form.amount".to_owned(), form.amount.clone()),
                    ("form.iban".to_owned(), form.iban.clone()),
                ]);
                let bound = match data.claims["bind"].as_str() {
                    Some(bind) if bind == expected => {
                        " The approval is bound to this amount and IBAN."
                    }
                    Some(_) => " The approval was for another amount or IBAN.",
                    None => "",
                };
                format!(
                    "Step-up verified: stepgate's signed assertion ({amr}, transaction {}).{bound}",
                    data.claims["txn"].as_str().unwrap_or("-")
                )
            }
            _ => "The step-up assertion does not verify for this user and policy.".into(),
        })
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Shared = Arc<Bank>;

/// The bank's routes; `secret` signs and verifies the session JWTs (stepgate must be given the
/// same secret in `proxy.identity.jwt.secret`).
pub fn router(secret: &[u8]) -> Router {
    router_with(secret, None)
}

/// The bank's routes, checking stepgate's step-up assertions with `assertion_key`.
pub fn router_with(secret: &[u8], assertion_key: Option<jsonwebtoken::DecodingKey>) -> Router {
    let bank = Arc::new(Bank {
        sessions: Sessions::new(secret),
        ledger: Mutex::new(Ledger::default()),
        assertion_key,
    });
    Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/account", get(account))
        .route("/transfer", post(transfer))
        .route("/logout", post(logout))
        .route("/style.css", get(style))
        .with_state(bank)
}

/// Serves `bank` (`router` or `router_with`) on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    bank: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, bank)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A demo server (the bank, the phone) running on a thread of its own, with its own runtime
/// (the gateway's runtimes belong to pingora).
pub struct ServerThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the bank on `listener` in a new thread.
pub fn spawn(listener: std::net::TcpListener, secret: Vec<u8>) -> std::io::Result<ServerThread> {
    spawn_with(listener, secret, None)
}

/// Starts the bank on `listener` in a new thread, checking step-up assertions with
/// `assertion_key`.
pub fn spawn_with(
    listener: std::net::TcpListener,
    secret: Vec<u8>,
    assertion_key: Option<jsonwebtoken::DecodingKey>,
) -> std::io::Result<ServerThread> {
    spawn_server("demo-bank", listener, move || {
        (router_with(&secret, assertion_key), None)
    })
}

/// Work a server starts beside serving (the phone's enrollment).
type Background = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves the router `make` builds (on the new thread's runtime) on `listener`, with its
/// background work, until stopped.
fn spawn_server(
    name: &'static str,
    listener: std::net::TcpListener,
    make: impl FnOnce() -> (Router, Option<Background>) + Send + 'static,
) -> std::io::Result<ServerThread> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(%error, server = name, "a demo server cannot serve");
                        return;
                    }
                };
                let shutdown = async move {
                    let _ = stopped.await;
                };
                let (router, background) = make();
                if let Some(background) = background {
                    tokio::spawn(background);
                }
                if let Err(error) = serve(listener, router, shutdown).await {
                    tracing::error!(%error, server = name, "a demo server stopped");
                }
            });
        })?;
    Ok(ServerThread {
        stop: Some(stop),
        thread: Some(thread),
    })
}

impl ServerThread {
    /// Asks the server to stop and waits up to `within` for its thread.
    pub fn stop(mut self, within: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let deadline = Instant::now() + within;
        if let Some(thread) = self.thread.take() {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

fn html(status: StatusCode, body: String) -> Response {
    (status, [(CACHE_CONTROL, "no-store")], Html(body)).into_response()
}

async fn style() -> Response {
    ([(CONTENT_TYPE, "text/css; charset=utf-8")], pages::STYLE).into_response()
}

async fn home(State(bank): State<Shared>, headers: HeaderMap) -> Response {
    if bank.sessions.from_headers(&headers).is_some() {
        return Redirect::to("/account").into_response();
    }
    html(
        StatusCode::OK,
        pages::login(DEFAULT_USER, DEFAULT_PHONE, None),
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LoginForm {
    user: String,
    phone_number: String,
}

async fn login(State(bank): State<Shared>, Form(form): Form<LoginForm>) -> Response {
    let refused = |message: &str| {
        html(
            StatusCode::BAD_REQUEST,
            pages::login(&form.user, &form.phone_number, Some(message)),
        )
    };
    let Some(user) = user_name(&form.user) else {
        return refused("The user name must be 1 to 64 letters, digits, '.', '_', '-' or '@'.");
    };
    let Some(phone) = phone_number(&form.phone_number) else {
        return refused("The phone number must be international (E.164), such as +31612345678.");
    };
    match bank.sessions.issue(user, &phone) {
        Ok(token) => (
            StatusCode::SEE_OTHER,
            [
                (SET_COOKIE, session::set_cookie(&token)),
                (LOCATION, "/account".to_owned()),
            ],
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "the demo bank cannot sign a session");
            refused("The bank cannot sign you in right now.")
        }
    }
}

async fn account(State(bank): State<Shared>, headers: HeaderMap) -> Response {
    let Some(who) = bank.sessions.from_headers(&headers) else {
        return Redirect::to("/").into_response();
    };
    let (account, received) = {
        let ledger = bank.ledger();
        let account = ledger.accounts.get(&who.sub).cloned().unwrap_or_default();
        (account, ledger.received)
    };
    html(
        StatusCode::OK,
        pages::account(&who, &account, received, None),
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TransferForm {
    amount: String,
    iban: String,
}

async fn transfer(
    State(bank): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<TransferForm>,
) -> Response {
    let Some(who) = bank.sessions.from_headers(&headers) else {
        return html(StatusCode::UNAUTHORIZED, pages::signed_out());
    };
    let step_up = bank.step_up(&headers, &who.sub, &form);
    let outcome = match (amount_cents(&form.amount), iban(&form.iban)) {
        (None, _) => {
            Err("The amount must be a positive number of euros with at most two decimals.")
        }
        (_, None) => Err("The IBAN must be 15 to 34 characters: country, check digits, account."),
        (Some(cents), Some(iban)) => record(&bank, &who, Transfer { cents, iban }),
    };
    match outcome {
        Ok((transfer, balance, received)) => html(
            StatusCode::OK,
            pages::transferred(&transfer, balance, received, step_up.as_deref()),
        ),
        Err(message) => {
            let (account, received) = {
                let ledger = bank.ledger();
                let account = ledger.accounts.get(&who.sub).cloned().unwrap_or_default();
                (account, ledger.received)
            };
            html(
                StatusCode::BAD_REQUEST,
                pages::account(&who, &account, received, Some(message)),
            )
        }
    }
}

/// Books `transfer` on `who`'s account; answers the transfer, the new balance and the bank's
/// count of received transfers.
fn record(
    bank: &Bank,
    who: &Claims,
    transfer: Transfer,
) -> Result<(Transfer, u64, u64), &'static str> {
    let mut ledger = bank.ledger();
    let account = ledger.accounts.entry(who.sub.clone()).or_default();
    if transfer.cents > account.balance_cents() {
        return Err("Insufficient funds.");
    }
    account.spent_cents += transfer.cents;
    account.recent.push_back(transfer.clone());
    if account.recent.len() > RECENT {
        account.recent.pop_front();
    }
    let balance = account.balance_cents();
    ledger.received += 1;
    tracing::info!(
        cents = transfer.cents,
        received = ledger.received,
        "demo bank: transfer received"
    );
    Ok((transfer, balance, ledger.received))
}

async fn logout() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (SET_COOKIE, session::clear_cookie()),
            (LOCATION, "/".to_owned()),
        ],
    )
        .into_response()
}

/// 1 to 64 letters, digits, `.`, `_`, `-`, `@`.
fn user_name(text: &str) -> Option<&str> {
    let text = text.trim();
    let valid = (1..=64).contains(&text.chars().count())
        && text
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    valid.then_some(text)
}

/// The gateway's own phone-number rule, so what the bank accepts is what SMS delivery takes.
fn phone_number(text: &str) -> Option<String> {
    crate::domain::sms::normalize_phone_number(text)
}

/// `10`, `10.5`, `10,50` -> cents; positive, at most two decimals, below a billion euros.
fn amount_cents(text: &str) -> Option<u64> {
    let text = text.trim();
    let (whole, fraction) = match text.split_once(['.', ',']) {
        Some((whole, fraction)) => (whole, fraction),
        None => (text, ""),
    };
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if !(1..=9).contains(&whole.len())
        || !digits(whole)
        || fraction.len() > 2
        || !digits(fraction)
        || (text.len() > whole.len() && fraction.is_empty())
    {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let fraction: u64 = match fraction.len() {
        0 => 0,
        1 => fraction.parse::<u64>().ok()? * 10,
        _ => fraction.parse().ok()?,
    };
    let cents = whole * 100 + fraction;
    (cents > 0).then_some(cents)
}

/// An IBAN's shape (no checksum: this is a demo): two letters, two digits, then letters and
/// digits, 15 to 34 in all; spaces dropped, upper-cased.
fn iban(text: &str) -> Option<String> {
    let iban: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let bytes = iban.as_bytes();
    let valid = (15..=34).contains(&bytes.len())
        && bytes[..2].iter().all(u8::is_ascii_uppercase)
        && bytes[2..4].iter().all(u8::is_ascii_digit)
        && bytes.iter().all(u8::is_ascii_alphanumeric);
    valid.then_some(iban)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"demo-test-secret-0123456789abcdef";

    #[test]
    fn form_values_are_checked() {
        assert_eq!(amount_cents("10"), Some(1000));
        assert_eq!(amount_cents(" 10.5 "), Some(1050));
        assert_eq!(amount_cents("0,07"), Some(7));
        for bad in [
            "",
            "0",
            "0.00",
            "-1",
            "1.234",
            "1.",
            ".5",
            "1e3",
            "1 000",
            "9999999999",
        ] {
            assert_eq!(amount_cents(bad), None, "{bad}");
        }
        assert_eq!(
            iban("nl91 abna 0417 1643 00").as_deref(),
            Some("NL91ABNA0417164300")
        );
        for bad in [
            "",
            "NL91",
            "9191ABNA0417164300",
            "NLAAABNA0417164300",
            "NL91ABNA04171643<0",
        ] {
            assert_eq!(iban(bad), None, "{bad}");
        }
        assert_eq!(
            phone_number("+31 6 1234-5678").as_deref(),
            Some("+31612345678")
        );
        assert_eq!(phone_number("0612345678"), None);
        assert_eq!(user_name(" alice "), Some("alice"));
        assert_eq!(user_name("<b>"), None);
    }

    async fn start() -> (String, tokio::sync::oneshot::Sender<()>) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, router(SECRET), async move {
            let _ = stopped.await;
        }));
        (base, stop)
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn sign_in_then_transfer_once_with_every_value_escaped() {
        let (base, _stop) = start().await;
        let client = client();

        let home = client.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(home.status(), StatusCode::OK);
        let text = home.text().await.unwrap();
        assert!(text.contains("value=\"alice\"") && text.contains("value=\"+31612345678\""));

        // Without a session: no account, no transfer.
        let account = client.get(format!("{base}/account")).send().await.unwrap();
        assert_eq!(account.status(), StatusCode::SEE_OTHER);
        let anonymous = client
            .post(format!("{base}/transfer"))
            .form(&[("amount", "10"), ("iban", "NL91ABNA0417164300")])
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

        let refused = client
            .post(format!("{base}/login"))
            .form(&[("user", "<script>"), ("phone_number", "+31612345678")])
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert!(!refused.text().await.unwrap().contains("<script>"));

        let login = client
            .post(format!("{base}/login"))
            .form(&[("user", "alice"), ("phone_number", "+31612345678")])
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), StatusCode::SEE_OTHER);
        assert_eq!(login.headers()[LOCATION], "/account");
        let set_cookie = login.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        let token = cookie.strip_prefix("demo_session=").unwrap();
        let claims = Sessions::new(SECRET).verify(token).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.phone_number.as_str()),
            ("alice", "+31612345678")
        );

        let page = client
            .get(format!("{base}/account"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for needle in [
            "id=\"amount\"",
            "id=\"iban\"",
            "id=\"transfer-button\"",
            "1000.00 EUR",
            "Transfers received by the bank: <strong id=\"received\">0</strong>",
        ] {
            assert!(page.contains(needle), "{needle} in {page}");
        }

        let bad = client
            .post(format!("{base}/transfer"))
            .header("cookie", &cookie)
            .form(&[("amount", "10"), ("iban", "<img src=x>")])
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert!(!bad.text().await.unwrap().contains("<img"));

        let done = client
            .post(format!("{base}/transfer"))
            .header("cookie", &cookie)
            .form(&[("amount", "10.5"), ("iban", "nl91 abna 0417 1643 00")])
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), StatusCode::OK);
        let text = done.text().await.unwrap();
        assert!(
            text.contains("Transferred 10.50 EUR to NL91ABNA0417164300"),
            "{text}"
        );
        assert!(text.contains("989.50 EUR"), "{text}");
        assert!(
            text.contains("<strong id=\"received\">1</strong>"),
            "{text}"
        );

        let too_much = client
            .post(format!("{base}/transfer"))
            .header("cookie", &cookie)
            .form(&[("amount", "5000"), ("iban", "NL91ABNA0417164300")])
            .send()
            .await
            .unwrap();
        assert_eq!(too_much.status(), StatusCode::BAD_REQUEST);

        let logout = client.post(format!("{base}/logout")).send().await.unwrap();
        assert_eq!(logout.status(), StatusCode::SEE_OTHER);
        assert!(
            logout.headers()[SET_COOKIE]
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
    }

    #[test]
    fn the_bank_thread_serves_and_stops() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bank = spawn(listener, SECRET.to_vec()).unwrap();
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        use std::io::{Read, Write};
        stream
            .write_all(b"GET /style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        bank.stop(Duration::from_secs(5));
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}
