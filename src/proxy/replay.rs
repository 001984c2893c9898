//! Forwards a held request to the upstream after its approval, with pingora's own HTTP client,
//! and streams the upstream's answer back to the client that completed the step-up (with the
//! grant added). Happens at most once per held request: the caller took it out of the store.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use ipnet::IpNet;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;

use super::facts::{HOP_BY_HOP, prepare_upstream};
use crate::config::settings::UpstreamSettings;
use crate::domain::held::OriginalRequest;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Nothing was written to the client yet: the caller can still answer with an error.
    #[error("upstream failed before answering: {0}")]
    Upstream(String),
    /// The upstream's answer was partly written when it broke off.
    #[error("upstream broke off mid-response: {0}")]
    BrokenOff(String),
}

pub fn peer(upstream: &UpstreamSettings) -> HttpPeer {
    // A plain-HTTP upstream has no SNI: an empty name also spares cloning a string for every
    // proxied request (pingora clones the peer per request).
    let sni = if upstream.tls {
        upstream.sni.clone()
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(upstream.addr, upstream.tls, sni);
    peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
    peer.options.read_timeout = Some(READ_TIMEOUT);
    peer
}

/// Where the forwarded request comes from, for `X-Forwarded-*`.
pub struct Origin<'a> {
    pub peer_ip: Option<IpAddr>,
    pub scheme: &'a str,
    pub trusted: &'a [IpNet],
}

/// Sends `held` upstream and writes the answer to `session`, with `extra` headers (the grant)
/// added to the response. Returns the upstream's status.
pub async fn forward(
    connector: &Connector,
    upstream: &UpstreamSettings,
    held: &OriginalRequest,
    origin: &Origin<'_>,
    assertion: Option<&str>,
    session: &mut Session,
    extra: &[(&'static str, String)],
) -> Result<u16, ReplayError> {
    let upstream_error = |e: Box<pingora::Error>| ReplayError::Upstream(e.to_string());
    let mut request = rebuild(held, origin).map_err(upstream_error)?;
    if let Some(assertion) = assertion {
        request
            .insert_header(super::facts::ASSERTION_HEADER_CASED, assertion)
            .map_err(upstream_error)?;
    }
    let peer = peer(upstream);
    let (mut client, _reused) = connector
        .get_http_session(&peer)
        .await
        .map_err(upstream_error)?;
    client
        .write_request_header(Box::new(request))
        .await
        .map_err(upstream_error)?;
    if !held.body.is_empty() {
        client
            .write_request_body(Bytes::from(held.body.clone()), true)
            .await
            .map_err(upstream_error)?;
    }
    client.finish_request_body().await.map_err(upstream_error)?;
    client
        .read_response_header()
        .await
        .map_err(upstream_error)?;
    let Some(answer) = client.response_header() else {
        return Err(ReplayError::Upstream("no response header".to_owned()));
    };
    let status = answer.status.as_u16();
    let mut response =
        ResponseHeader::build(answer.status, Some(answer.headers.len() + extra.len()))
            .map_err(upstream_error)?;
    for (name, value) in &answer.headers {
        // The client's framing is pingora's to choose; content-length stays when known.
        let lower = name.as_str();
        if HOP_BY_HOP.contains(&lower) && lower != "content-length" {
            continue;
        }
        response
            .append_header(name.clone(), value.clone())
            .map_err(upstream_error)?;
    }
    for (name, value) in extra {
        response
            .append_header(*name, value.as_str())
            .map_err(upstream_error)?;
    }
    let no_body = client.response_done();
    session
        .write_response_header(Box::new(response), no_body)
        .await
        .map_err(|e| ReplayError::BrokenOff(e.to_string()))?;
    if !no_body {
        loop {
            let chunk = client
                .read_response_body()
                .await
                .map_err(|e| ReplayError::BrokenOff(e.to_string()))?;
            let done = client.response_done();
            match chunk {
                Some(bytes) => session
                    .write_response_body(Some(bytes), done)
                    .await
                    .map_err(|e| ReplayError::BrokenOff(e.to_string()))?,
                None => {
                    session
                        .write_response_body(None, true)
                        .await
                        .map_err(|e| ReplayError::BrokenOff(e.to_string()))?;
                    break;
                }
            }
            if done {
                break;
            }
        }
    }
    connector.release_http_session(client, &peer, None).await;
    Ok(status)
}

/// The held request as it goes upstream: same method, URI, headers and body, with framing
/// recomputed and forwarded headers set like any proxied request.
fn rebuild(held: &OriginalRequest, origin: &Origin<'_>) -> pingora::Result<RequestHeader> {
    let mut request = RequestHeader::build(
        held.method.as_str(),
        held.uri.as_bytes(),
        Some(held.headers.len() + 3),
    )?;
    for (name, value) in &held.headers {
        // The body goes out at once: an `Expect: 100-continue` would make the upstream's interim
        // answer look like its response.
        if HOP_BY_HOP.contains(&name.as_str()) || name == "expect" {
            continue;
        }
        request.append_header(name.clone(), value.as_slice())?;
    }
    request.insert_header("content-length", held.body.len().to_string())?;
    prepare_upstream(&mut request, origin.peer_ip, origin.scheme, origin.trusted)?;
    Ok(request)
}
