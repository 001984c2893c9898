//! A fake portal callback receiver: accepts `POST` on any path, records each request (path,
//! query, `Content-Type`, `Authorization`, the JSON body and when it arrived) and answers from a
//! script such as "500, 500, then 204" or "hang for 5 s, then 204". Once the script is used up
//! it answers 204 No Content, as the reference API expects of a portal.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::Server;

/// One request the portal received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    /// The body as JSON (`Value::Null` when it was not JSON).
    pub json: Value,
    pub at: Instant,
}

/// How the portal answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Status(u16),
    /// Waits this long, then answers 204 (the caller has usually given up by then).
    Hang(Duration),
}

#[derive(Default)]
struct Portal {
    script: VecDeque<Answer>,
    received: Vec<Received>,
}

type Shared = Arc<Mutex<Portal>>;

pub struct FakePortal {
    portal: Shared,
    server: Server,
}

impl FakePortal {
    pub fn start() -> Self {
        let portal = Shared::default();
        let router = Router::new().fallback(receive).with_state(portal.clone());
        Self {
            portal,
            server: Server::start(router),
        }
    }

    /// The callback URL for `path_and_query` (starting with `/`).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.server.url())
    }

    /// The next answers, in order; after them, 204.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.lock().script = answers.into_iter().collect();
    }

    /// Every request so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Waits until at least `count` requests arrived, and returns them all.
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "the portal got {} of {count} callbacks within {within:?}: {received:#?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Portal> {
        self.portal.lock().expect("fake portal state")
    }
}

async fn receive(
    State(portal): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let answer = {
        let mut portal = portal.lock().expect("fake portal state");
        portal.received.push(Received {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            content_type: header(header::CONTENT_TYPE),
            authorization: header(header::AUTHORIZATION),
            json: serde_json::from_slice(&body).unwrap_or(Value::Null),
            at: Instant::now(),
        });
        portal.script.pop_front()
    };
    match answer {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(Answer::Status(code)) => StatusCode::from_u16(code)
            .expect("a valid status in the script")
            .into_response(),
        Some(Answer::Hang(wait)) => {
            tokio::time::sleep(wait).await;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}
