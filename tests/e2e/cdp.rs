//! A tiny Chrome DevTools Protocol client for end-to-end tests that need a real browser: it
//! starts headless Chromium (`Browser`) on a private profile and drives one tab (`Page`) over a
//! websocket: calls with their answers, and every event kept for later assertions.
//!
//! Only what the browser tests use: JSON in, JSON out, no generated protocol types. Chromium is
//! `chromium` on the PATH (`scripts/with-deps` installs it) or `STEPGATE_TEST_CHROMIUM`.

use std::collections::HashMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// How long one protocol call may take before the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Chromium may take to open its DevTools port (seconds on a busy 2-core box).
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);

/// A headless Chromium process with its own profile. Killed (with its helper processes) on drop.
pub struct Browser {
    child: Child,
    ws_url: String,
    log: PathBuf,
    _dir: TempDir,
}

impl Browser {
    /// Starts Chromium and waits until its DevTools endpoint is announced in
    /// `<profile>/DevToolsActivePort` (first line the port, second the browser target's path).
    pub fn launch() -> Browser {
        let dir = tempfile::tempdir().expect("temp dir");
        let profile = dir.path().join("profile");
        let log = dir.path().join("chromium.log");
        let program =
            std::env::var("STEPGATE_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
        let child = Command::new(&program)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("chromium log"))
            // Its own process group, so drop can end the renderer and helper processes too.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} must be installed (scripts/with-deps installs it): {e}")
            });
        let mut browser = Browser {
            child,
            ws_url: String::new(),
            log,
            _dir: dir,
        };
        let announced = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        loop {
            let text = fs::read_to_string(&announced).unwrap_or_default();
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next())
                && path.starts_with("/devtools/browser/")
            {
                browser.ws_url = format!("ws://127.0.0.1:{}{path}", port.trim());
                return browser;
            }
            if let Ok(Some(status)) = browser.child.try_wait() {
                panic!(
                    "chromium exited with {status}; log:\n{}",
                    browser.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port within {LAUNCH_TIMEOUT:?}; log:\n{}",
                browser.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Chromium's stderr so far (for failure messages).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Opens a new tab on `about:blank` and attaches to it over a fresh connection.
    pub async fn new_page(&self) -> Page {
        let connection = Connection::open(&self.ws_url).await;
        let target = connection
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await
            .unwrap_or_else(|e| panic!("Target.createTarget: {e}"));
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = connection
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await
            .unwrap_or_else(|e| panic!("Target.attachToTarget: {e}"));
        let session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        Page {
            connection,
            session,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group while the leader is still unreaped, so its id cannot have been reused.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// One websocket to the browser endpoint: a writer task, a reader task that routes answers by
/// `id` and keeps every event.
struct Connection {
    outgoing: mpsc::UnboundedSender<Message>,
    pending: Pending,
    events: Arc<Mutex<Vec<Value>>>,
    next_id: AtomicU64,
    tasks: Vec<JoinHandle<()>>,
}

impl Connection {
    async fn open(ws_url: &str) -> Connection {
        let (socket, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .unwrap_or_else(|e| panic!("connect to {ws_url}: {e}"));
        let (mut sink, mut stream) = socket.split();
        let (outgoing, mut queue) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let reader = {
            let (pending, events) = (pending.clone(), events.clone());
            tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    if let Some(id) = value.get("id").and_then(Value::as_u64) {
                        let answer = match value.get("error") {
                            Some(error) => Err(error.to_string()),
                            None => Ok(value.get("result").cloned().unwrap_or(Value::Null)),
                        };
                        if let Some(waiter) = pending.lock().unwrap().remove(&id) {
                            let _ = waiter.send(answer);
                        }
                    } else {
                        events.lock().unwrap().push(value);
                    }
                }
                // Closed: every caller still waiting learns it now.
                pending.lock().unwrap().clear();
            })
        };
        Connection {
            outgoing,
            pending,
            events,
            next_id: AtomicU64::new(1),
            tasks: vec![writer, reader],
        }
    }

    /// Sends one command (to a session, or to the browser itself) and waits for its answer.
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        let (answer, waiter) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, answer);
        self.outgoing
            .send(Message::Text(command.to_string().into()))
            .map_err(|_| format!("{method}: the DevTools connection is closed"))?;
        match tokio::time::timeout(CALL_TIMEOUT, waiter).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(format!("{method}: the DevTools connection closed")),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(format!("{method}: no answer within {CALL_TIMEOUT:?}"))
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One browser tab, attached with a flat session.
pub struct Page {
    connection: Connection,
    session: String,
}

impl Page {
    /// Sends a command to this tab; a protocol error fails the test.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// Sends a command to this tab and returns the protocol error instead of failing.
    pub async fn try_call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.connection
            .call(Some(&self.session), method, params)
            .await
    }

    /// Starts loading `url` (not waiting for the load: poll with [`Page::wait_for`]).
    pub async fn navigate(&self, url: &str) {
        let answer = self.call("Page.navigate", json!({ "url": url })).await;
        if let Some(error) = answer.get("errorText").and_then(Value::as_str) {
            panic!("navigating to {url}: {error}");
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its JSON value, or the
    /// exception or protocol error as text (e.g. while a navigation swaps the document).
    pub async fn evaluate(&self, expression: &str) -> Result<Value, String> {
        let answer = self
            .try_call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(exception) = answer.get("exceptionDetails") {
            return Err(exception.to_string());
        }
        Ok(answer["result"]
            .get("value")
            .cloned()
            .unwrap_or(Value::Null))
    }

    /// Polls `expression` every 50 ms until it evaluates to a truthy value and returns that value.
    /// Errors count as "not yet" (the document may be between two pages).
    pub async fn wait_for(&self, expression: &str, within: Duration, what: &str) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let last = match self.evaluate(expression).await {
                Ok(value) if truthy(&value) => return value,
                Ok(value) => value.to_string(),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                let page = self
                    .evaluate(
                        "location.href + '\\n' + (document.body ? document.body.innerText : '')",
                    )
                    .await
                    .unwrap_or_default();
                panic!(
                    "timed out after {within:?} waiting for {what} ({expression}); last: {last}; page: {page}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `params` of every event named `method` received on this tab so far, oldest first.
    pub fn events(&self, method: &str) -> Vec<Value> {
        self.connection
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|event| {
                event["method"] == method && event["sessionId"].as_str() == Some(&self.session)
            })
            .map(|event| event["params"].clone())
            .collect()
    }
}

/// JavaScript truthiness of a JSON value.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
