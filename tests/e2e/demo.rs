//! `stepgate demo` as a newcomer runs it: one process with the demo bank behind the gateway, the
//! memory store and the console SMS gateway. The bank signs in directly; its pages come through
//! the proxy; a transfer through the proxy is challenged, its code appears on the demo's
//! standard output, and the verified transfer reaches the bank exactly once.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{BINARY, client, eventually, free_addr, signal};

/// A running `stepgate demo`, its standard output and error captured line by line.
struct Demo {
    child: Child,
    proxy: SocketAddr,
    api: SocketAddr,
    bank: SocketAddr,
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
        let (proxy, api, metrics, bank) = (free_addr(), free_addr(), free_addr(), free_addr());
        let mut child = Command::new(BINARY)
            .arg("demo")
            .args(["--proxy", &proxy.to_string()])
            .args(["--api", &api.to_string()])
            .args(["--metrics", &metrics.to_string()])
            .args(["--bank", &bank.to_string()])
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

    /// Signs in at the bank directly and returns the `demo_session` cookie pair.
    async fn sign_in(&self) -> String {
        let response = no_redirects()
            .post(self.bank_url("/login"))
            .form(&[("user", "alice"), ("phone_number", "+31612345678")])
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
        let page = client()
            .get(self.bank_url("/account"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let count = page
            .split("<strong id=\"received\">")
            .nth(1)
            .and_then(|rest| rest.split('<').next())
            .unwrap_or_else(|| panic!("no transfer count in:\n{page}"));
        count.parse().unwrap()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    assert!(banner.contains("SMS codes are printed here"), "{banner}");
    eventually(
        Duration::from_secs(5),
        "the console gateway's warning",
        || {
            let logged = demo.stderr_text();
            async move { logged.contains("WARN") && logged.contains("for demos only") }
        },
    )
    .await;

    let cookie = demo.sign_in().await;
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

// ---- Needs the proxy's step-up flow (being built): enable once it has landed. ----------------
#[tokio::test]
async fn a_transfer_through_the_demo_is_approved_with_the_printed_code_and_arrives_once() {
    let demo = Demo::start().await;
    let cookie = demo.sign_in().await;

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
