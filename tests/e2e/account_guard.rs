//! The account guard end to end, on the memory store and on Redis (issue #13, items 2 and 3):
//! consecutive wrong SMS codes across transactions lock the account (inits answer 3007 and send
//! nothing, codes are no longer checked), a burst of wrong codes across transactions checks no
//! more than the limit, the admin API lists and lifts locks; a phone's "this wasn't me" denial
//! blocks push for the user (the portal's callback and result say so, inits fall back to SMS
//! or answer 1006), and pushes beyond the cap without a success wait.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::fakes::upstream::RecordingUpstream;
use crate::harness::{Gate, Store, client, on_both_stores};
use crate::push_flow::{self, ANN_TOKEN, OPS_CLIENT_ID, OPS_CLIENT_SECRET};

const PORTAL: (&str, &str) = ("portal", "portal-secret-0123456789");
const OPS: (&str, &str) = ("ops", "ops-secret-0123456789");

fn gate(store: Store) -> Gate {
    gate_with(store, 10)
}

/// `gate` with `account_guard.max_pending_step_ups: max_pending`.
fn gate_with(store: Store, max_pending: u32) -> Gate {
    let yaml = format!(
        "api_clients:
  - {{ client_id: {portal}, client_secret: \"{portal_secret}\", apis: [mobile_authentication] }}
  - {{ client_id: {ops}, client_secret: \"{ops_secret}\", apis: [admin] }}
auth_types:
  - {{ name: sms_code, method: sms, max_attempts: 3, default_messages: {{ en: \"Code: {{code}}\" }} }}
sms: {{ gateway: file, file: {{ path: outbox.jsonl }} }}
rate_limits:
  sms_per_user: {{ limit: 100, window_seconds: 60 }}
  sms_per_phone: {{ limit: 100, window_seconds: 60 }}
account_guard: {{ max_failures: 5, lock_seconds: 600, max_pending_step_ups: {max_pending} }}
",
        portal = PORTAL.0,
        portal_secret = PORTAL.1,
        ops = OPS.0,
        ops_secret = OPS.1,
    );
    store.builder().yaml(&yaml).start()
}

async fn post(gate: &Gate, path: &str, form: &[(&str, &str)]) -> (u16, Value, Option<String>) {
    let response = client()
        .post(gate.url(path))
        .basic_auth(PORTAL.0, Some(PORTAL.1))
        .form(form)
        .send()
        .await
        .expect("api request");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        retry_after,
    )
}

async fn start_sms(gate: &Gate, user: &str) -> (u16, Value, Option<String>) {
    post(
        gate,
        "/oauth/api/v4/authenticate/user",
        &[
            ("type", "sms_code"),
            ("user_id", user),
            ("phone_number", "+31612345678"),
        ],
    )
    .await
}

async fn started(gate: &Gate, user: &str) -> String {
    let (status, body, _) = start_sms(gate, user).await;
    assert_eq!(status, 200, "{body}");
    body["transaction_id"].as_str().unwrap().to_owned()
}

async fn verify(gate: &Gate, user: &str, tx: &str, code: &str) -> (u16, Value, Option<String>) {
    post(
        gate,
        &format!("/oauth/api/v4/authenticate/user/{user}/sms"),
        &[("transaction_id", tx), ("sms_code", code)],
    )
    .await
}

/// The code of the newest SMS in the file outbox.
fn last_code(gate: &Gate) -> String {
    let text = std::fs::read_to_string(gate.dir().join("outbox.jsonl")).unwrap_or_default();
    let last: Value = serde_json::from_str(text.lines().last().expect("an SMS")).unwrap();
    last["body"]
        .as_str()
        .unwrap()
        .chars()
        .filter(char::is_ascii_digit)
        .take(6)
        .collect()
}

fn sms_count(gate: &Gate) -> usize {
    std::fs::read_to_string(gate.dir().join("outbox.jsonl"))
        .unwrap_or_default()
        .lines()
        .count()
}

fn wrong(code: &str) -> String {
    let first = code.as_bytes()[0] - b'0';
    format!("{}{}", (first + 1) % 10, &code[1..])
}

async fn admin(
    gate: &Gate,
    method: reqwest::Method,
    path: &str,
    credentials: (&str, &str),
) -> (StatusCode, Value) {
    let response = client()
        .request(method, gate.admin_url(path))
        .basic_auth(credentials.0, Some(credentials.1))
        .send()
        .await
        .expect("admin request");
    let status = response.status();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn sms_failures_lock_the_account_across_transactions(store: Store) {
    let gate = gate(store);
    // Three wrong codes use up the first transaction; a new transaction does not reset the
    // account's count.
    let first = started(&gate, "ann").await;
    let code = last_code(&gate);
    for _ in 0..3 {
        let (status, body, _) = verify(&gate, "ann", &first, &wrong(&code)).await;
        assert_eq!((status, body["error_code"].as_str()), (404, Some("3003")));
    }
    let second = started(&gate, "ann").await;
    let right = last_code(&gate);
    let (status, _, _) = verify(&gate, "ann", &second, &wrong(&right)).await;
    assert_eq!(status, 404);
    // The fifth consecutive failure locks the account.
    let (status, _, _) = verify(&gate, "ann", &second, &wrong(&right)).await;
    assert_eq!(status, 404);

    // Locked: the right code is not even checked, nothing starts, nothing is sent.
    let (status, body, retry_after) = verify(&gate, "ann", &second, &right).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (429, Some("3007")),
        "{body}"
    );
    let seconds: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((590..=600).contains(&seconds), "{seconds}");
    let sent = sms_count(&gate);
    let (status, body, _) = start_sms(&gate, "ann").await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (429, Some("3007")),
        "{body}"
    );
    let (status, body, _) = post(
        &gate,
        "/oauth/api/v4/authenticate/user/ann/sms/resend",
        &[("transaction_id", &second)],
    )
    .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (429, Some("3007")),
        "{body}"
    );
    assert_eq!(
        sms_count(&gate),
        sent,
        "a locked account is sent nothing, resends included"
    );
    // Another user is not affected.
    started(&gate, "bob").await;

    // Ops see the lock and lift it.
    let (status, locks) = admin(&gate, reqwest::Method::GET, "/admin/v1/locks", OPS).await;
    assert_eq!(status, StatusCode::OK, "{locks}");
    let listed = locks["locks"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{locks}");
    assert_eq!(listed[0]["user_id"], "ann");
    assert!(listed[0]["locked_until"].as_u64().is_some(), "{locks}");
    let (status, _) = admin(
        &gate,
        reqwest::Method::DELETE,
        "/admin/v1/locks/ann",
        (PORTAL.0, PORTAL.1),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a portal may not unlock");
    let (status, _) = admin(&gate, reqwest::Method::DELETE, "/admin/v1/locks/ann", OPS).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, locks) = admin(&gate, reqwest::Method::GET, "/admin/v1/locks", OPS).await;
    assert_eq!(locks["locks"].as_array().unwrap().len(), 0, "{locks}");

    // Open again: the right code of the still-pending transaction is checked and approves.
    let (status, body, _) = verify(&gate, "ann", &second, &right).await;
    assert_eq!(status, 200, "{body}");

    let metrics = gate.metrics_text().await;
    for line in [
        "stepgate_account_guard_total{event=\"locked\"} 1",
        "stepgate_account_guard_total{event=\"unlocked\"} 1",
        "stepgate_account_guard_total{event=\"refused_locked\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let log = gate.log_text();
    for event in [
        "ACCOUNT_LOCKED",
        "ACCOUNT_GUARD_REFUSED",
        "ACCOUNT_UNLOCKED",
    ] {
        assert!(log.contains(event), "{event} in {log}");
    }
}

/// Thirty wrong codes sent at once over six transactions of one user: exactly five are
/// checked (answered 3003); every other one is refused unchecked (3007 once locked, or 429 while
/// the five in flight take the limit), and the account is locked.
async fn a_burst_of_wrong_codes_checks_exactly_the_limit(store: Store) {
    let gate = gate(store);
    let mut transactions = Vec::new();
    for _ in 0..6 {
        let tx = started(&gate, "ann").await;
        transactions.push((tx, wrong(&last_code(&gate))));
    }
    let url = gate.url("/oauth/api/v4/authenticate/user/ann/sms");
    let mut burst = JoinSet::new();
    for n in 0..30 {
        let (tx, code) = transactions[n % transactions.len()].clone();
        let url = url.clone();
        burst.spawn(async move {
            let response = client()
                .post(url)
                .basic_auth(PORTAL.0, Some(PORTAL.1))
                .form(&[("transaction_id", tx.as_str()), ("sms_code", code.as_str())])
                .send()
                .await
                .expect("verify");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body["error_code"].as_str().unwrap_or("").to_owned())
        });
    }
    let mut checked = 0;
    let mut refused = 0;
    while let Some(answer) = burst.join_next().await {
        match answer.unwrap() {
            (404, code) if code == "3003" => checked += 1,
            // Locked already (3007), or the five in flight take the limit (retry shortly).
            (429, code) if code == "3007" || code.is_empty() => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((checked, refused), (5, 25));
    let (status, body, _) = start_sms(&gate, "ann").await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (429, Some("3007")),
        "{body}"
    );
}

on_both_stores!(
    a_locked_account_approves_no_otp_login,
    a_burst_of_pushes_sends_exactly_the_cap,
    pending_step_ups_are_bounded_per_user,
    held_requests_are_bounded_per_user,
    sms_failures_lock_the_account_across_transactions,
    a_burst_of_wrong_codes_checks_exactly_the_limit,
    this_wasnt_me_blocks_push_and_tells_the_portal,
    pushes_beyond_the_cap_wait,
);

/// "This wasn't me": the denial ends the transaction (denied) and calls the portal back, the result
/// says `reported`, push step-ups for the user are blocked (a type with an SMS fallback falls
/// back, one without answers 1006 with Retry-After), and ops see and lift the block.
async fn this_wasnt_me_blocks_push_and_tells_the_portal(store: Store) {
    let w = push_flow::world(
        store,
        "single",
        "account_guard: { report_block_seconds: 3600 }\n",
    );
    let (phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    let callback = w.callback_url();
    let init = |auth_type: &'static str| {
        let device_id = device_id.clone();
        let callback = callback.clone();
        let w = &w;
        async move {
            w.post(
                "/oauth/api/v4/authenticate/user",
                &[
                    ("type", auth_type),
                    ("user_id", "ann"),
                    ("device_id", &device_id),
                    ("callback_uri", &callback),
                    ("phone_number", "+31612345678"),
                ],
            )
            .await
        }
    };
    let (status, started) = init("short_push").await;
    assert_eq!(status, 200, "{started}");
    let tx = started["transaction_id"].as_str().unwrap().to_owned();
    let (exit, answer, err) = phone.run(&["deny", &tx, "--report"]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "denied");
    let calls = w.portal.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(calls[0].json["transaction_id"], tx.as_str());
    let (status, result) = w
        .get(&format!("/oauth/api/v4/authenticate/transaction/{tx}"))
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["reported"], true, "{result}");
    assert_eq!(result["not_authenticated_reason"]["reason"], "not_accepted");

    // No more pushes: without a fallback 1006, with one the SMS.
    let pushes = w.apns.received().len();
    let (status, body) = init("short_push").await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (429, Some("1006")),
        "{body}"
    );
    let (status, body) = init("login_push").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["auth_method"], "sms", "{body}");
    assert_eq!(w.apns.received().len(), pushes, "no push went out");

    let (status, locks) = admin_get(&w.gate, "/admin/v1/locks").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(locks["locks"][0]["user_id"], "ann", "{locks}");
    assert!(
        locks["locks"][0]["push_blocked_until"].as_u64().is_some(),
        "{locks}"
    );
    let log = w.gate.log_text();
    assert!(log.contains("PUSH_AUTH_REPORTED_NOT_ME"), "{log}");
    let metrics = w.gate.metrics_text().await;
    assert!(
        metrics.contains("stepgate_account_guard_total{event=\"reported\"} 1"),
        "{metrics}"
    );

    let response = client()
        .delete(w.gate.admin_url("/admin/v1/locks/ann"))
        .basic_auth(OPS_CLIENT_ID, Some(OPS_CLIENT_SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, body) = init("short_push").await;
    assert_eq!(status, 200, "push again after the unlock: {body}");
}

async fn admin_get(gate: &Gate, path: &str) -> (StatusCode, Value) {
    admin(
        gate,
        reqwest::Method::GET,
        path,
        (OPS_CLIENT_ID, OPS_CLIENT_SECRET),
    )
    .await
}

/// With `max_pushes: 2`, a third push without a success waits the backoff (1006 with
/// Retry-After); an approval resets the count.
async fn pushes_beyond_the_cap_wait(store: Store) {
    let w = push_flow::world(
        store,
        "single",
        "account_guard: { max_pushes: 2, push_backoff_seconds: 120, max_push_backoff_seconds: 600 }\n",
    );
    let (phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    let callback = w.callback_url();
    let form = [
        ("type", "short_push"),
        ("user_id", "ann"),
        ("device_id", device_id.as_str()),
        ("callback_uri", callback.as_str()),
    ];
    let mut last = String::new();
    for _ in 0..2 {
        let (status, body) = w.post("/oauth/api/v4/authenticate/user", &form).await;
        assert_eq!(status, 200, "{body}");
        last = body["transaction_id"].as_str().unwrap().to_owned();
    }
    let response = client()
        .post(w.gate.url("/oauth/api/v4/authenticate/user"))
        .basic_auth(push_flow::CLIENT_ID, Some(push_flow::CLIENT_SECRET))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((110..=120).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error_code"], "1006", "{body}");
    // Fatigue is not a lock: ops have nothing to lift.
    let (_, locks) = admin_get(&w.gate, "/admin/v1/locks").await;
    assert_eq!(locks["locks"].as_array().unwrap().len(), 0, "{locks}");

    // An approval is a success: the count starts again.
    let (exit, answer, err) = phone.run(&["approve", &last]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(answer["status"], "approved");
    let (status, body) = w.post("/oauth/api/v4/authenticate/user", &form).await;
    assert_eq!(status, 200, "after a success: {body}");
}

/// With `max_pending_step_ups: 3`: twenty inits for one user at once start exactly three (the
/// rest answer 429 `too_many_pending` with Retry-After and send nothing); another user is not
/// affected; once one of the three is approved, there is room again.
async fn pending_step_ups_are_bounded_per_user(store: Store) {
    let gate = gate_with(store, 3);
    let url = gate.url("/oauth/api/v4/authenticate/user");
    let mut burst = JoinSet::new();
    for _ in 0..20 {
        let url = url.clone();
        burst.spawn(async move {
            let response = client()
                .post(url)
                .basic_auth(PORTAL.0, Some(PORTAL.1))
                .form(&[
                    ("type", "sms_code"),
                    ("user_id", "ann"),
                    ("phone_number", "+31612345678"),
                ])
                .send()
                .await
                .expect("init");
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").is_some();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, retry_after, body)
        });
    }
    let mut started = Vec::new();
    let mut refused = 0;
    while let Some(answer) = burst.join_next().await {
        match answer.unwrap() {
            (200, _, body) => started.push(body["transaction_id"].as_str().unwrap().to_owned()),
            (429, true, body) if body["error"] == "too_many_pending" => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((started.len(), refused), (3, 17));
    assert_eq!(sms_count(&gate), 3, "refused inits send nothing");
    started_for(&gate, "bob").await;

    // Approving one of Ann's makes room for one more.
    let text = std::fs::read_to_string(gate.dir().join("outbox.jsonl")).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let code: String = first["body"]
        .as_str()
        .unwrap()
        .chars()
        .filter(char::is_ascii_digit)
        .take(6)
        .collect();
    let mut approved = false;
    for tx in &started {
        let (status, _, _) = verify(&gate, "ann", tx, &code).await;
        if status == 200 {
            approved = true;
            break;
        }
    }
    assert!(approved, "the first code approves its transaction");
    started_for(&gate, "ann").await;
    let (status, body, _) = start_sms(&gate, "ann").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too_many_pending"))
    );
}

async fn started_for(gate: &Gate, user: &str) -> String {
    started(gate, user).await
}

/// With `max_held_requests: 2`: ten protected requests of one user at once are held at most
/// twice (two SMS, two challenges); the others answer 429 `too_many_pending` before any code is
/// sent; nothing reaches the app; another user is not affected.
async fn held_requests_are_bounded_per_user(store: Store) {
    let upstream = RecordingUpstream::start();
    let yaml = crate::proxy::proxy_yaml(
        &upstream,
        0,
        "challenge",
        "account_guard: { max_held_requests: 2 }\n",
    );
    let gate = store.builder().yaml(&yaml).start();
    gate.wait_for_proxy();
    let transfer = |user: &'static str| {
        let url = gate.proxy_url("/transfer");
        async move {
            client()
                .post(url)
                .header("x-user-id", user)
                .header("x-user-phone", "+31612345678")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("accept", "application/json")
                .body("amount=10&iban=NL91ABNA0417164300")
                .send()
                .await
                .expect("transfer")
                .status()
                .as_u16()
        }
    };
    let answers = futures::future::join_all((0..10).map(|_| transfer("alice"))).await;
    let held = answers.iter().filter(|status| **status == 401).count();
    let refused = answers.iter().filter(|status| **status == 429).count();
    assert_eq!((held, refused), (2, 8), "{answers:?}");
    assert_eq!(sms_count(&gate), 2, "refused requests send no code");
    assert_eq!(
        transfer("bob").await,
        401,
        "another user has room of their own"
    );
    assert!(upstream.seen_on("/transfer").is_empty());
    let metrics = gate.metrics_text().await;
    assert!(
        metrics.contains("stepgate_account_guard_total{event=\"refused_too_many_held\"} 8"),
        "{metrics}"
    );
}

/// Twenty push inits for one user at once with `max_pushes: 3`: exactly three pushes go out, the
/// others answer 1006 with Retry-After (the push cap is counted atomically in the store).
async fn a_burst_of_pushes_sends_exactly_the_cap(store: Store) {
    let w = push_flow::world(
        store,
        "single",
        "account_guard: { max_pushes: 3, push_backoff_seconds: 300, max_pending_step_ups: 50 }\n",
    );
    let (_phone, device_id) = w.phone("ann", ANN_TOKEN).await;
    let callback = w.callback_url();
    let url = w.gate.url("/oauth/api/v4/authenticate/user");
    let mut burst = JoinSet::new();
    for _ in 0..20 {
        let (url, device_id, callback) = (url.clone(), device_id.clone(), callback.clone());
        burst.spawn(async move {
            let response = client()
                .post(url)
                .basic_auth(push_flow::CLIENT_ID, Some(push_flow::CLIENT_SECRET))
                .form(&[
                    ("type", "short_push"),
                    ("user_id", "ann"),
                    ("device_id", device_id.as_str()),
                    ("callback_uri", callback.as_str()),
                ])
                .send()
                .await
                .expect("init");
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (
                status,
                retry_after,
                body["error_code"].as_str().unwrap_or("").to_owned(),
            )
        });
    }
    let (mut sent, mut held_back) = (0, 0);
    while let Some(answer) = burst.join_next().await {
        match answer.unwrap() {
            (200, _, _) => sent += 1,
            (429, true, code) if code == "1006" => held_back += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((sent, held_back), (3, 17));
    assert_eq!(w.apns.received().len(), 3, "three pushes reached APNs");
}

/// A phone whose user is locked (two wrong SMS codes with `max_failures: 2`) cannot approve an
/// OTP login: 429 `account_locked`, and the portal's result stays unauthenticated.
async fn a_locked_account_approves_no_otp_login(store: Store) {
    let portal = crate::fakes::callback::FakePortal::start();
    let yaml = format!(
        "api_clients:
  - {{ client_id: {id}, client_secret: \"{secret}\", apis: [mobile_authentication, end_user] }}
auth_types:
  - {{ name: sms_code, method: sms, max_attempts: 3, default_messages: {{ en: \"Code: {{code}}\" }} }}
  - {{ name: qr_login, method: otp, ttl_seconds: 60, default_messages: {{ en: \"Sign in\" }} }}
applications:
  - id: bank-app
    name: Bank app
    versions:
      - {{ version: \"1.0\", platform: ios }}
sms: {{ gateway: file, file: {{ path: outbox.jsonl }} }}
otp: {{ deep_link_scheme: bankapp }}
callbacks:
  endpoints:
    - {{ url: \"{callback}\", username: portal-cb, password: \"cb-secret-0123\" }}
account_guard: {{ max_failures: 2 }}
",
        id = PORTAL.0,
        secret = PORTAL.1,
        callback = portal.url("/ma-callback"),
    );
    let gate = store.builder().yaml(&yaml).start();
    let (status, code, _) = post(&gate, "/oauth/api/v4/users/ann/enrollment-codes", &[]).await;
    assert_eq!(status, 201, "{code}");
    let phone = crate::device_cli::DeviceCli::new(&gate.url(""));
    phone.enroll(
        code["code"].as_str().unwrap(),
        "bank-app",
        &["--platform", "ios"],
    );

    let tx = started(&gate, "ann").await;
    let right = last_code(&gate);
    for _ in 0..2 {
        verify(&gate, "ann", &tx, &wrong(&right)).await;
    }
    let (status, body, _) = start_sms(&gate, "ann").await;
    assert_eq!(body["error_code"], "3007", "locked: {status} {body}");

    let callback = portal.url("/ma-callback");
    let (status, init, _) = post(
        &gate,
        "/oauth/api/v4/authenticate/user",
        &[("type", "qr_login"), ("callback_uri", callback.as_str())],
    )
    .await;
    assert_eq!(status, 200, "a portal OTP login names no user yet: {init}");
    let (exit, _, err) = phone.run(&["otp", init["otp"].as_str().unwrap()]);
    assert_ne!(exit, 0);
    assert!(err.contains("429 account_locked"), "{err}");
    let tx = init["transaction_id"].as_str().unwrap();
    let response = client()
        .get(gate.url(&format!("/oauth/api/v4/authenticate/transaction/{tx}")))
        .basic_auth(PORTAL.0, Some(PORTAL.1))
        .send()
        .await
        .unwrap();
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["is_authenticated"], false, "{result}");
}
