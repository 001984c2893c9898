//! A recording upstream: the app behind the proxy. It keeps every request it receives (method,
//! URI, headers, body) so tests can prove what reached it and how often, and answers with a
//! small text naming the request, or a fixed binary body on `/blob` for byte-for-byte checks, or
//! an HTML form posting to `/transfer` on `/form` for browser tests.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::Server;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

pub struct RecordingUpstream {
    server: Server,
    seen: Log,
}

/// The page served on `GET /form`: a transfer form a browser submits to `/transfer`.
pub const FORM_PAGE: &str = r#"<form method="post" action="/transfer"><input name="amount" value="25"><input name="iban" value="NL91ABNA0417164300"><button id="send">Send</button></form>"#;

/// 256 KiB of a fixed, non-text pattern.
pub fn blob() -> Vec<u8> {
    (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

async fn record(
    State(seen): State<Log>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let count = {
        let mut log = seen.lock().unwrap();
        log.push(Seen {
            method: method.to_string(),
            uri: uri.to_string(),
            headers,
            body: body.to_vec(),
        });
        log.len()
    };
    if path == "/blob" {
        return (
            StatusCode::OK,
            [("content-type", "application/octet-stream")],
            blob(),
        )
            .into_response();
    }
    if path == "/form" && method == Method::GET {
        return (
            StatusCode::OK,
            [("content-type", "text/html; charset=utf-8")],
            FORM_PAGE,
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [
            ("content-type", "text/plain"),
            ("x-upstream-count", &count.to_string()),
        ],
        format!("upstream saw {method} {path} ({} bytes)", body.len()),
    )
        .into_response()
}

impl RecordingUpstream {
    pub fn start() -> Self {
        let seen: Log = Arc::default();
        let router = Router::new().fallback(record).with_state(seen.clone());
        Self {
            server: Server::start(router),
            seen,
        }
    }

    /// `host:port` for `proxy.upstream.address`.
    pub fn address(&self) -> String {
        self.server.addr().to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests seen on `path` (without query).
    pub fn seen_on(&self, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.uri.split('?').next() == Some(path))
            .collect()
    }
}
