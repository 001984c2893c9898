//! The reference phone client's HTTP side: one `reqwest` client (rustls with the ring provider,
//! 10 s timeouts, no redirects, optional private CA) and the device protocol's two kinds of
//! request: the unsigned enrollment and the signed requests (`Stepgate-Device-Id`,
//! `Stepgate-Timestamp`, `Stepgate-Nonce`, `Stepgate-Signature` over the canonical string of
//! exactly the path, query and body bytes that go on the wire).
//!
//! May import: `domain` (plus external crates).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::SigningKey;
use rand_core::{OsRng, RngCore};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use url::Url;

use crate::domain::device::DeviceId;
use crate::domain::device_crypto;

/// Connect and whole-request timeout.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Answers are read up to this size; a device protocol answer is far smaller.
const MAX_BODY: usize = 1024 * 1024;
/// At most this much of a refusal's body goes into the error message.
const MAX_SHOWN_BODY: usize = 300;

pub const HEADER_DEVICE_ID: &str = "stepgate-device-id";
pub const HEADER_TIMESTAMP: &str = "stepgate-timestamp";
pub const HEADER_NONCE: &str = "stepgate-nonce";
pub const HEADER_SIGNATURE: &str = "stepgate-signature";

/// Why a call to the device API did not give an answer to work with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot use --api '{url}': {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot read the CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// No answer: `request` is the method and URL.
    #[error("{request}: {reason}")]
    Unreachable { request: String, reason: String },
    /// The server answered with a status other than 2xx; `request` is the method and path.
    #[error("{request}: the server refused: HTTP {status}{}: {body}",
        error.as_deref().map(|e| format!(" {e}")).unwrap_or_default())]
    Refused {
        request: String,
        status: u16,
        /// The `error` field of the JSON answer, when there is one.
        error: Option<String>,
        /// The answer, JSON re-serialised on one line or the start of the text.
        body: String,
    },
    #[error("{request}: unexpected answer (HTTP {status}): {reason}")]
    InvalidAnswer {
        request: String,
        status: u16,
        reason: String,
    },
}

impl ApiError {
    /// The server's `error` code when it refused with one (`already_fetched`, `invalid_pin`, ...).
    pub fn server_error(&self) -> Option<&str> {
        match self {
            ApiError::Refused { error, .. } => error.as_deref(),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Refused { status, .. } | ApiError::InvalidAnswer { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// Who signs a request: the device id and its signing key.
pub struct Signer<'a> {
    pub device_id: &'a DeviceId,
    pub key: &'a SigningKey,
}

/// A client for one device API base URL (e.g. `https://gate.example` or `http://127.0.0.1:8081`;
/// a path prefix is kept, and the signed path is whatever is finally sent).
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
}

impl ApiClient {
    pub fn new(base: &str, ca_file: Option<&Path>) -> Result<Self, ApiError> {
        let bad_url = |reason: &str| ApiError::BadUrl {
            url: base.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = Url::parse(base).map_err(|error| bad_url(&error.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad_url("expected an http:// or https:// URL"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad_url("expected a base URL without query or fragment"));
        }
        // reqwest is built without a rustls provider; pingora and the rest of stepgate use
        // ring. A second install finds it in place, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("stepgate-device/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            let ca_error = |reason: String| ApiError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|error| ca_error(error.to_string()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|error| ca_error(error.to_string()))?;
            if certificates.is_empty() {
                return Err(ca_error("no PEM certificate in it".to_owned()));
            }
            builder = builder.tls_certs_merge(certificates);
        }
        let http = builder
            .build()
            .map_err(|error| ApiError::Client(innermost_cause(&error)))?;
        Ok(Self { http, base: parsed })
    }

    /// The URL of a device API path (`/device/v1/...`) under the base URL.
    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}{path}", self.base.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    /// `POST /device/v1/enroll`: unsigned, the code is the credential.
    pub async fn enroll(&self, body: &Value) -> Result<Value, ApiError> {
        let bytes = to_body(body);
        self.send(Method::POST, "/device/v1/enroll", Some(bytes), None)
            .await
    }

    /// A signed request with an optional JSON body.
    pub async fn signed(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        signer: &Signer<'_>,
    ) -> Result<Value, ApiError> {
        self.send(method, path, body.map(to_body), Some(signer))
            .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        signer: Option<&Signer<'_>>,
    ) -> Result<Value, ApiError> {
        let url = self.url(path);
        // Exactly what goes on the request line: the signature covers it byte for byte.
        let path_and_query = url[url::Position::BeforePath..url::Position::AfterQuery].to_owned();
        let mut request = self.http.request(method.clone(), url.clone());
        if let Some(signer) = signer {
            let timestamp = now_ms();
            let nonce = random_nonce();
            let canonical = device_crypto::canonical_request(
                method.as_str(),
                &path_and_query,
                timestamp,
                &nonce,
                body.as_deref().unwrap_or_default(),
            );
            let signature = device_crypto::sign(signer.key, canonical.as_bytes());
            request = request
                .header(HEADER_DEVICE_ID, signer.device_id.as_str())
                .header(HEADER_TIMESTAMP, timestamp.to_string())
                .header(HEADER_NONCE, nonce)
                .header(HEADER_SIGNATURE, signature);
        }
        if let Some(bytes) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        let unreachable = |error: reqwest::Error| ApiError::Unreachable {
            request: format!("{method} {url}"),
            reason: describe_failure(error),
        };
        let mut response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if bytes.len() + chunk.len() > MAX_BODY {
                return Err(ApiError::InvalidAnswer {
                    request: format!("{method} {path_and_query}"),
                    status: status.as_u16(),
                    reason: format!("the answer is larger than {MAX_BODY} bytes"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        interpret(&format!("{method} {path_and_query}"), status, &bytes)
    }
}

/// A success must be JSON (an empty body stands for `{}`); a refusal keeps what the server said.
fn interpret(request: &str, status: StatusCode, bytes: &[u8]) -> Result<Value, ApiError> {
    let json: Option<Value> = serde_json::from_slice(bytes).ok();
    if status.is_success() {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Object(serde_json::Map::new()));
        }
        return match json {
            Some(value @ Value::Object(_)) => Ok(value),
            _ => Err(ApiError::InvalidAnswer {
                request: request.to_owned(),
                status: status.as_u16(),
                reason: format!("expected a JSON object, got: {}", shown(bytes, None)),
            }),
        };
    }
    if status.is_redirection() {
        let reason = "a redirect (not followed)".to_owned();
        return Err(ApiError::InvalidAnswer {
            request: request.to_owned(),
            status: status.as_u16(),
            reason,
        });
    }
    Err(ApiError::Refused {
        request: request.to_owned(),
        status: status.as_u16(),
        error: json
            .as_ref()
            .and_then(|value| value.get("error"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        body: shown(bytes, json.as_ref()),
    })
}

/// One line for an error message: compact JSON, or the start of the text.
fn shown(bytes: &[u8], json: Option<&Value>) -> String {
    if let Some(value) = json {
        return value.to_string();
    }
    let text = String::from_utf8_lossy(bytes);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_SHOWN_BODY)
        .collect();
    if one_line.trim().is_empty() {
        "(empty body)".to_owned()
    } else {
        one_line.trim().to_owned()
    }
}

fn to_body(value: &Value) -> Vec<u8> {
    // Serialising a `Value` to a Vec cannot fail (no I/O, string keys only).
    serde_json::to_vec(value).unwrap_or_default()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// 16 random bytes, base64url without padding.
fn random_nonce() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What went wrong with a request, without repeating its URL.
fn describe_failure(error: reqwest::Error) -> String {
    let error = error.without_url();
    if error.is_timeout() {
        return format!("no answer within {} s", TIMEOUT.as_secs());
    }
    let what = if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_decode() {
        "unreadable answer"
    } else {
        "request failed"
    };
    format!("{what}: {}", innermost_cause(&error))
}

fn innermost_cause(error: &reqwest::Error) -> String {
    let mut innermost: &dyn std::error::Error = error;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    innermost.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_a_base_path_prefix() {
        let client = ApiClient::new("http://127.0.0.1:1/gate/", None).unwrap();
        assert_eq!(
            client.url("/device/v1/transactions").as_str(),
            "http://127.0.0.1:1/gate/device/v1/transactions"
        );
        let plain = ApiClient::new("https://gate.example", None).unwrap();
        assert_eq!(
            plain.url("/device/v1/enroll").as_str(),
            "https://gate.example/device/v1/enroll"
        );
    }

    #[test]
    fn bad_base_urls_are_refused() {
        for bad in ["gate.example", "ftp://gate.example", "http://x/?a=1"] {
            assert!(
                matches!(ApiClient::new(bad, None), Err(ApiError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn refusals_carry_the_status_and_error_code() {
        let body = br#"{"error":"invalid_pin","remaining_attempts":2}"#;
        let error = interpret(
            "POST /device/v1/transactions/x/answer",
            StatusCode::UNAUTHORIZED,
            body,
        )
        .unwrap_err();
        assert_eq!(error.server_error(), Some("invalid_pin"));
        assert_eq!(error.status(), Some(401));
        let message = error.to_string();
        assert!(message.contains("HTTP 401 invalid_pin"), "{message}");
        assert!(message.contains("remaining_attempts"), "{message}");
        assert!(!message.contains('\n'));

        let html = interpret(
            "GET /x",
            StatusCode::BAD_GATEWAY,
            b"<html>\n<b>bad</b>\n</html>",
        )
        .unwrap_err();
        assert!(!html.to_string().contains('\n'), "{html}");
        assert_eq!(html.server_error(), None);
    }

    #[test]
    fn successes_must_be_json_objects() {
        let ok = interpret("GET /x", StatusCode::OK, br#"{"a":1}"#).unwrap();
        assert_eq!(ok["a"], 1);
        let empty = interpret("DELETE /x", StatusCode::NO_CONTENT, b"").unwrap();
        assert_eq!(empty, serde_json::json!({}));
        assert!(interpret("GET /x", StatusCode::OK, b"[1]").is_err());
        assert!(interpret("GET /x", StatusCode::FOUND, b"").is_err());
    }

    #[test]
    fn nonces_are_16_random_bytes() {
        let nonce = random_nonce();
        assert_eq!(URL_SAFE_NO_PAD.decode(&nonce).unwrap().len(), 16);
        assert_ne!(nonce, random_nonce());
    }
}
