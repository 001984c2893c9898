//! `stepgate demo` as a newcomer runs it: one process with the demo bank behind the gateway, the
//! demo phone, the memory store and the console push and SMS. The bank signs in directly; its
//! pages come through the proxy. In a real browser, alice's transfer is pushed to her demo
//! phone, which shows the amount and IBAN it signs and takes the number the bank's page shows;
//! the approved transfer reaches the bank exactly once, bound and asserted. A wrong number
//! fails it. A user without a phone falls back to an SMS code printed on standard output.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::browser::{navigate_by, text_of};
use crate::cdp::Browser;
use crate::harness::{BINARY, client, eventually, free_addr, signal};

/// Generous: Chromium shares two cores with the other tests; polling keeps the happy path fast.
const WITHIN: Duration = Duration::from_secs(30);
const IBAN: &str = "NL91ABNA0417164300";

/// A running `stepgate demo`, its standard output and error captured line by line.
struct Demo {
    child: Child,
    proxy: SocketAddr,
    api: SocketAddr,
    bank: SocketAddr,
    phone: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// Collects the lines of `stream` as they come (the pipe never fills up).
fn capture(stream: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl Demo {
    /// Starts the demo on free ports and waits until the bank and the API answer; starts it
    /// again on fresh ports in the rare case another process took one first.
    async fn start() -> Demo {
        for _ in 0..3 {
            if let Some(demo) = Self::try_start().await {
                return demo;
            }
        }
        Self::try_start()
            .await
            .expect("the demo's ports stayed taken")
    }

    /// `None` when the demo stopped because one of its addresses was in use.
    async fn try_start() -> Option<Demo> {
        let (proxy, api, metrics, bank, phone) = (
            free_addr(),
            free_addr(),
            free_addr(),
            free_addr(),
            free_addr(),
        );
        let mut child = Command::new(BINARY)
            .arg("demo")
            .args(["--proxy", &proxy.to_string()])
            .args(["--api", &api.to_string()])
            .args(["--metrics", &metrics.to_string()])
            .args(["--bank", &bank.to_string()])
            .args(["--phone", &phone.to_string()])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stepgate demo");
        let stdout = capture(child.stdout.take().unwrap());
        let stderr = capture(child.stderr.take().unwrap());
        let demo = Demo {
            child,
            proxy,
            api,
            bank,
            phone,
            stdout,
            stderr,
        };
        let (bank_url, health_url) = (demo.bank_url("/"), format!("http://{}/health", demo.api));
        let up = |url: String| async move {
            matches!(client().get(url).send().await, Ok(r) if r.status() == StatusCode::OK)
        };
        let mut demo = demo;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(up(bank_url.clone()).await && up(health_url.clone()).await) {
            if let Ok(Some(_)) = demo.child.try_wait() {
                // Give the output readers a moment to collect the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let said = format!("{}{}", demo.stdout_text(), demo.stderr_text());
                if said.to_ascii_lowercase().contains("address already in use") {
                    return None;
                }
            }
            assert!(
                Instant::now() < deadline,
                "stepgate demo did not come up; stdout:\n{}\nstderr:\n{}",
                demo.stdout_text(),
                demo.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(demo)
    }

    fn bank_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.bank)
    }

    fn proxy_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    fn phone_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.phone)
    }

    /// Waits until the demo phone has enrolled itself for alice.
    async fn wait_for_phone(&self) {
        let url = self.phone_url("/");
        eventually(WITHIN, "the demo phone enrolled", || {
            let url = url.clone();
            async move {
                match client().get(url).send().await {
                    Ok(response) if response.status() == StatusCode::OK => response
                        .text()
                        .await
                        .is_ok_and(|page| page.contains("Enrolled for <strong>alice</strong>")),
                    _ => false,
                }
            }
        })
        .await;
    }

    fn stdout_text(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// The SMS lines printed so far.
    fn sms_lines(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.starts_with("SMS to "))
            .cloned()
            .collect()
    }

    /// Signs in as `user` at the bank directly and returns the `demo_session` cookie pair.
    async fn sign_in(&self, user: &str) -> String {
        let response = no_redirects()
            .post(self.bank_url("/login"))
            .form(&[("user", user), ("phone_number", "+31612345678")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let set_cookie = response.headers()["set-cookie"].to_str().unwrap();
        let pair = set_cookie.split(';').next().unwrap().to_owned();
        assert!(pair.starts_with("demo_session="), "{set_cookie}");
        pair
    }

    /// How many transfers the bank says it received, read from the bank directly.
    async fn received(&self, cookie: &str) -> u64 {
        let page = page_text(
            client()
                .get(self.bank_url("/account"))
                .header("cookie", cookie),
        )
        .await;
        between(&page, "<strong id=\"received\">", '<')
            .parse()
            .unwrap()
    }
}

impl Drop for Demo {
    /// SIGTERM first, so the demo removes its temporary key and phone folder; SIGKILL after 5 s.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of the page `request` answers.
async fn page_text(request: reqwest::RequestBuilder) -> String {
    request.send().await.unwrap().text().await.unwrap()
}

/// The text of `page` after `marker`, up to `end`.
fn between<'a>(page: &'a str, marker: &str, end: char) -> &'a str {
    page.split(marker)
        .nth(1)
        .and_then(|rest| rest.split(end).next())
        .unwrap_or_else(|| panic!("no {marker:?} in:\n{page}"))
}

fn no_redirects() -> reqwest::Client {
    let _ = client(); // installs the TLS provider reqwest needs
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The six-digit code at the end of an SMS line.
fn code_in(line: &str) -> String {
    line.rsplit(|c: char| !c.is_ascii_digit())
        .find(|part| part.len() == 6)
        .unwrap_or_else(|| panic!("no code in {line:?}"))
        .to_owned()
}

#[tokio::test]
async fn the_demo_serves_the_bank_through_the_gateway_and_prints_where_codes_appear() {
    let mut demo = Demo::start().await;

    let banner = demo.stdout_text();
    assert!(
        banner.contains(&format!("http://{}/", demo.proxy)),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("alice's phone at http://{}/", demo.phone)),
        "{banner}"
    );
    assert!(banner.contains("falls back to an SMS code"), "{banner}");
    eventually(
        Duration::from_secs(5),
        "the console push and SMS warnings",
        || {
            let logged = demo.stderr_text();
            async move {
                logged.contains("console SMS gateway prints every SMS")
                    && logged.contains("console push provider prints pushes")
            }
        },
    )
    .await;

    let cookie = demo.sign_in("alice").await;
    let wait_for_proxy = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(demo.proxy).is_err() {
        assert!(
            Instant::now() < wait_for_proxy,
            "the proxy did not come up:\n{}",
            demo.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = client()
        .get(demo.proxy_url("/account"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.unwrap();
    assert!(page.contains("Hello, alice"), "{page}");
    assert!(page.contains("id=\"transfer-button\""), "{page}");
    assert_eq!(demo.received(&cookie).await, 0);

    // SIGTERM stops the gateway and the bank with it.
    signal(demo.child.id(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = demo.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "stepgate demo did not stop:\n{}",
            demo.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}\n{}", demo.stderr_text());
}

#[tokio::test]
async fn a_user_without_a_phone_approves_a_transfer_with_the_printed_sms_code_and_it_arrives_once()
{
    let demo = Demo::start().await;
    // bob has no phone enrolled: the push type falls back to its SMS type.
    let cookie = demo.sign_in("bob").await;

    // An API client (Accept: application/json) gets the JSON challenge; nothing reaches the bank.
    let response = client()
        .post(demo.proxy_url("/transfer"))
        .header("cookie", &cookie)
        .header("accept", "application/json")
        .form(&[("amount", "10"), ("iban", "NL91ABNA0417164300")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge: Value = response.json().await.unwrap();
    assert_eq!(challenge["error"], "step_up_required", "{challenge}");
    assert_eq!(challenge["auth_method"], "sms", "{challenge}");
    assert_eq!(demo.received(&cookie).await, 0);

    // The code is printed on the demo's standard output, the number masked.
    eventually(
        Duration::from_secs(10),
        "the SMS on standard output",
        || {
            let printed = !demo.sms_lines().is_empty();
            async move { printed }
        },
    )
    .await;
    let line = demo.sms_lines().pop().unwrap();
    assert!(line.starts_with("SMS to +31*******78: "), "{line}");
    assert!(!line.contains("+31612345678"), "{line}");
    let code = code_in(&line);

    // The code, with the binding token, sends the held transfer to the bank: its page answers.
    let verify = |code: String| {
        client()
            .post(demo.proxy_url(challenge["verify_uri"].as_str().unwrap()))
            .header("cookie", &cookie)
            .header(
                "stepgate-binding",
                challenge["binding_token"].as_str().unwrap(),
            )
            .form(&[("sms_code", code)])
            .send()
    };
    let response = verify(code.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("Transferred 10.00 EUR to NL91ABNA0417164300"),
        "{page}"
    );
    // The bank checked stepgate's signed step-up assertion on the transfer it received.
    assert!(
        page.contains("Step-up verified: stepgate&#39;s signed assertion (sms, transaction"),
        "{page}"
    );
    // Dynamic linking: the approval is bound to the amount and IBAN the bank received.
    assert!(
        page.contains("The approval is bound to this amount and IBAN."),
        "{page}"
    );
    assert_eq!(demo.received(&cookie).await, 1);

    // The same code cannot send it again.
    let again = verify(code).await.unwrap();
    assert!(again.status().is_client_error(), "{}", again.status());
    assert_eq!(demo.received(&cookie).await, 1);

    // A transfer sent to the bank around the gateway carries no assertion, and the bank says so.
    let around = client()
        .post(demo.bank_url("/transfer"))
        .header("cookie", &cookie)
        .form(&[("amount", "1.00"), ("iban", "NL91ABNA0417164300")])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        around.contains("No step-up assertion: this request did not come through stepgate."),
        "{around}"
    );
}

/// The number the bank's step-up page tells the user to type: "Type <strong>47</strong> ...".
fn number_on_page(text: &str) -> u8 {
    text.split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no number in {text:?}"))
}

#[tokio::test]
async fn in_a_browser_alice_types_the_number_the_bank_shows_on_her_demo_phone_and_the_bound_transfer_arrives_once()
 {
    let demo = Demo::start().await;
    demo.wait_for_phone().await;
    let browser = Browser::launch();
    let bank = browser.new_page().await;
    let phone = browser.new_page().await;
    for page in [&bank, &phone] {
        page.call("Page.enable", serde_json::json!({})).await;
        page.call("Runtime.enable", serde_json::json!({})).await;
    }

    // The bank, through the gateway: sign in (alice is prefilled), transfer.
    bank.navigate(&demo.proxy_url("/")).await;
    bank.wait_for(
        "document.readyState === 'complete' && !!document.getElementById('login-button')",
        WITHIN,
        "the sign-in form",
    )
    .await;
    navigate_by(
        &bank,
        "document.getElementById('login-button').click()",
        "!!document.getElementById('transfer-button')",
        "the account page",
    )
    .await;
    navigate_by(
        &bank,
        &format!(
            "document.getElementById('amount').value = '12.50'; \
             document.getElementById('iban').value = '{IBAN}'; \
             document.getElementById('transfer-button').click()"
        ),
        "location.pathname.startsWith('/.stepgate/tx/') && !!document.getElementById('number')",
        "the step-up page with its number",
    )
    .await;
    assert_eq!(
        text_of(&bank, "message").await,
        format!("Approve transfer of 12.50 EUR to {IBAN}")
    );
    let instruction = text_of(&bank, "number").await;
    assert!(instruction.starts_with("Type "), "{instruction}");
    let number = number_on_page(&instruction);
    let cookie = demo.sign_in("alice").await;
    assert_eq!(demo.received(&cookie).await, 0);
    assert!(
        demo.stdout_text().contains(&format!(
            "Push to android device (push config demo-phone): Approve transfer of 12.50 EUR to {IBAN}"
        )),
        "{}",
        demo.stdout_text()
    );

    // The phone: the push shows up in its list; it shows what it signs and asks for the number
    // (no hint: typed number matching offers no choices).
    phone.navigate(&demo.phone_url("/")).await;
    phone
        .wait_for(
            "!!document.querySelector('a.pending-push')",
            WITHIN,
            "the push on the phone",
        )
        .await;
    navigate_by(
        &phone,
        "document.querySelector('a.pending-push').click()",
        "!!document.getElementById('number') && !!document.getElementById('approve')",
        "the approval screen",
    )
    .await;
    let signed = text_of(&phone, "signing-data").await;
    assert!(
        signed.contains("12.50") && signed.contains(IBAN),
        "{signed}"
    );
    let radios = phone
        .evaluate("document.querySelectorAll('input[type=radio]').length")
        .await
        .unwrap();
    assert_eq!(radios, serde_json::json!(0));
    navigate_by(
        &phone,
        &format!(
            "document.getElementById('number').value = '{number}'; \
             document.getElementById('approve').click()"
        ),
        "!!document.getElementById('outcome')",
        "the phone's answer",
    )
    .await;
    assert_eq!(
        text_of(&phone, "outcome").await,
        "Approved. Your browser continues by itself."
    );

    // The bank's page continues by itself: the held transfer reaches the bank, once, with
    // stepgate's assertion of a push approval bound to this amount and IBAN.
    bank.wait_for(
        "!!document.getElementById('confirmation')",
        WITHIN,
        "the bank's receipt",
    )
    .await;
    assert_eq!(
        text_of(&bank, "confirmation").await,
        format!("Transferred 12.50 EUR to {IBAN}")
    );
    let step_up = text_of(&bank, "step-up").await;
    assert!(
        step_up.contains("Step-up verified: stepgate's signed assertion (swk")
            && step_up.contains("The approval is bound to this amount and IBAN."),
        "{step_up}"
    );
    assert_eq!(demo.received(&cookie).await, 1);
}

#[tokio::test]
async fn a_wrong_number_typed_on_the_demo_phone_fails_the_transfer_and_nothing_reaches_the_bank() {
    let demo = Demo::start().await;
    demo.wait_for_phone().await;
    let cookie = demo.sign_in("alice").await;
    let challenge: Value = client()
        .post(demo.proxy_url("/transfer"))
        .header("cookie", &cookie)
        .header("accept", "application/json")
        .form(&[("amount", "30"), ("iban", IBAN)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(challenge["auth_method"], "push", "{challenge}");
    assert_eq!(challenge["number_matching"], "type", "{challenge}");
    let number = challenge["number"].as_u64().unwrap();
    let tx = challenge["transaction_id"].as_str().unwrap();

    let screen = page_text(client().get(demo.phone_url(&format!("/tx/{tx}")))).await;
    let token = between(&screen, "name=\"token\" value=\"", '"');
    let answer = |token: &str, number: String| {
        client().post(demo.phone_url(&format!("/tx/{tx}"))).form(&[
            ("token", token.to_owned()),
            ("decision", "approve".into()),
            ("number", number),
        ])
    };

    // A form from anywhere but the phone's own page is refused before anything is sent.
    let forged = answer("forged", number.to_string()).send().await.unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);

    let wrong = (number + 1) % 100;
    let page = page_text(answer(token, wrong.to_string())).await;
    assert!(page.contains("That is not the number shown"), "{page}");

    let status: Value = client()
        .get(demo.proxy_url(&format!("/.stepgate/tx/{tx}/status")))
        .header("cookie", &cookie)
        .header(
            "stepgate-binding",
            challenge["binding_token"].as_str().unwrap(),
        )
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "failed", "{status}");
    // The right number afterwards cannot bring the failed transfer back.
    let late = page_text(answer(token, number.to_string())).await;
    assert!(!late.contains("Approved."), "{late}");
    assert_eq!(demo.received(&cookie).await, 0);
}
