//! Approvals bound to the request (PSD2 RTS Art. 5, dynamic linking), end to end on the memory
//! store and on Redis (issue #13, item 1): with `require.bind`, the grant from an approval
//! admits a later request only when it carries exactly the approved values; another amount or
//! payee needs its own approval, and nothing of it reaches the app before. A bound request that a
//! grant admits reaches the app byte for byte. Without `bind`, a fresh grant admits any request
//! to the policy (the documented behaviour).

use reqwest::StatusCode;
use serde_json::Value;

use crate::fakes::upstream::RecordingUpstream;
use crate::harness::{Gate, Store, client, on_both_stores};
use crate::proxy::{codes, proxy_yaml};

const BOUND: &str = "bind: [form.amount, form.iban]";

fn gate(store: Store, upstream: &RecordingUpstream, bind: bool) -> Gate {
    let mut yaml = proxy_yaml(upstream, 300, "challenge", "");
    if bind {
        yaml = yaml.replace(
            "require: { auth_type: sms_code, freshness_seconds: 300 }",
            &format!("require: {{ auth_type: sms_code, freshness_seconds: 300, {BOUND} }}"),
        );
        assert!(yaml.contains(BOUND), "{yaml}");
    }
    let gate = store.builder().yaml(&yaml).start();
    gate.wait_for_proxy();
    gate
}

async fn transfer(gate: &Gate, body: &str, grant: Option<&str>) -> reqwest::Response {
    let mut request = client()
        .post(gate.proxy_url("/transfer"))
        .header("x-user-id", "alice")
        .header("x-user-phone", "+31612345678")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(body.to_owned());
    if let Some(grant) = grant {
        request = request.header("stepgate-grant", grant);
    }
    request.send().await.unwrap()
}

/// Approves `body` with the SMS code; returns the grant.
async fn approve(gate: &Gate, body: &str) -> String {
    let response = transfer(gate, body, None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge: Value = response.json().await.unwrap();
    let code = codes(gate).last().unwrap().clone();
    let response = client()
        .post(gate.proxy_url(challenge["verify_uri"].as_str().unwrap()))
        .header("x-user-id", "alice")
        .header("x-user-phone", "+31612345678")
        .header(
            "stepgate-binding",
            challenge["binding_token"].as_str().unwrap(),
        )
        .form(&[("sms_code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.headers()["stepgate-grant"]
        .to_str()
        .unwrap()
        .to_owned()
}

async fn a_bound_grant_admits_only_the_approved_values(store: Store) {
    let upstream = RecordingUpstream::start();
    let gate = gate(store, &upstream, true);
    let approved = "amount=10&iban=NL91ABNA0417164300";
    let grant = approve(&gate, approved).await;
    assert_eq!(upstream.seen_on("/transfer").len(), 1);
    let sms = codes(&gate).len();
    assert!(
        std::fs::read_to_string(gate.dir().join("outbox.jsonl"))
            .unwrap()
            .contains("Approve transfer of 10 EUR to NL91ABNA0417164300"),
        "the SMS shows the bound values"
    );

    // The same values again pass on the grant, body intact, with no new code.
    let response = transfer(&gate, approved, Some(&grant)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = upstream.seen_on("/transfer");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, approved.as_bytes());
    assert_eq!(codes(&gate).len(), sms);

    // The same values in another order are the same values.
    let response = transfer(&gate, "iban=NL91ABNA0417164300&amount=10", Some(&grant)).await;
    assert_eq!(response.status(), StatusCode::OK);

    // Another amount, another payee, or a bound field left out: a new approval.
    for other in [
        "amount=9999&iban=NL91ABNA0417164300",
        "amount=10&iban=GB33BUKB20201555555555",
        "amount=10&iban=NL91ABNA0417164301",
    ] {
        let response = transfer(&gate, other, Some(&grant)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{other}");
    }
    assert_eq!(
        upstream.seen_on("/transfer").len(),
        3,
        "nothing else reached the app"
    );
    assert_eq!(
        codes(&gate).len(),
        sms + 3,
        "each asked for its own approval"
    );

    // A bound field that is missing, empty, or would not be shown in full is refused before any
    // code is sent: the user must see exactly what the approval binds.
    let long_amount = format!("amount=1{}&iban=NL91ABNA0417164300", "0".repeat(80));
    for unshown in [
        "iban=NL91ABNA0417164300",
        "amount=&iban=NL91ABNA0417164300",
        long_amount.as_str(),
    ] {
        let response = transfer(&gate, unshown, None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{unshown}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "ambiguous_request", "{body}");
    }
    assert_eq!(codes(&gate).len(), sms + 3);

    // A duplicated bound field is ambiguous and refused before any code is sent.
    let response = transfer(
        &gate,
        "amount=10&iban=NL91ABNA0417164300&amount=9999",
        Some(&grant),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(codes(&gate).len(), sms + 3);
}

async fn without_bind_a_fresh_grant_admits_any_request_to_the_policy(store: Store) {
    let upstream = RecordingUpstream::start();
    let gate = gate(store, &upstream, false);
    let grant = approve(&gate, "amount=10&iban=NL91ABNA0417164300").await;
    let response = transfer(
        &gate,
        "amount=9999&iban=GB33BUKB20201555555555",
        Some(&grant),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.seen_on("/transfer").len(), 2);
}

on_both_stores!(
    a_bound_grant_admits_only_the_approved_values,
    without_bind_a_fresh_grant_admits_any_request_to_the_policy,
);
