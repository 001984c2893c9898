//! The SMS interstitial in a real browser: headless Chromium, driven over the DevTools Protocol
//! (`cdp`), submits an upstream's form through the proxy, lands on the code page, enters a wrong
//! code and then the right one, and ends on the upstream's answer to the original POST. Proves
//! what plain HTTP tests cannot: the pages work under their own Content-Security-Policy, the
//! browser keeps the binding cookie and sends the CSRF field, and redirects chain as intended.

use std::time::Duration;

use serde_json::json;

use crate::cdp::{Browser, Page};
use crate::fakes::upstream::RecordingUpstream;
use crate::harness::{GateBuilder, eventually};
use crate::proxy::{codes, proxy_yaml};

/// Generous: Chromium shares two cores with the other tests; polling keeps the happy path fast.
const WITHIN: Duration = Duration::from_secs(30);
const FORM_BODY: &str = "amount=25&iban=NL91ABNA0417164300";
/// Loaded by the canary: `img-src 'self' data:` must refuse it (never fetched).
const CANARY_IMAGE: &str = "http://canary.invalid/csp.png";

/// Runs `action` (which navigates) and waits until a new document satisfies `ready`. The old
/// document is marked first, so a check that also holds on it cannot pass too early.
pub(crate) async fn navigate_by(page: &Page, action: &str, ready: &str, what: &str) {
    page.evaluate("window.__stepgateOld = true").await.unwrap();
    page.evaluate(action).await.unwrap();
    let check = format!("!window.__stepgateOld && document.readyState === 'complete' && ({ready})");
    page.wait_for(&check, WITHIN, what).await;
}

pub(crate) async fn text_of(page: &Page, id: &str) -> String {
    let expression = format!("document.getElementById('{id}').innerText");
    page.evaluate(&expression)
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// Console and log lines that report a Content-Security-Policy violation.
fn csp_reports(page: &Page) -> Vec<String> {
    let logged = page.events("Log.entryAdded").into_iter().map(|params| {
        params["entry"]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    let console = page
        .events("Runtime.consoleAPICalled")
        .into_iter()
        .map(|params| {
            params["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|arg| arg["value"].as_str().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" ")
        });
    logged
        .chain(console)
        .filter(|text| text.contains("Content Security Policy"))
        .collect()
}

#[tokio::test]
async fn a_browser_walks_the_sms_interstitial_and_its_form_post_reaches_the_upstream_once() {
    let upstream = RecordingUpstream::start();
    let gate = GateBuilder::memory()
        .yaml(&proxy_yaml(&upstream, 300, "challenge", ""))
        .start();
    gate.wait_for_proxy();
    let browser = Browser::launch();
    let page = browser.new_page().await;
    for domain in ["Page", "Runtime", "Log", "Network"] {
        page.call(&format!("{domain}.enable"), json!({})).await;
    }
    // What the app's login layer in front of stepgate would add to every request.
    page.call(
        "Network.setExtraHTTPHeaders",
        json!({ "headers": { "X-User-Id": "alice", "X-User-Phone": "+31612345678" } }),
    )
    .await;

    page.navigate(&gate.proxy_url("/form")).await;
    page.wait_for(
        "document.readyState === 'complete' && !!document.getElementById('send')",
        WITHIN,
        "the upstream's form",
    )
    .await;

    // Submitting it lands on the code page (303 from the proxy); nothing went upstream yet.
    navigate_by(
        &page,
        "document.getElementById('send').click()",
        "location.pathname.startsWith('/.stepgate/tx/') && !!document.getElementById('sms_code')",
        "the code page",
    )
    .await;
    assert_eq!(
        text_of(&page, "message").await,
        "Approve transfer of 25 EUR to NL91ABNA0417164300"
    );
    assert!(upstream.seen_on("/transfer").is_empty());
    eventually(WITHIN, "the SMS is sent", || async {
        !codes(&gate).is_empty()
    })
    .await;
    let code = codes(&gate).pop().unwrap();

    // A wrong code: the page comes back with the error, ready for another try.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    navigate_by(
        &page,
        &format!(
            "document.getElementById('sms_code').value = '{wrong}'; \
             document.getElementById('verify-button').click()"
        ),
        "!!document.getElementById('error')",
        "the wrong-code error",
    )
    .await;
    let error = text_of(&page, "error").await;
    assert!(error.contains("Wrong code"), "{error}");
    let usable = page
        .evaluate(
            "location.pathname.startsWith('/.stepgate/tx/') \
             && document.getElementById('sms_code').value === '' \
             && !document.getElementById('verify-button').disabled \
             && !!document.querySelector('#verify-form input[name=csrf]').value",
        )
        .await
        .unwrap();
    assert_eq!(
        usable,
        json!(true),
        "the form is there again, empty, with its CSRF field"
    );
    assert!(upstream.seen_on("/transfer").is_empty());

    // Neither page broke its own CSP. The canary (an image from another origin) proves a
    // violation would be reported here, and that the reports so far have all arrived.
    page.evaluate(&format!(
        "document.body.appendChild(document.createElement('img')).src = '{CANARY_IMAGE}'"
    ))
    .await
    .unwrap();
    eventually(WITHIN, "the canary's CSP report", || async {
        csp_reports(&page)
            .iter()
            .any(|text| text.contains(CANARY_IMAGE))
    })
    .await;
    let violations: Vec<String> = csp_reports(&page)
        .into_iter()
        .filter(|text| !text.contains(CANARY_IMAGE))
        .collect();
    assert!(violations.is_empty(), "CSP violations: {violations:#?}");

    // The right code: the original POST goes upstream, and the browser shows its answer.
    navigate_by(
        &page,
        &format!(
            "document.getElementById('sms_code').value = '{code}'; \
             document.getElementById('verify-button').click()"
        ),
        "document.body.innerText.includes('upstream saw POST /transfer')",
        "the upstream's answer",
    )
    .await;
    let shown = page.evaluate("document.body.innerText").await.unwrap();
    assert_eq!(
        shown.as_str().unwrap().trim(),
        format!("upstream saw POST /transfer ({} bytes)", FORM_BODY.len())
    );
    let seen = upstream.seen_on("/transfer");
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].body, FORM_BODY.as_bytes());
    assert_eq!(seen[0].header("x-user-id").as_deref(), Some("alice"));
    assert_eq!(codes(&gate).len(), 1, "one SMS for the whole walk");

    // The grant is a cookie scripts cannot read.
    let cookies = page
        .call(
            "Network.getCookies",
            json!({ "urls": [gate.proxy_url("/")] }),
        )
        .await;
    let grant = cookies["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|cookie| cookie["name"] == "stepgate_grant")
        .unwrap_or_else(|| panic!("no grant cookie in {cookies}"));
    assert_eq!(grant["httpOnly"], json!(true), "{grant}");
}
