//! The sidecar end to end: the real binary proxies to a recording upstream. Unprotected traffic
//! passes byte for byte; protected requests are held, challenged (JSON for API clients, pages
//! for browsers), verified by SMS code and forwarded exactly once; grants, freshness, binding,
//! CSRF, hold mode, body limits, store outages and policy reloads are driven over the network.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::fakes::upstream::{RecordingUpstream, blob};
use crate::harness::{
    Gate, GateBuilder, ScratchRedis, client, client_without_redirects, eventually, signal,
};

const ALICE: (&str, &str) = ("alice", "+31612345678");
const BOB: (&str, &str) = ("bob", "+31687654321");
const TRANSFER_FORM: &str = "amount=10&iban=NL91ABNA0417164300";

/// A policy file on `/transfer` and `/admin/**`, SMS codes to `outbox.jsonl`.
pub(crate) fn proxy_yaml(
    upstream: &RecordingUpstream,
    freshness: u64,
    mode: &str,
    extra_proxy: &str,
) -> String {
    format!(
        "auth_types:
  - {{ name: sms_code, method: sms, ttl_seconds: 60, max_attempts: 3, max_resends: 1, default_messages: {{ en: \"Code: {{code}}\" }} }}
sms: {{ gateway: file, file: {{ path: outbox.jsonl }} }}
rate_limits:
  sms_per_user: {{ limit: 100, window_seconds: 60 }}
  sms_per_phone: {{ limit: 100, window_seconds: 60 }}
policies:
  - name: transfers
    match: {{ methods: [POST], paths: [\"/transfer\"] }}
    require: {{ auth_type: sms_code, freshness_seconds: {freshness} }}
    message: \"Approve transfer of {{form.amount}} EUR to {{form.iban}}\"
    mode: {mode}
  - name: closed
    match: {{ paths: [\"/closed/**\"] }}
    action: deny
proxy:
  upstream: {{ address: \"{upstream}\" }}
  trusted_proxies: [\"127.0.0.1/32\", \"::1/128\"]
  identity: {{ header: X-User-Id, phone_header: X-User-Phone }}
  reload_interval_seconds: 1
{extra_proxy}",
        upstream = upstream.address()
    )
}

fn start(builder: GateBuilder) -> Gate {
    let gate = builder.start();
    gate.wait_for_proxy();
    gate
}

fn memory_gate(upstream: &RecordingUpstream, freshness: u64, mode: &str) -> Gate {
    start(GateBuilder::memory().yaml(&proxy_yaml(upstream, freshness, mode, "")))
}

/// The SMS codes sent so far, oldest first, with their text.
fn outbox(gate: &Gate) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(gate.dir().join("outbox.jsonl")).unwrap_or_default();
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            let body = value["body"].as_str().unwrap().to_owned();
            let code: String = body
                .rsplit(|c: char| !c.is_ascii_digit())
                .find(|part| part.len() == 6)
                .unwrap_or_default()
                .to_owned();
            (code, body)
        })
        .collect()
}

/// The six-digit codes sent so far, oldest first.
pub(crate) fn codes(gate: &Gate) -> Vec<String> {
    outbox(gate).into_iter().map(|(code, _)| code).collect()
}

fn last_code(gate: &Gate) -> String {
    outbox(gate).last().expect("an SMS was sent").0.clone()
}

fn as_user(
    request: reqwest::RequestBuilder,
    (user, phone): (&str, &str),
) -> reqwest::RequestBuilder {
    request
        .header("x-user-id", user)
        .header("x-user-phone", phone)
}

async fn post_transfer(
    gate: &Gate,
    user: (&str, &str),
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = as_user(client().post(gate.proxy_url("/transfer")), user)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(TRANSFER_FORM);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// Starts a step-up as an API client and returns its challenge JSON.
async fn challenge(gate: &Gate, user: (&str, &str)) -> Value {
    let response = post_transfer(gate, user, &[]).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let www = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "step_up_required");
    assert_eq!(
        www,
        format!(
            "StepUp transaction_id=\"{}\"",
            body["transaction_id"].as_str().unwrap()
        )
    );
    body
}

async fn verify(
    gate: &Gate,
    challenge: &Value,
    user: (&str, &str),
    code: &str,
    binding: &str,
) -> reqwest::Response {
    as_user(
        client().post(gate.proxy_url(challenge["verify_uri"].as_str().unwrap())),
        user,
    )
    .header("stepgate-binding", binding)
    .form(&[("sms_code", code)])
    .send()
    .await
    .unwrap()
}

fn binding(challenge: &Value) -> String {
    challenge["binding_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn unprotected_traffic_passes_byte_for_byte_with_forwarded_headers_and_without_own_cookies() {
    let upstream = RecordingUpstream::start();
    let gate = memory_gate(&upstream, 300, "challenge");

    let direct = client()
        .get(upstream.url("/blob"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let proxied = client().get(gate.proxy_url("/blob")).send().await.unwrap();
    assert_eq!(proxied.status(), StatusCode::OK);
    assert_eq!(proxied.bytes().await.unwrap(), direct);
    assert_eq!(direct.as_ref(), blob().as_slice());

    let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let response = client()
        .put(gate.proxy_url("/upload?x=1"))
        .header(
            "cookie",
            "app=1; stepgate_grant=forged; stepgate_binding=zzz",
        )
        .header("stepgate-grant", "forged")
        .header("x-forwarded-for", "6.6.6.6")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = upstream.seen_on("/upload");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/upload?x=1");
    assert_eq!(seen[0].body, body);
    assert_eq!(seen[0].header("cookie").as_deref(), Some("app=1"));
    assert_eq!(seen[0].header("stepgate-grant"), None);
    // The test client stands in for the trusted layer that sets the identity headers
    // (`trusted_proxies: [127.0.0.1/32]`), so its X-Forwarded-For chain is extended; the
    // untrusted case (replaced) is in `identity.rs`.
    assert_eq!(
        seen[0].header("x-forwarded-for").as_deref(),
        Some("6.6.6.6, 127.0.0.1")
    );
    assert_eq!(seen[0].header("x-forwarded-proto").as_deref(), Some("http"));

    // A policy's deny answers without the upstream.
    let denied = client()
        .get(gate.proxy_url("/closed/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    assert!(upstream.seen_on("/closed/x").is_empty());
}

#[tokio::test]
async fn an_api_client_finishes_a_step_up_and_the_original_post_reaches_the_upstream_once() {
    let upstream = RecordingUpstream::start();
    let gate = memory_gate(&upstream, 300, "challenge");

    let challenge = challenge(&gate, ALICE).await;
    assert_eq!(challenge["auth_method"], "sms");
    assert!(challenge["time_to_live"].as_u64().unwrap() > 50_000);
    assert!(
        upstream.seen_on("/transfer").is_empty(),
        "nothing goes upstream before approval"
    );
    let (code, text) = outbox(&gate).pop().unwrap();
    assert!(
        text.contains("Approve transfer of 10 EUR to NL91ABNA0417164300"),
        "{text}"
    );

    // Status: pending, and only for this client.
    let status: Value = as_user(
        client().get(gate.proxy_url(challenge["status_uri"].as_str().unwrap())),
        ALICE,
    )
    .header("stepgate-binding", binding(&challenge))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(status["status"], "pending");

    let wrong = if code == "000000" { "111111" } else { "000000" };
    let response = verify(&gate, &challenge, ALICE, wrong, &binding(&challenge)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_code");
    assert_eq!(body["attempts_remaining"], 2);

    let response = verify(&gate, &challenge, ALICE, &code, &binding(&challenge)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("stepgate-grant"));
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.starts_with("stepgate_grant=")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("Secure"),
        "plain http gets no Secure flag: {cookie}"
    );
    assert_eq!(
        response.text().await.unwrap(),
        format!(
            "upstream saw POST /transfer ({} bytes)",
            TRANSFER_FORM.len()
        )
    );

    let seen = upstream.seen_on("/transfer");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].body, TRANSFER_FORM.as_bytes());
    assert_eq!(seen[0].header("x-user-id").as_deref(), Some("alice"));
    assert_eq!(
        seen[0].header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(seen[0].header("stepgate-binding"), None);

    // The same approval cannot send it again, nor can concurrent retries.
    let token = binding(&challenge);
    let again =
        futures::future::join_all((0..5).map(|_| verify(&gate, &challenge, ALICE, &code, &token)))
            .await;
    for response in again {
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    assert_eq!(upstream.seen_on("/transfer").len(), 1);
}

/// Alice's transfer, stepped up by SMS through the JSON challenge: its challenge and the grant
/// the approval answered with.
async fn approved_transfer(gate: &Gate) -> (Value, String) {
    let challenge = challenge(gate, ALICE).await;
    let response = verify(
        gate,
        &challenge,
        ALICE,
        &last_code(gate),
        &binding(&challenge),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let grant = response.headers()["stepgate-grant"]
        .to_str()
        .unwrap()
        .to_owned();
    (challenge, grant)
}

#[tokio::test]
async fn a_grant_passes_within_freshness_for_its_user_only_and_tampering_is_refused() {
    let upstream = RecordingUpstream::start();
    let gate = memory_gate(&upstream, 300, "challenge");
    let (_, grant) = approved_transfer(&gate).await;

    let sms_before = outbox(&gate).len();
    let passed = post_transfer(&gate, ALICE, &[("stepgate-grant", &grant)]).await;
    assert_eq!(passed.status(), StatusCode::OK);
    assert_eq!(upstream.seen_on("/transfer").len(), 2);
    assert_eq!(outbox(&gate).len(), sms_before, "a grant costs no SMS");
    let cookie = format!("stepgate_grant={grant}");
    let passed = post_transfer(&gate, ALICE, &[("cookie", &cookie)]).await;
    assert_eq!(passed.status(), StatusCode::OK);
    assert_eq!(upstream.seen_on("/transfer").len(), 3);

    // Bob cannot use Alice's grant; a changed byte breaks it.
    let stolen = post_transfer(&gate, BOB, &[("stepgate-grant", &grant)]).await;
    assert_eq!(stolen.status(), StatusCode::UNAUTHORIZED);
    let mut tampered = grant.clone().into_bytes();
    let at = tampered.len() / 2;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let refused = post_transfer(&gate, ALICE, &[("stepgate-grant", &tampered)]).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(upstream.seen_on("/transfer").len(), 3);
}

#[tokio::test]
async fn freshness_zero_needs_an_approval_every_time_and_grants_expire() {
    let upstream = RecordingUpstream::start();
    let gate = memory_gate(&upstream, 0, "challenge");
    let challenge_one = challenge(&gate, ALICE).await;
    let response = verify(
        &gate,
        &challenge_one,
        ALICE,
        &last_code(&gate),
        &binding(&challenge_one),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.headers().contains_key("stepgate-grant"));
    challenge(&gate, ALICE).await;
    drop(gate);

    let gate = memory_gate(&upstream, 1, "challenge");
    let challenge_two = challenge(&gate, ALICE).await;
    let response = verify(
        &gate,
        &challenge_two,
        ALICE,
        &last_code(&gate),
        &binding(&challenge_two),
    )
    .await;
    let grant = response.headers()["stepgate-grant"]
        .to_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let expired = post_transfer(&gate, ALICE, &[("stepgate-grant", &grant)]).await;
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn only_the_client_that_started_a_step_up_can_complete_it() {
    let upstream = RecordingUpstream::start();
    let gate = memory_gate(&upstream, 300, "challenge");
    let challenge = challenge(&gate, ALICE).await;
    let code = last_code(&gate);

    // Another client of the same user (no or a wrong binding token), and another user.
    let no_binding = as_user(
        client().post(gate.proxy_url(challenge["verify_uri"].as_str().unwrap())),
        ALICE,
    )
    .header("content-type", "application/json")
    .body(format!("{{\"sms_code\":\"{code}\"}}"))
    .send()
    .await
    .unwrap();
    assert_eq!(no_binding.status(), StatusCode::NOT_FOUND);
    let wrong = verify(&gate, &challenge, ALICE, &code, "not-the-token").await;
    assert_eq!(wrong.status(), StatusCode::NOT_FOUND);
    let bob = verify(&gate, &challenge, BOB, &code, &binding(&challenge)).await;
    assert_eq!(bob.status(), StatusCode::NOT_FOUND);
    // A browser form without the CSRF token, even with the binding cookie.
    let cookie = format!("stepgate_binding={}", binding(&challenge));
    let no_csrf = as_user(
        client().post(gate.proxy_url(challenge["verify_uri"].as_str().unwrap())),
        ALICE,
    )
    .header("cookie", cookie)
    .form(&[("sms_code", code.as_str())])
    .send()
    .await
    .unwrap();
    assert_eq!(no_csrf.status(), StatusCode::FORBIDDEN);
    assert!(upstream.seen_on("/transfer").is_empty());

    // None of that cost an attempt: the right client still has all three.
    let fine = verify(&gate, &challenge, ALICE, &code, &binding(&challenge)).await;
    assert_eq!(fine.status(), StatusCode::OK);
    assert_eq!(upstream.seen_on("/transfer").len(), 1);
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.strip_prefix(&format!("{name}="))
                .map(|rest| rest.split(';').next().unwrap_or_default().to_owned())
        })
}

/// The value of a hidden input in a page.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\"");
    let at = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {page}"));
    let tag_start = page[..at].rfind('<').unwrap();
    let tag_end = at + page[at..].find('>').unwrap();
    let tag = &page[tag_start..tag_end];
    let value_at = tag.find("value=\"").unwrap() + 7;
    tag[value_at..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_browser_is_sent_to_the_code_page_and_its_form_completes_the_request() {
    let upstream = RecordingUpstream::start();
    let gate = memory_gate(&upstream, 300, "challenge");
    let browser = client_without_redirects();
    let response = as_user(browser.post(gate.proxy_url("/transfer")), ALICE)
        .header("accept", "text/html,application/xhtml+xml")
        .form(&[("amount", "25"), ("iban", "DE89370400440532013000")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let page_path = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(page_path.starts_with("/.stepgate/tx/"), "{page_path}");
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set_cookie.contains(&format!("Path={page_path}")) && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let binding = cookie_value(response.headers(), "stepgate_binding").unwrap();
    let cookie = format!("stepgate_binding={binding}");

    let page = as_user(browser.get(gate.proxy_url(&page_path)), ALICE)
        .header("accept", "text/html")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let page = page.text().await.unwrap();
    assert!(
        page.contains("Approve transfer of 25 EUR to DE89370400440532013000"),
        "{page}"
    );
    let csrf = hidden(&page, "csrf");

    let done = as_user(
        browser.post(gate.proxy_url(&format!("{page_path}/verify"))),
        ALICE,
    )
    .header("accept", "text/html")
    .header("cookie", &cookie)
    .form(&[
        ("sms_code", last_code(&gate).as_str()),
        ("csrf", csrf.as_str()),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    assert!(cookie_value(done.headers(), "stepgate_grant").is_some());
    let sent = "amount=25&iban=DE89370400440532013000";
    assert_eq!(
        done.text().await.unwrap(),
        format!("upstream saw POST /transfer ({} bytes)", sent.len())
    );
    assert_eq!(upstream.seen_on("/transfer").len(), 1);
}

#[tokio::test]
async fn hold_mode_keeps_the_request_open_until_the_code_is_entered_elsewhere() {
    let upstream = RecordingUpstream::start();
    let gate = memory_gate(&upstream, 300, "hold");
    let proxy = gate.proxy_url("/transfer");
    let held = tokio::spawn(async move {
        as_user(client().post(proxy), ALICE)
            .header("content-type", "application/x-www-form-urlencoded")
            .timeout(Duration::from_secs(30))
            .body(TRANSFER_FORM)
            .send()
            .await
            .unwrap()
    });
    // The user finds the waiting request from another session and enters the code.
    let pending_url = gate.proxy_url("/.stepgate/pending");
    eventually(
        Duration::from_secs(10),
        "the held request shows as pending",
        || async {
            as_user(client().get(&pending_url), ALICE)
                .send()
                .await
                .unwrap()
                .status()
                == StatusCode::OK
        },
    )
    .await;
    let pending: Value = as_user(client().get(&pending_url), ALICE)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(upstream.seen_on("/transfer").is_empty());
    let bob_view = as_user(client().get(gate.proxy_url("/.stepgate/pending")), BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(bob_view.status(), StatusCode::NOT_FOUND);
    let approved = as_user(
        client().post(gate.proxy_url(pending["verify_uri"].as_str().unwrap())),
        ALICE,
    )
    .header("content-type", "application/json")
    .body(format!("{{\"sms_code\":\"{}\"}}", last_code(&gate)))
    .send()
    .await
    .unwrap();
    assert_eq!(approved.status(), StatusCode::OK);
    let response = held.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("stepgate-grant"));
    assert_eq!(
        response.text().await.unwrap(),
        format!(
            "upstream saw POST /transfer ({} bytes)",
            TRANSFER_FORM.len()
        )
    );
    assert_eq!(upstream.seen_on("/transfer").len(), 1);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_requests_without_identity_401() {
    let upstream = RecordingUpstream::start();
    let gate = start(GateBuilder::memory().yaml(&proxy_yaml(
        &upstream,
        300,
        "challenge",
        "  max_held_body_bytes: 1024\n  login_url: \"https://login.example/start\"\n",
    )));
    let big = as_user(client().post(gate.proxy_url("/transfer")), ALICE)
        .body(vec![b'a'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(outbox(&gate).is_empty(), "no SMS for a refused request");

    let anonymous = client()
        .post(gate.proxy_url("/transfer"))
        .body(TRANSFER_FORM)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"], "login_required");
    let browser = client_without_redirects();
    let to_login = browser
        .post(gate.proxy_url("/transfer?from=menu"))
        .header("accept", "text/html")
        .body(TRANSFER_FORM)
        .send()
        .await
        .unwrap();
    assert_eq!(to_login.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        to_login.headers()["location"],
        "https://login.example/start?return_to=%2Ftransfer%3Ffrom%3Dmenu"
    );
    assert!(upstream.seen_on("/transfer").is_empty());
}

#[tokio::test]
async fn a_store_outage_fails_protected_routes_closed_and_recovers() {
    let upstream = RecordingUpstream::start();
    let mut redis = ScratchRedis::new();
    redis.start();
    let gate =
        start(GateBuilder::redis(redis.url()).yaml(&proxy_yaml(&upstream, 300, "challenge", "")));
    challenge(&gate, ALICE).await;

    redis.stop();
    let down = post_transfer(&gate, ALICE, &[]).await;
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = down.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    let open = client().get(gate.proxy_url("/blob")).send().await.unwrap();
    assert_eq!(
        open.status(),
        StatusCode::OK,
        "unprotected routes keep passing"
    );
    assert!(upstream.seen_on("/transfer").is_empty());

    redis.start();
    eventually(Duration::from_secs(10), "step-up works again", || async {
        post_transfer(&gate, ALICE, &[]).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
}

#[tokio::test]
async fn policy_files_reload_on_change_and_on_sighup_and_a_bad_file_keeps_the_old_rules() {
    let upstream = RecordingUpstream::start();
    let open_rules =
        "policies:\n  - name: reports\n    match: { paths: [\"/reports\"] }\n    action: allow\n";
    let yaml = format!(
        "{}  policy_files: [\"rules/*.yaml\"]\n",
        proxy_yaml(&upstream, 300, "challenge", "")
    );
    let gate = start(
        GateBuilder::memory()
            .file("rules/extra.yaml", open_rules)
            .yaml(&yaml),
    );
    let reports = || async {
        client()
            .get(gate.proxy_url("/reports"))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(reports().await, StatusCode::OK);

    let rules = gate.dir().join("rules/extra.yaml");
    std::fs::write(
        &rules,
        "policies:\n  - name: reports\n    match: { paths: [\"/reports\"] }\n    action: deny\n",
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the changed file is in force",
        || async { reports().await == StatusCode::FORBIDDEN },
    )
    .await;

    std::fs::write(&rules, "policies:\n  - name: reports\n    match: { paths: [\"/reports\"] }\n    require: { auth_type: no_such_type }\n").unwrap();
    eventually(
        Duration::from_secs(10),
        "the bad file is reported",
        || async { gate.log_text().contains("no_such_type") },
    )
    .await;
    assert_eq!(
        reports().await,
        StatusCode::FORBIDDEN,
        "a bad file keeps the old rules"
    );

    // SIGHUP reloads at once, without waiting for the poll (interval 0 would be SIGHUP only).
    std::fs::write(&rules, open_rules).unwrap();
    signal(gate.pid(), "HUP");
    eventually(Duration::from_secs(10), "SIGHUP reloaded", || async {
        reports().await == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn proxy_decisions_are_counted_by_policy() {
    let upstream = RecordingUpstream::start();
    let gate = memory_gate(&upstream, 300, "challenge");
    client().get(gate.proxy_url("/blob")).send().await.unwrap();
    challenge(&gate, ALICE).await;
    let text = gate.metrics_text().await;
    assert!(
        text.contains(r#"stepgate_proxy_requests_total{decision="allow",policy="none"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"stepgate_proxy_requests_total{decision="challenged",policy="transfers"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("stepgate_proxy_added_latency_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("stepgate_proxy_held_requests"), "{text}");
}

/// With `proxy.assertion`, what reaches the app after a step-up, and with a grant, carries a
/// short-lived ES256 JWT that verifies with the key the proxy serves at `/.stepgate/jwks.json`;
/// a client's own copy of the header never reaches the app.
#[tokio::test]
async fn forwarded_step_ups_carry_a_signed_assertion_the_app_can_verify() {
    let upstream = RecordingUpstream::start();
    let key = include_str!("../data/assertion-key.pem");
    let gate = start(
        GateBuilder::memory()
            .file("assertion-key.pem", key)
            .yaml(&proxy_yaml(
                &upstream,
                300,
                "challenge",
                "  assertion: { key_file: assertion-key.pem, issuer: \"https://gate.example\", audience: bank, ttl_seconds: 30 }\n",
            )),
    );
    let jwks: jsonwebtoken::jwk::JwkSet = client()
        .get(gate.proxy_url("/.stepgate/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let verify_assertion = |token: &str| -> Value {
        let header = jsonwebtoken::decode_header(token).unwrap();
        let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_issuer(&["https://gate.example"]);
        validation.set_audience(&["bank"]);
        jsonwebtoken::decode::<Value>(
            token,
            &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
            &validation,
        )
        .unwrap()
        .claims
    };

    // A forged assertion on an unprotected route is removed.
    let forged = as_user(client().get(gate.proxy_url("/account")), ALICE)
        .header("stepgate-assertion", "eyJhbGciOiJub25lIn0.e30.")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::OK);
    assert_eq!(
        upstream.seen_on("/account")[0].header("stepgate-assertion"),
        None
    );

    // The approved request carries one naming the user, the policy, the method and the
    // transaction.
    let (challenge, grant) = approved_transfer(&gate).await;
    let transaction_id = challenge["transaction_id"].as_str().unwrap().to_owned();
    let seen = upstream.seen_on("/transfer");
    assert_eq!(seen.len(), 1);
    let claims = verify_assertion(&seen[0].header("stepgate-assertion").unwrap());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["policy"], "transfers");
    assert_eq!(claims["amr"], serde_json::json!(["sms"]));
    assert_eq!(claims["txn"], transaction_id.as_str());
    let exp = claims["exp"].as_u64().unwrap();
    assert_eq!(exp - claims["iat"].as_u64().unwrap(), 30);
    assert!(claims["auth_time"].as_u64().unwrap() <= claims["iat"].as_u64().unwrap());

    // A request passing on the grant gets a fresh one for the same approval, and a client's
    // own copy is replaced.
    let passed = post_transfer(
        &gate,
        ALICE,
        &[("stepgate-grant", &grant), ("stepgate-assertion", "forged")],
    )
    .await;
    assert_eq!(passed.status(), StatusCode::OK);
    let seen = upstream.seen_on("/transfer");
    assert_eq!(seen.len(), 2);
    let claims = verify_assertion(&seen[1].header("stepgate-assertion").unwrap());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["txn"], transaction_id.as_str());
    assert_eq!(claims["amr"], serde_json::json!(["sms"]));
}
