//! Who is asking: the user id (and the phone number SMS codes go to) from a source the client
//! cannot forge. Three sources, one configured:
//! - headers set by a trusted layer in front (`identity.header`), believed only when the socket
//!   peer is one of `proxy.trusted_proxies`, and removed from every other client's request;
//! - a verified JSON Web Token (`jwt.rs`: cookie or `Authorization: Bearer`, keys from a secret,
//!   a PEM file, a JWKS file or a JWKS URL);
//! - the app's own "who am I" endpoint asked with the client's session cookie
//!   (`introspection.rs`).
//!
//! A request whose credentials can be read two ways (a repeated cookie or header, a cookie token
//! next to a different `Authorization` header) is `Ambiguous`, never guessed at. Credentials and
//! phone numbers never reach a log line.
//!
//! `IdentitySource` is what the proxy holds: built once from `IdentitySettings`, asked once per
//! protected request (`resolve`), and asked on every forwarded request to remove what a client
//! must never be able to hand the app (`strip_forged`).
//!
//! May import: config (settings), domain, service (the `Requester` type), telemetry.

mod introspection;
mod jwt;

use http::HeaderName;
use http::header::{AUTHORIZATION, COOKIE};
use pingora::http::RequestHeader;

use self::introspection::IntrospectionSource;
use self::jwt::JwtSource;
use crate::config::settings::IdentitySettings;
use crate::domain::sms::normalize_phone_number;
use crate::service::stepup::Requester;

/// User ids longer than this are refused: they end up in store keys and audit lines.
const MAX_USER_ID_LEN: usize = 256;

/// Why a request has no identity stepgate can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// No credential at all: the client should sign in.
    #[error("no credential")]
    Missing,
    /// A credential that does not verify (forged, expired, wrong audience, ...): no identity.
    #[error("credential rejected: {0}")]
    Rejected(&'static str),
    /// More than one credential, or one that can be read two ways: refused, never guessed at.
    #[error("ambiguous credentials: {0}")]
    Ambiguous(&'static str),
    /// The source that would vouch for the credential cannot be asked (JWKS or introspection
    /// endpoint down): protected routes fail closed.
    #[error("identity source unavailable: {0}")]
    Unavailable(String),
}

/// The configured identity source, ready to answer per request.
pub struct IdentitySource {
    kind: Kind,
}

enum Kind {
    Header(HeaderSource),
    Jwt(JwtSource),
    Introspection(IntrospectionSource),
}

/// Identity headers set by a trusted layer in front.
struct HeaderSource {
    user: HeaderName,
    phone: Option<HeaderName>,
    /// `allow_untrusted_headers`: believed from any peer (demos only).
    from_any_peer: bool,
}

impl IdentitySource {
    pub fn new(settings: IdentitySettings) -> Self {
        let kind = match settings {
            IdentitySettings::Header {
                user,
                phone,
                from_any_peer,
            } => {
                if from_any_peer {
                    tracing::warn!(
                        header = %user,
                        "proxy.identity.allow_untrusted_headers is on: ANY client can name itself with this header; use it for local demos only"
                    );
                }
                // Validation checked the names; a name that still fails to parse can never
                // be sent by anyone, so it matches nothing.
                let parse = |name: &str| {
                    HeaderName::from_bytes(name.as_bytes())
                        .unwrap_or_else(|_| HeaderName::from_static("x-stepgate-invalid-identity"))
                };
                Kind::Header(HeaderSource {
                    user: parse(&user),
                    phone: phone.as_deref().map(parse),
                    from_any_peer,
                })
            }
            IdentitySettings::Jwt(jwt) => Kind::Jwt(JwtSource::new(*jwt)),
            IdentitySettings::Introspection(settings) => {
                Kind::Introspection(IntrospectionSource::new(*settings))
            }
        };
        Self { kind }
    }

    /// The requester of a protected request. `peer_trusted`: the socket peer is one of
    /// `proxy.trusted_proxies`.
    pub async fn resolve(
        &self,
        req: &RequestHeader,
        peer_trusted: bool,
    ) -> Result<Requester, IdentityError> {
        let result = match &self.kind {
            Kind::Header(source) => source.resolve(req, peer_trusted),
            Kind::Jwt(source) => source.resolve(req).await,
            Kind::Introspection(source) => source.resolve(req).await,
        };
        if let Err(error @ (IdentityError::Rejected(_) | IdentityError::Ambiguous(_))) = &result {
            // The reason only: never the credential itself.
            tracing::debug!(%error, "no identity for this request");
        }
        result
    }

    /// The header source whose headers, on a request from this peer, only a trusted layer may
    /// have set: `None` for other sources and for peers whose headers are believed.
    fn forgeable(&self, peer_trusted: bool) -> Option<&HeaderSource> {
        match &self.kind {
            Kind::Header(source) if !(peer_trusted || source.from_any_peer) => Some(source),
            _ => None,
        }
    }

    /// Whether a header named `name` (lower case) on a request from this peer is one only a
    /// trusted layer may set: a held request keeps no such header for its replay.
    pub fn is_forged(&self, name: &str, peer_trusted: bool) -> bool {
        self.forgeable(peer_trusted).is_some_and(|source| {
            name == source.user.as_str()
                || source
                    .phone
                    .as_ref()
                    .is_some_and(|phone| name == phone.as_str())
        })
    }

    /// Removes from a request about to go upstream what only a trusted layer may set (identity
    /// headers sent by an untrusted client). Runs on every forwarded request: without such
    /// headers it costs two lookups and allocates nothing.
    pub fn strip_forged(&self, req: &mut RequestHeader, peer_trusted: bool) {
        let Some(source) = self.forgeable(peer_trusted) else {
            return;
        };
        if req.headers.contains_key(&source.user) {
            req.remove_header(&source.user);
        }
        if let Some(phone) = &source.phone
            && req.headers.contains_key(phone)
        {
            req.remove_header(phone);
        }
    }
}

impl HeaderSource {
    fn resolve(&self, req: &RequestHeader, peer_trusted: bool) -> Result<Requester, IdentityError> {
        if !(peer_trusted || self.from_any_peer) {
            // A client's own copy is no identity (and `strip_forged` keeps it from the app).
            return Err(IdentityError::Missing);
        }
        let user = single_header(req, &self.user, "identity header repeated")?
            .ok_or(IdentityError::Missing)?;
        let phone = match &self.phone {
            Some(name) => single_header(req, name, "phone header repeated")?,
            None => None,
        };
        requester(user.to_owned(), phone)
    }
}

/// The one value of header `name`, trimmed, `None` when absent or empty; two or more values are
/// ambiguous, a value that is not text is refused.
fn single_header<'a>(
    req: &'a RequestHeader,
    name: &HeaderName,
    repeated: &'static str,
) -> Result<Option<&'a str>, IdentityError> {
    let mut values = req.headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(IdentityError::Ambiguous(repeated));
    }
    let text = value
        .to_str()
        .map_err(|_| IdentityError::Rejected("identity header is not text"))?
        .trim();
    Ok((!text.is_empty()).then_some(text))
}

/// The value of cookie `name` across every `Cookie` header (quotes removed); a second cookie of
/// that name is ambiguous: the app might read either one.
fn single_cookie<'a>(
    req: &'a RequestHeader,
    name: &str,
    repeated: &'static str,
) -> Result<Option<&'a str>, IdentityError> {
    let mut found: Option<&'a [u8]> = None;
    for header in req.headers.get_all(COOKIE) {
        for pair in header.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            let (key, value) = match pair.iter().position(|b| *b == b'=') {
                Some(at) => (pair[..at].trim_ascii(), pair[at + 1..].trim_ascii()),
                None => continue,
            };
            if key != name.as_bytes() {
                continue;
            }
            if found.is_some() {
                return Err(IdentityError::Ambiguous(repeated));
            }
            found = Some(value);
        }
    }
    let Some(value) = found else {
        return Ok(None);
    };
    let value = value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(value);
    let text = std::str::from_utf8(value)
        .map_err(|_| IdentityError::Rejected("identity cookie is not text"))?;
    Ok((!text.is_empty()).then_some(text))
}

/// What the request's `Authorization` header carries.
#[derive(Debug, PartialEq, Eq)]
enum Authorization<'a> {
    None,
    Bearer(&'a str),
    /// Another scheme (Basic, ...), or a value that is not text.
    Other,
}

/// The request's one `Authorization` header; several are ambiguous.
fn authorization(req: &RequestHeader) -> Result<Authorization<'_>, IdentityError> {
    let mut values = req.headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(Authorization::None);
    };
    if values.next().is_some() {
        return Err(IdentityError::Ambiguous("Authorization header repeated"));
    }
    let Ok(text) = value.to_str() else {
        return Ok(Authorization::Other);
    };
    let text = text.trim();
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Ok(Authorization::Bearer(token.trim()))
        }
        _ => Ok(Authorization::Other),
    }
}

/// The HTTP client the identity sources call out with (JWKS, introspection): no redirects, no
/// environment proxy, one timeout for connecting and answering. reqwest is built without a
/// rustls provider; pingora uses ring, so both agree on it (as the notify clients do), and a
/// second install finds it in place.
fn outbound_client(timeout: std::time::Duration, what: &str) -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("stepgate/", env!("CARGO_PKG_VERSION")))
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|error| format!("cannot build the {what} client: {error}"))
}

/// A requester from what the source vouched for; ids that cannot serve as one are refused, a
/// phone number that does not normalize is no phone number.
fn requester(user_id: String, phone: Option<&str>) -> Result<Requester, IdentityError> {
    if user_id.is_empty()
        || user_id.len() > MAX_USER_ID_LEN
        || user_id.chars().any(char::is_control)
    {
        return Err(IdentityError::Rejected("unusable user id"));
    }
    Ok(Requester {
        user_id,
        phone_number: phone.and_then(normalize_phone_number),
        client_ip: None,
    })
}

#[cfg(test)]
pub(crate) mod test_support {
    use pingora::http::RequestHeader;

    pub fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    /// Runs one identity future to completion on a runtime of its own.
    pub fn block<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{block, request};
    use super::*;

    fn headers(from_any_peer: bool) -> IdentitySource {
        IdentitySource::new(IdentitySettings::Header {
            user: "x-user-id".into(),
            phone: Some("x-user-phone".into()),
            from_any_peer,
        })
    }

    #[test]
    fn identity_trusted_headers_give_identity_and_bad_ids_are_refused() {
        let source = headers(false);
        let req = request(&[("x-user-id", "bob"), ("x-user-phone", "+15005550006")]);
        assert_eq!(
            block(source.resolve(&req, true)),
            Ok(Requester {
                user_id: "bob".into(),
                phone_number: Some("+15005550006".into()),
                client_ip: None,
            })
        );
        assert_eq!(
            block(source.resolve(&request(&[]), true)),
            Err(IdentityError::Missing)
        );
        let long = "x".repeat(MAX_USER_ID_LEN + 1);
        assert_eq!(
            block(source.resolve(&request(&[("x-user-id", &long)]), true)),
            Err(IdentityError::Rejected("unusable user id"))
        );
    }

    #[test]
    fn identity_headers_from_an_untrusted_peer_are_ignored_and_stripped() {
        let source = headers(false);
        let mut req = request(&[
            ("x-user-id", "mallory"),
            ("X-User-Phone", "+15005550006"),
            ("x-other", "kept"),
        ]);
        assert_eq!(
            block(source.resolve(&req, false)),
            Err(IdentityError::Missing)
        );
        source.strip_forged(&mut req, false);
        assert!(req.headers.get("x-user-id").is_none());
        assert!(req.headers.get("x-user-phone").is_none());
        assert_eq!(req.headers.get("x-other").unwrap(), "kept");
        // From a trusted proxy they stay for the app.
        let mut trusted = request(&[("x-user-id", "bob")]);
        source.strip_forged(&mut trusted, true);
        assert_eq!(trusted.headers.get("x-user-id").unwrap(), "bob");
        // The demo switch believes (and keeps) them from anyone.
        let demo = headers(true);
        let mut req = request(&[("x-user-id", "bob")]);
        assert!(block(demo.resolve(&req, false)).is_ok());
        demo.strip_forged(&mut req, false);
        assert!(req.headers.get("x-user-id").is_some());
    }

    #[test]
    fn identity_repeated_headers_are_ambiguous() {
        let source = headers(false);
        let twice = request(&[("x-user-id", "bob"), ("x-user-id", "alice")]);
        assert_eq!(
            block(source.resolve(&twice, true)),
            Err(IdentityError::Ambiguous("identity header repeated"))
        );
        let phones = request(&[
            ("x-user-id", "bob"),
            ("x-user-phone", "+15005550006"),
            ("x-user-phone", "+15005550007"),
        ]);
        assert_eq!(
            block(source.resolve(&phones, true)),
            Err(IdentityError::Ambiguous("phone header repeated"))
        );
    }

    #[test]
    fn identity_cookies_are_counted_across_headers() {
        let req = request(&[("cookie", "a=1; session=x"), ("cookie", "b=2")]);
        assert_eq!(single_cookie(&req, "session", "r"), Ok(Some("x")));
        assert_eq!(single_cookie(&req, "nope", "r"), Ok(None));
        let twice = request(&[("cookie", "session=x"), ("cookie", "b=2;session=y")]);
        assert_eq!(
            single_cookie(&twice, "session", "r"),
            Err(IdentityError::Ambiguous("r"))
        );
        let quoted = request(&[("cookie", "session=\"x\"")]);
        assert_eq!(single_cookie(&quoted, "session", "r"), Ok(Some("x")));
    }

    #[test]
    fn identity_authorization_schemes_are_told_apart() {
        assert_eq!(authorization(&request(&[])), Ok(Authorization::None));
        assert_eq!(
            authorization(&request(&[("authorization", "bearer abc")])),
            Ok(Authorization::Bearer("abc"))
        );
        assert_eq!(
            authorization(&request(&[("authorization", "Basic YTpi")])),
            Ok(Authorization::Other)
        );
        assert_eq!(
            authorization(&request(&[
                ("authorization", "Bearer a"),
                ("authorization", "Bearer a")
            ])),
            Err(IdentityError::Ambiguous("Authorization header repeated"))
        );
    }
}
