//! The bank's sign-in: an HS256 JWT (`sub`, `phone_number`, `exp`) in the `demo_session`
//! cookie, the kind of token stepgate's `proxy.identity.jwt` reads.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use axum::http::header::COOKIE;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The cookie that carries the session token.
pub const COOKIE_NAME: &str = "demo_session";
/// How long a sign-in lasts.
pub const LIFETIME: Duration = Duration::from_secs(8 * 60 * 60);

/// Who is signed in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user name.
    pub sub: String,
    /// E.164, where stepgate sends the SMS code.
    pub phone_number: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// Issues and checks session tokens with one shared secret.
pub struct Sessions {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Sessions {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A signed token for `user`, valid for `LIFETIME` from now.
    pub fn issue(
        &self,
        user: &str,
        phone_number: &str,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let claims = Claims {
            sub: user.to_owned(),
            phone_number: phone_number.to_owned(),
            exp: (now + LIFETIME).as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// The claims of a token this bank signed and that has not expired.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|data| data.claims)
    }

    /// The signed-in user of a request: the first `demo_session` cookie that verifies.
    pub fn from_headers(&self, headers: &HeaderMap) -> Option<Claims> {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == COOKIE_NAME)
            .find_map(|(_, token)| self.verify(token.trim()))
    }
}

/// `Set-Cookie` that stores the token.
pub fn set_cookie(token: &str) -> String {
    format!(
        "{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
        LIFETIME.as_secs()
    )
}

/// `Set-Cookie` that removes it.
pub fn clear_cookie() -> String {
    format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn a_token_round_trips_and_another_secret_or_garbage_is_refused() {
        let sessions = Sessions::new(b"0123456789abcdef0123456789abcdef");
        let token = sessions.issue("alice", "+31612345678").unwrap();
        let claims = sessions.verify(&token).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.phone_number, "+31612345678");
        let lifetime = claims.exp
            - SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
        assert!((LIFETIME.as_secs() - 5..=LIFETIME.as_secs()).contains(&lifetime));

        let other = Sessions::new(b"another-secret-another-secret-xx");
        assert_eq!(other.verify(&token), None);
        assert_eq!(sessions.verify("not.a.token"), None);

        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; demo_session=junk"));
        headers.append(
            COOKIE,
            HeaderValue::from_str(&format!("b=2; {COOKIE_NAME}={token}")).unwrap(),
        );
        assert_eq!(sessions.from_headers(&headers), Some(claims));
        assert!(set_cookie(&token).contains("HttpOnly"));
    }
}
