//! Who is asking: the user id (and phone number) from a trusted header or a verified JSON Web
//! Token (cookie or `Authorization: Bearer`). A token that does not verify is no identity.
//!
//! `IdentitySource` is what the proxy holds: built once from `IdentitySettings`, asked once per
//! protected request (`resolve`), and asked on every forwarded request to remove what a client
//! must never be able to hand the app (`strip_forged`).

use jsonwebtoken::{DecodingKey, decode, decode_header};
use pingora::http::RequestHeader;
use serde_json::{Map, Value};

use crate::config::settings::{IdentitySettings, JwtSettings};
use crate::domain::sms::normalize_phone_number;
use crate::service::stepup::Requester;
use http::HeaderName;
use http::header::{AUTHORIZATION, COOKIE};

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
    settings: IdentitySettings,
    /// Header identity: the names a client must never set itself.
    forgeable: Vec<HeaderName>,
}

impl IdentitySource {
    pub fn new(settings: IdentitySettings) -> Self {
        let forgeable = match &settings {
            IdentitySettings::Header { user, phone } => std::iter::once(user)
                .chain(phone)
                .filter_map(|name| HeaderName::try_from(name.as_str()).ok())
                .collect(),
            IdentitySettings::Jwt(_) => Vec::new(),
        };
        Self {
            settings,
            forgeable,
        }
    }

    /// The requester of a protected request. `peer_trusted`: the socket peer is one of
    /// `proxy.trusted_proxies`; identity headers are believed from such peers only.
    pub async fn resolve(
        &self,
        req: &RequestHeader,
        peer_trusted: bool,
    ) -> Result<Requester, IdentityError> {
        resolve(&self.settings, req, peer_trusted)
    }

    /// Removes from a request about to go upstream what only a trusted layer may set: identity
    /// headers sent by an untrusted client never reach the app.
    pub fn strip_forged(&self, req: &mut RequestHeader, peer_trusted: bool) {
        if peer_trusted {
            return;
        }
        for name in &self.forgeable {
            req.remove_header(name);
        }
    }
}

/// The identity `settings` read from `req`, or why there is none.
pub fn resolve(
    settings: &IdentitySettings,
    req: &RequestHeader,
    peer_trusted: bool,
) -> Result<Requester, IdentityError> {
    let (user_id, phone) = match settings {
        IdentitySettings::Header { user, phone } => {
            if !peer_trusted {
                // A client's own copy is no identity (and `strip_forged` keeps it from the app).
                return Err(IdentityError::Missing);
            }
            let user = single_header(req, user)?.ok_or(IdentityError::Missing)?;
            let phone = match phone {
                Some(name) => single_header(req, name)?,
                None => None,
            };
            (user.to_owned(), phone.map(str::to_owned))
        }
        IdentitySettings::Jwt(jwt) => from_jwt(jwt, req)?,
    };
    if user_id.is_empty()
        || user_id.len() > MAX_USER_ID_LEN
        || user_id.chars().any(char::is_control)
    {
        return Err(IdentityError::Rejected("unusable user id"));
    }
    Ok(Requester {
        user_id,
        phone_number: phone.as_deref().and_then(normalize_phone_number),
    })
}

/// The one value of header `name`; two are ambiguous (the app might read either).
fn single_header<'a>(req: &'a RequestHeader, name: &str) -> Result<Option<&'a str>, IdentityError> {
    let mut values = req.headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(IdentityError::Ambiguous(
            "an identity header appears more than once",
        ));
    }
    Ok(first
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty()))
}

/// Every value of cookie `name` across all `Cookie` headers.
fn cookie_values<'a>(req: &'a RequestHeader, name: &str) -> Vec<&'a str> {
    req.headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .collect()
}

/// The one token of the request: from the cookie or `Authorization: Bearer`. Two cookies, two
/// `Authorization` headers, or a cookie beside another credential in `Authorization` are
/// ambiguous: the app might act on the other one.
fn token<'a>(settings: &JwtSettings, req: &'a RequestHeader) -> Result<&'a str, IdentityError> {
    let cookies = match &settings.cookie {
        Some(name) => cookie_values(req, name),
        None => Vec::new(),
    };
    if cookies.len() > 1 {
        return Err(IdentityError::Ambiguous(
            "the identity cookie appears more than once",
        ));
    }
    let mut authorizations = req.headers.get_all(AUTHORIZATION).iter();
    let authorization = authorizations.next();
    if authorizations.next().is_some() {
        return Err(IdentityError::Ambiguous(
            "more than one Authorization header",
        ));
    }
    let bearer = match authorization {
        None => None,
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| IdentityError::Rejected("Authorization is not text"))?
                .trim();
            match text.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                    Some(token.trim())
                }
                // Basic, Digest, another scheme: a credential the app may prefer.
                _ if !cookies.is_empty() => {
                    return Err(IdentityError::Ambiguous(
                        "an identity cookie and another Authorization credential",
                    ));
                }
                _ => {
                    return Err(IdentityError::Rejected(
                        "Authorization is not a bearer token",
                    ));
                }
            }
        }
    };
    match (cookies.first(), bearer) {
        (Some(cookie), Some(bearer)) if *cookie != bearer => Err(IdentityError::Ambiguous(
            "an identity cookie and a different bearer token",
        )),
        (Some(cookie), _) => Ok(cookie),
        (None, Some(bearer)) => Ok(bearer),
        (None, None) => Err(IdentityError::Missing),
    }
}

fn from_jwt(
    settings: &JwtSettings,
    req: &RequestHeader,
) -> Result<(String, Option<String>), IdentityError> {
    let token = token(settings, req)?;
    let header = decode_header(token).map_err(|_| IdentityError::Rejected("not a JWT"))?;
    // RFC 7515 §4.1.11: extensions we do not understand must make the token invalid.
    if header.crit.is_some() {
        return Err(IdentityError::Rejected("crit header parameter"));
    }
    let key = key_for(settings, header.kid.as_deref())
        .ok_or(IdentityError::Rejected("no key for this token"))?;
    let claims = decode::<Map<String, Value>>(token, key, &settings.validation)
        .map_err(|_| IdentityError::Rejected("token does not verify"))?
        .claims;
    let user = match claims.get(&settings.user_claim) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        _ => return Err(IdentityError::Rejected("no user claim")),
    };
    let phone = settings
        .phone_claim
        .as_ref()
        .and_then(|claim| claims.get(claim))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((user, phone))
}

/// The key named by the token's `kid`, or the only key when there is one.
fn key_for<'a>(settings: &'a JwtSettings, kid: Option<&str>) -> Option<&'a DecodingKey> {
    match kid {
        Some(kid) => settings
            .keys
            .iter()
            .find(|(id, _)| id.as_deref() == Some(kid))
            .or_else(|| (settings.keys.len() == 1).then(|| &settings.keys[0]))
            .map(|(_, key)| key),
        None => (settings.keys.len() == 1).then(|| &settings.keys[0].1),
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn jwt_settings() -> IdentitySettings {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        IdentitySettings::Jwt(Box::new(JwtSettings {
            cookie: Some("session".into()),
            keys: vec![(None, DecodingKey::from_secret(SECRET))],
            validation,
            user_claim: "sub".into(),
            phone_claim: Some("phone_number".into()),
        }))
    }

    fn token(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    fn future() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600
    }

    #[test]
    fn a_valid_token_in_the_cookie_or_bearer_gives_user_and_phone() {
        let good = token(
            json!({"sub": "alice", "phone_number": "+31 6 1234 5678", "exp": future()}),
            SECRET,
        );
        let from_cookie = resolve(
            &jwt_settings(),
            &request(&[("cookie", &format!("session={good}"))]),
            false,
        )
        .ok();
        assert_eq!(
            from_cookie,
            Some(Requester {
                user_id: "alice".into(),
                phone_number: Some("+31612345678".into())
            })
        );
        let from_bearer = resolve(
            &jwt_settings(),
            &request(&[("authorization", &format!("Bearer {good}"))]),
            false,
        )
        .ok();
        assert_eq!(from_bearer, from_cookie);
    }

    #[test]
    fn forged_expired_or_claimless_tokens_are_no_identity() {
        let forged = token(
            json!({"sub": "alice", "exp": future()}),
            b"another-secret-another-secret-xx",
        );
        let expired = token(json!({"sub": "alice", "exp": 1_000}), SECRET);
        let no_sub = token(json!({"exp": future()}), SECRET);
        let no_exp = token(json!({"sub": "alice"}), SECRET);
        for bad in [forged, expired, no_sub, no_exp, "garbage".to_owned()] {
            let req = request(&[("cookie", &format!("session={bad}"))]);
            assert!(resolve(&jwt_settings(), &req, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn trusted_headers_give_identity_and_bad_ids_are_refused() {
        let settings = IdentitySettings::Header {
            user: "x-user-id".into(),
            phone: Some("x-user-phone".into()),
        };
        let req = request(&[("x-user-id", "bob"), ("x-user-phone", "+15005550006")]);
        assert_eq!(
            resolve(&settings, &req, true),
            Ok(Requester {
                user_id: "bob".into(),
                phone_number: Some("+15005550006".into())
            })
        );
        // From a peer that is not a trusted proxy, the client wrote them itself.
        assert_eq!(resolve(&settings, &req, false), Err(IdentityError::Missing));
        assert_eq!(
            resolve(&settings, &request(&[]), true),
            Err(IdentityError::Missing)
        );
        let long = "x".repeat(MAX_USER_ID_LEN + 1);
        assert!(resolve(&settings, &request(&[("x-user-id", &long)]), true).is_err());
        for twice in [
            request(&[("x-user-id", "bob"), ("x-user-id", "ann")]),
            request(&[
                ("x-user-id", "bob"),
                ("x-user-phone", "+1"),
                ("x-user-phone", "+2"),
            ]),
        ] {
            assert!(matches!(
                resolve(&settings, &twice, true),
                Err(IdentityError::Ambiguous(_))
            ));
        }
        let source = IdentitySource::new(settings);
        let mut forged = request(&[
            ("x-user-id", "bob"),
            ("x-user-phone", "+1"),
            ("x-other", "1"),
        ]);
        source.strip_forged(&mut forged, true);
        assert!(forged.headers.get("x-user-id").is_some());
        source.strip_forged(&mut forged, false);
        assert!(forged.headers.get("x-user-id").is_none());
        assert!(forged.headers.get("x-user-phone").is_none());
        assert!(forged.headers.get("x-other").is_some());
    }

    #[test]
    fn two_credentials_are_ambiguous_and_crit_is_refused() {
        let ann = token(json!({"sub": "ann", "exp": future()}), SECRET);
        let bob = token(json!({"sub": "bob", "exp": future()}), SECRET);
        let ambiguous = [
            vec![("cookie", format!("session={ann}; session={bob}"))],
            vec![
                ("cookie", format!("session={ann}")),
                ("cookie", format!("session={ann}")),
            ],
            vec![
                ("cookie", format!("session={ann}")),
                ("authorization", format!("Bearer {bob}")),
            ],
            vec![
                ("cookie", format!("session={ann}")),
                ("authorization", "Basic Ym9iOng=".into()),
            ],
            vec![
                ("authorization", format!("Bearer {ann}")),
                ("authorization", format!("Bearer {bob}")),
            ],
        ];
        for headers in ambiguous {
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            assert!(
                matches!(
                    resolve(&jwt_settings(), &request(&pairs), false),
                    Err(IdentityError::Ambiguous(_))
                ),
                "{headers:?}"
            );
        }
        let same = request(&[
            ("cookie", &format!("session={ann}")),
            ("authorization", &format!("bearer {ann}")),
        ]);
        assert_eq!(
            resolve(&jwt_settings(), &same, false).unwrap().user_id,
            "ann"
        );
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp".into()]);
        let critical = encode(
            &header,
            &json!({"sub": "ann", "exp": future()}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        let req = request(&[("cookie", &format!("session={critical}"))]);
        assert_eq!(
            resolve(&jwt_settings(), &req, false),
            Err(IdentityError::Rejected("crit header parameter"))
        );
    }
}
