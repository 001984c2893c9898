//! The proxy edge as an attacker with a stolen session sees it: hand-written HTTP over raw
//! sockets (no client library to normalize anything), against the real binary and a recording
//! upstream. For every spelling of a protected request the answer is a step-up or a 4xx
//! refusal and the app sees nothing; what does reach the app reaches it in the form matched.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::fakes::upstream::RecordingUpstream;
use crate::harness::{Gate, GateBuilder};

const IDENTITY: &str = "X-User-Id: alice\r\nX-User-Phone: +31612345678\r\n";

fn edge_yaml(upstream: &RecordingUpstream, message: &str) -> String {
    format!(
        "auth_types:
  - {{ name: sms_code, method: sms, ttl_seconds: 60, max_attempts: 3, default_messages: {{ en: \"Code: {{code}}\" }} }}
sms: {{ gateway: file, file: {{ path: outbox.jsonl }} }}
rate_limits:
  sms_per_user: {{ limit: 1000, window_seconds: 60 }}
  sms_per_phone: {{ limit: 1000, window_seconds: 60 }}
policies:
  - name: transfers
    match: {{ hosts: [bank.example, \"*.bank.example\"], methods: [POST], paths: [\"/transfer\"] }}
    require: {{ auth_type: sms_code }}
    message: \"{message}\"
  - name: close-account
    match: {{ methods: [DELETE], paths: [\"/account\"] }}
    require: {{ auth_type: sms_code }}
  - name: statements
    match: {{ methods: [GET], paths: [\"/statements/**\"] }}
    require: {{ auth_type: sms_code }}
proxy:
  upstream: {{ address: \"{upstream}\" }}
  trusted_proxies: [\"127.0.0.1/32\", \"::1/128\"]
  identity: {{ header: X-User-Id, phone_header: X-User-Phone }}
",
        upstream = upstream.address()
    )
}

fn gate(upstream: &RecordingUpstream) -> Gate {
    let gate = GateBuilder::memory()
        .yaml(&edge_yaml(upstream, "Pay {form.amount} to {form.iban}"))
        .start();
    gate.wait_for_proxy();
    gate
}

/// Sends `head` (request line and headers, each ending in CRLF, without the blank line) and `body` as they are,
/// and returns the status code and the whole answer.
fn raw(gate: &Gate, head: &str, body: &str) -> (u16, String) {
    raw_to(gate.proxy, head, body)
}

fn raw_to(listener: std::net::SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(listener).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let request = format!("{head}{length}Connection: close\r\n\r\n{body}");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

const FORM: &str = "Content-Type: application/x-www-form-urlencoded\r\n";

#[test]
fn no_spelling_of_a_protected_request_reaches_the_app_without_a_step_up() {
    let upstream = RecordingUpstream::start();
    let gate = gate(&upstream);
    let transfer =
        |target: &str, host: &str| format!("POST {target} HTTP/1.1\r\n{host}{IDENTITY}{FORM}");
    let host = "Host: bank.example\r\n";
    let mut attacks: Vec<String> = Vec::new();
    // Hosts written differently, or not at all.
    for spelling in [
        "Host: bank.example.\r\n",
        "Host: BANK.Example\r\n",
        "Host: bank.example:443\r\n",
        "Host: www.bank.example.:8443\r\n",
        "Host: bank.example\r\nHost: other.example\r\n",
        "Host: bank.example, other.example\r\n",
        "Host: \r\n",
        "",
    ] {
        attacks.push(transfer("/transfer", spelling));
    }
    attacks.push(transfer("http://www.bank.example/transfer", ""));
    attacks.push(transfer("http://WWW.BANK.EXAMPLE./transfer", ""));
    attacks.push(transfer(
        "http://www.bank.example/transfer",
        "Host: other.example\r\n",
    ));
    attacks.push(transfer(
        "http://bank.example/transfer",
        "Host: bank.example\r\n",
    ));
    attacks.push(format!("POST /transfer HTTP/1.0\r\n{IDENTITY}{FORM}"));
    // Paths as the frameworks behind a proxy route them.
    for path in [
        "/TRANSFER",
        "/Transfer",
        "/transfer/",
        "//transfer",
        "/./transfer",
        "/x/../transfer",
        "/x/..;/transfer",
        "/transfer;jsessionid=1",
        "/transfer;",
        "/%74ransfer",
        "/%54RANSFER",
        "/transfer.",
        "/transfer%20",
        "/transfer.json",
        "/transfer%00",
        "/transfer%2f",
        "/x%2f..%2ftransfer",
        "/x/%2e%2e/transfer",
        "/%2e%2e/transfer",
        "/..%5ctransfer",
        "/x\\..\\transfer",
        "/%252e%252e/transfer",
        "/transfer?x=1",
        "/transfer#frag",
    ] {
        attacks.push(transfer(path, host));
    }
    // The method the app runs, not the one in the request line.
    for header in [
        "X-HTTP-Method-Override: DELETE\r\n",
        "X-HTTP-Method: DELETE\r\n",
        "X-Method-Override: delete\r\n",
        "X-HTTP-Method-Override: PUT, DELETE\r\n",
    ] {
        attacks.push(format!("GET /account HTTP/1.1\r\n{host}{IDENTITY}{header}"));
        attacks.push(format!(
            "POST /account HTTP/1.1\r\n{host}{IDENTITY}{header}"
        ));
    }
    attacks.push(format!("POST /account HTTP/1.1\r\n{host}{IDENTITY}{FORM}"));
    attacks.push(format!(
        "POST /account?_method=DELETE HTTP/1.1\r\n{host}{IDENTITY}"
    ));
    attacks.push(format!(
        "HEAD /statements/2026-11 HTTP/1.1\r\n{host}{IDENTITY}"
    ));
    attacks.push(format!(
        "get /statements/2026-11 HTTP/1.1\r\n{host}{IDENTITY}"
    ));
    attacks.push(format!(
        "GET /Statements/2026-11.pdf HTTP/1.1\r\n{host}{IDENTITY}"
    ));
    attacks.push(format!("GET /statements HTTP/1.1\r\n{host}{IDENTITY}"));
    for attack in &attacks {
        let body = if attack.starts_with("POST") {
            "amount=10&iban=NL91"
        } else {
            ""
        };
        let (status, answer) = raw(&gate, attack, body);
        assert!(
            (400..500).contains(&status),
            "{attack:?} answered {status}: {answer}"
        );
        if status == 401 && !attack.starts_with("HEAD") {
            assert!(answer.contains("step_up_required"), "{attack:?}: {answer}");
        }
        assert!(
            upstream.seen().is_empty(),
            "{attack:?} reached the app: {:?}",
            upstream.seen()
        );
    }
}

#[test]
fn what_reaches_the_app_is_what_was_matched() {
    let upstream = RecordingUpstream::start();
    let gate = gate(&upstream);
    let cases = [
        (
            "GET /x/../public HTTP/1.1\r\nHost: bank.example\r\n",
            "/public",
            "bank.example",
        ),
        (
            "GET //a//b/ HTTP/1.1\r\nHost: bank.example\r\n",
            "/a/b/",
            "bank.example",
        ),
        (
            "GET http://shop.example/a?q=1 HTTP/1.1\r\n",
            "/a?q=1",
            "shop.example",
        ),
        (
            "GET /plain?x=%2F HTTP/1.1\r\nHost: bank.example\r\n",
            "/plain?x=%2F",
            "bank.example",
        ),
        (
            "GET /Account/Overview HTTP/1.1\r\nHost: bank.example\r\n",
            "/Account/Overview",
            "bank.example",
        ),
    ];
    for (head, target, host) in cases {
        let (status, answer) = raw(&gate, head, "");
        assert_eq!(status, 200, "{head:?}: {answer}");
        let seen = upstream.seen();
        let last = seen.last().unwrap();
        assert_eq!(last.uri, target, "{head:?}");
        assert_eq!(last.header("host").as_deref(), Some(host), "{head:?}");
    }
    assert_eq!(upstream.seen().len(), cases.len());
}

#[test]
fn a_confirmation_that_could_be_read_two_ways_is_refused_before_a_code_is_sent() {
    let upstream = RecordingUpstream::start();
    let gate = gate(&upstream);
    let host = "Host: bank.example\r\n";
    let head = format!("POST /transfer HTTP/1.1\r\n{host}{IDENTITY}{FORM}");
    for body in [
        "amount=1&iban=GOOD&amount=99999&iban=EVIL",
        "amount=1&iban=GOOD&iban=EVIL",
    ] {
        let (status, answer) = raw(&gate, &head, body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains("ambiguous_request"), "{answer}");
    }
    let query = format!("POST /transfer?amount=99999 HTTP/1.1\r\n{host}{IDENTITY}{FORM}");
    assert_eq!(raw(&gate, &query, "amount=1&iban=GOOD").0, 400);
    let two_types = format!(
        "POST /transfer HTTP/1.1\r\n{host}{IDENTITY}{FORM}Content-Type: application/json\r\n"
    );
    assert_eq!(raw(&gate, &two_types, "amount=1&iban=GOOD").0, 400);
    let multipart = format!(
        "POST /transfer HTTP/1.1\r\n{host}{IDENTITY}Content-Type: multipart/form-data; boundary=b\r\n"
    );
    let body = "--b\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n99999\r\n--b--\r\n";
    assert_eq!(raw(&gate, &multipart, body).0, 400);
    let outbox = std::fs::read_to_string(gate.dir().join("outbox.jsonl")).unwrap_or_default();
    assert!(outbox.is_empty(), "codes were sent: {outbox}");
    // One reading: the step-up starts and the user sees the values the app will run.
    let json =
        format!("POST /transfer HTTP/1.1\r\n{host}{IDENTITY}Content-Type: application/json\r\n");
    let (status, answer) = raw(&gate, &json, r#"{"amount":"12.50","iban":"NL91"}"#);
    assert_eq!(status, 401, "{answer}");
    let outbox = std::fs::read_to_string(gate.dir().join("outbox.jsonl")).unwrap_or_default();
    assert_eq!(outbox.lines().count(), 1, "{outbox}");
    assert!(upstream.seen().is_empty());
}

#[test]
fn the_api_listener_refuses_unreadable_paths_as_the_proxy_does() {
    let upstream = RecordingUpstream::start();
    let gate = gate(&upstream);
    let unreadable = [
        "/oauth/api/v4/authenticate/user%2F..%2Fx",
        "/oauth/api/v4/authenticate/user/a%00b",
        "/oauth/api/v4/authenticate\\user",
        "/oauth/../../health",
        "/oauth/api/v4/authenticate/%252e%252e/user",
        "/health/%zz",
    ];
    for listener in [gate.api, gate.proxy] {
        for path in unreadable {
            let (status, answer) = raw_to(
                listener,
                &format!("POST {path} HTTP/1.1\r\nHost: bank.example\r\n{FORM}"),
                "type=sms_code",
            );
            assert_eq!(status, 400, "{listener} {path}: {answer}");
            assert!(answer.contains("invalid_request"), "{path}: {answer}");
        }
    }
    assert!(upstream.seen().is_empty());
    // A plain path still routes.
    let (status, answer) = raw_to(gate.api, "GET /health HTTP/1.1\r\nHost: x\r\n", "");
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn a_client_cannot_hand_the_app_a_step_up_assertion_of_its_own() {
    let upstream = RecordingUpstream::start();
    let gate = gate(&upstream);
    // Any spelling of the name, any number of copies, beside our other headers or alone.
    let heads = [
        "GET /public HTTP/1.1\r\nHost: bank.example\r\nStepgate-Assertion: forged\r\n",
        "GET /public HTTP/1.1\r\nHost: bank.example\r\nSTEPGATE-ASSERTION: a\r\nstepgate-assertion: b\r\n",
        "GET /public HTTP/1.1\r\nHost: bank.example\r\nX-Other: 1\r\nsTePgAtE-aSsErTiOn: c\r\nStepgate-Grant: junk\r\n",
    ];
    for head in heads {
        let (status, answer) = raw(&gate, head, "");
        assert_eq!(status, 200, "{head:?}: {answer}");
        let seen = upstream.seen();
        let last = seen.last().unwrap();
        assert_eq!(last.header("stepgate-assertion"), None, "{head:?}");
        assert_eq!(last.header("stepgate-grant"), None, "{head:?}");
    }
    assert_eq!(upstream.seen().len(), heads.len());
}

/// The status line and headers of a raw answer, and its body.
fn split_answer(answer: &str) -> (&str, &str) {
    answer.split_once("\r\n\r\n").unwrap_or((answer, ""))
}

/// A header's value in a raw answer's head (case-blind name).
fn answer_header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// With `require.bind`, a grant from an approval of one transfer is carried to no other
/// request, whatever the spelling: another amount, a duplicated field, the amount again in the
/// query string, duplicate JSON keys, two Content-Types, another spelling of the path. Only
/// the approved transfer reaches the app, and only the approved values.
#[test]
fn a_bound_grant_is_carried_to_no_other_spelling_of_the_request() {
    let upstream = RecordingUpstream::start();
    let yaml = edge_yaml(&upstream, "Pay {form.amount} to {form.iban}").replacen(
        "require: { auth_type: sms_code }",
        "require: { auth_type: sms_code, freshness_seconds: 300, bind: [form.amount, form.iban] }",
        1,
    );
    assert!(yaml.contains("bind: [form.amount, form.iban]"), "{yaml}");
    let gate = GateBuilder::memory().yaml(&yaml).start();
    gate.wait_for_proxy();
    let host = "Host: bank.example\r\n";
    let approved = "amount=10&iban=NL91ABNA0417164300";

    // Approve the transfer: challenge, then the SMS code on the verify URI.
    let head =
        format!("POST /transfer HTTP/1.1\r\n{host}{IDENTITY}{FORM}Accept: application/json\r\n");
    let (status, answer) = raw(&gate, &head, approved);
    assert_eq!(status, 401, "{answer}");
    let challenge: serde_json::Value = serde_json::from_str(split_answer(&answer).1).unwrap();
    let outbox = std::fs::read_to_string(gate.dir().join("outbox.jsonl")).unwrap();
    let sms: serde_json::Value = serde_json::from_str(outbox.lines().last().unwrap()).unwrap();
    let code: String = sms["body"]
        .as_str()
        .unwrap()
        .rsplit(|c: char| !c.is_ascii_digit())
        .find(|part| part.len() == 6)
        .unwrap()
        .to_owned();
    let verify = format!(
        "POST {} HTTP/1.1\r\n{host}{IDENTITY}{FORM}Stepgate-Binding: {}\r\n",
        challenge["verify_uri"].as_str().unwrap(),
        challenge["binding_token"].as_str().unwrap()
    );
    let (status, answer) = raw(&gate, &verify, &format!("sms_code={code}"));
    assert_eq!(status, 200, "{answer}");
    let grant = answer_header(split_answer(&answer).0, "stepgate-grant").expect("a grant");
    assert_eq!(upstream.seen_on("/transfer").len(), 1);
    let sms_sent = std::fs::read_to_string(gate.dir().join("outbox.jsonl"))
        .unwrap()
        .lines()
        .count();

    let with_grant = |path: &str, extra: &str| {
        format!(
            "POST {path} HTTP/1.1\r\n{host}{IDENTITY}Stepgate-Grant: {grant}\r\nAccept: application/json\r\n{extra}"
        )
    };
    let json = "Content-Type: application/json\r\n";
    for (head, body, expected) in [
        // Another amount: a new step-up.
        (
            with_grant("/transfer", FORM),
            "amount=99999&iban=NL91ABNA0417164300",
            401,
        ),
        // Another spelling of the path with another amount: still a new step-up.
        (
            with_grant("/TRANSFER", FORM),
            "amount=99999&iban=NL91ABNA0417164300",
            401,
        ),
        (
            with_grant("/transfer;x=1", FORM),
            "amount=99999&iban=NL91ABNA0417164300",
            401,
        ),
        // The approved values, but readable another way: refused before anything is sent.
        (
            with_grant("/transfer", FORM),
            "amount=10&iban=NL91ABNA0417164300&amount=99999",
            400,
        ),
        (with_grant("/transfer?amount=99999", FORM), approved, 400),
        (
            with_grant("/transfer", json),
            r#"{"amount":"10","iban":"NL91ABNA0417164300","amount":"99999"}"#,
            400,
        ),
        (
            with_grant("/transfer", &format!("{FORM}{json}")),
            approved,
            400,
        ),
    ] {
        let (status, answer) = raw(&gate, &head, body);
        assert_eq!(status, expected, "{head}{body}: {answer}");
    }
    assert_eq!(
        upstream.seen_on("/transfer").len(),
        1,
        "no other request reached the app on the grant"
    );

    // The approved values pass on the grant, and the app gets exactly them.
    let (status, answer) = raw(&gate, &with_grant("/transfer", FORM), approved);
    assert_eq!(status, 200, "{answer}");
    let seen = upstream.seen_on("/transfer");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, approved.as_bytes());
    let sms_now = std::fs::read_to_string(gate.dir().join("outbox.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(
        sms_now,
        sms_sent + 3,
        "each new step-up sent its own code; refusals none"
    );
}
