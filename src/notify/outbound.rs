//! What every provider client shares besides its construction (which is `outgoing`'s: no
//! redirects, the outgoing proxy): failure descriptions that carry no URL (a query may hold an
//! API key) and a capped read of error bodies.
//!
//! May import: `notify` itself (nothing else in the crate).

use std::error::Error as _;
use std::time::Duration;

/// Response bodies are read up to this size; the rest is ignored.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// What went wrong with a request, without its URL.
pub(crate) fn describe_failure(error: reqwest::Error, timeout: Duration) -> String {
    let error = error.without_url();
    if error.is_timeout() {
        return format!("no answer within {} ms", timeout.as_millis());
    }
    let what = if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_decode() {
        "unreadable response"
    } else {
        "request failed"
    };
    let mut innermost = error.source();
    while let Some(next) = innermost.and_then(|source| source.source()) {
        innermost = Some(next);
    }
    match innermost {
        Some(cause) => format!("{what}: {cause}"),
        None => format!("{what}: {error}"),
    }
}

/// The response body up to `MAX_BODY` bytes; a failure while reading yields what arrived.
pub(crate) async fn read_capped(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_BODY {
            break;
        }
    }
    body
}
