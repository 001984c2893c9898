//! The step-up assertion: a short-lived ES256 JWT that stepgate adds (as `Stepgate-Assertion`) to
//! every request it forwards after a step-up or with a grant, so the app can prove that a step-up
//! happened for this user and policy, and refuse requests that came around the sidecar. Its key
//! is the operator's P-256 key; the public half is served as a JWKS.
//!
//! Claims: `iss`, `sub` (the user), `aud` (when configured), `iat`, `nbf`, `exp`, `jti`, `policy`,
//! `amr` (RFC 8176 values for the method that approved), `auth_time` (when it approved) and
//! `txn` (the transaction that approved).
//!
//! May import: nothing else in this crate besides the domain.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::auth_type::Method;
use super::clock::Timestamp;

/// The header the assertion travels in (client copies are removed before forwarding).
pub const ASSERTION_HEADER: &str = "stepgate-assertion";

#[derive(Debug, thiserror::Error)]
pub enum AssertionKeyError {
    #[error("not a P-256 private key in PEM (PKCS#8 \"PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\")")]
    NotP256,
}

/// The signing key, with its JWKS entry. Cheap to clone.
#[derive(Clone)]
pub struct AssertionKey {
    encoding: EncodingKey,
    kid: String,
    x: String,
    y: String,
}

impl std::fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl AssertionKey {
    pub fn from_pem(pem: &str) -> Result<Self, AssertionKeyError> {
        let secret = p256::SecretKey::from_pkcs8_pem(pem)
            .or_else(|_| p256::SecretKey::from_sec1_pem(pem))
            .map_err(|_| AssertionKeyError::NotP256)?;
        let der = secret
            .to_pkcs8_der()
            .map_err(|_| AssertionKeyError::NotP256)?;
        let point = secret.public_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(AssertionKeyError::NotP256);
        };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        // RFC 7638 thumbprint: the required members in lexicographic order, no whitespace.
        let thumbprint = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(thumbprint.as_bytes()));
        Ok(Self {
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            kid,
            x,
            y,
        })
    }

    /// The public key as a JWK Set, for the app to verify assertions with.
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "kty": "EC",
            "crv": "P-256",
            "x": self.x,
            "y": self.y,
            "kid": self.kid,
            "use": "sig",
            "alg": "ES256",
        }]})
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// What an assertion says about one approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUpFacts<'a> {
    pub user_id: &'a str,
    pub policy: &'a str,
    /// The method that approved (after fallback); `None` for grants issued before assertions
    /// carried it.
    pub method: Option<Method>,
    pub auth_time: Timestamp,
    pub transaction_id: Option<&'a str>,
    /// Dynamic linking: the digest of the request parts the approval is bound to.
    pub bound: Option<&'a str>,
}

/// How the assertions of one gate are made.
#[derive(Debug, Clone)]
pub struct AssertionSigner {
    pub key: AssertionKey,
    pub issuer: String,
    pub audience: Option<String>,
    pub ttl: Duration,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
    policy: &'a str,
    amr: &'static [&'static str],
    auth_time: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    txn: Option<&'a str>,
    /// The bound request parts' digest (`require.bind`).
    #[serde(skip_serializing_if = "Option::is_none")]
    bind: Option<&'a str>,
}

impl AssertionSigner {
    /// A signed assertion for `facts`, valid from `now` for the configured TTL; `None` only if
    /// signing failed (it cannot with a key that loaded).
    pub fn sign(&self, facts: &StepUpFacts<'_>, now: Timestamp) -> Option<String> {
        let seconds = now.millis() / 1000;
        let claims = Claims {
            iss: &self.issuer,
            sub: facts.user_id,
            aud: self.audience.as_deref(),
            iat: seconds,
            nbf: seconds,
            exp: seconds + self.ttl.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
            policy: facts.policy,
            amr: amr(facts.method),
            auth_time: facts.auth_time.millis() / 1000,
            txn: facts.transaction_id,
            bind: facts.bound,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key.kid.clone());
        header.typ = Some("JWT".to_owned());
        jsonwebtoken::encode(&header, &claims, &self.key.encoding).ok()
    }
}

/// RFC 8176 authentication method references for the method that approved: `sms` for a code by
/// SMS; `swk` (proof of possession of a software-secured key, the device's) for push and OTP,
/// with `pin` or `fpt` and `mfa` where a second factor unlocked it.
pub fn amr(method: Option<Method>) -> &'static [&'static str] {
    match method {
        Some(Method::Sms) => &["sms"],
        Some(Method::Push | Method::Otp) => &["swk"],
        Some(Method::PushWithPin) => &["swk", "pin", "mfa"],
        Some(Method::PushWithFingerprint) => &["swk", "fpt", "mfa"],
        Some(Method::PushWithCustomAuthenticator) => &["swk", "mfa"],
        None => &[],
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation, decode, jwk::JwkSet};

    use super::*;

    const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg26wRVK4bdp8xe+hO
7+GIkUJfYIpmgt7nNWLSoSqHlS2hRANCAATOOlEgB/c1rYkND8WevRBVub29Q0HH
BJ6AJeKKXiiDvgeuE2QXMbtfWAIbGFsxJUUXt4TX9iemrGF0/jHwBEd1
-----END PRIVATE KEY-----
";

    #[test]
    fn an_assertion_verifies_with_the_served_jwks_and_says_who_what_and_how() {
        let key = AssertionKey::from_pem(KEY).unwrap();
        let signer = AssertionSigner {
            key: key.clone(),
            issuer: "https://gate.example/".into(),
            audience: Some("bank".into()),
            ttl: Duration::from_secs(60),
        };
        let now = Timestamp(1_700_000_000_000);
        let token = signer
            .sign(
                &StepUpFacts {
                    bound: None,
                    user_id: "ann",
                    policy: "transfers",
                    method: Some(Method::PushWithPin),
                    auth_time: Timestamp(1_699_999_990_000),
                    transaction_id: Some("tx-1"),
                },
                now,
            )
            .unwrap();
        let jwks: JwkSet = serde_json::from_value(key.jwks()).unwrap();
        let jwk = jwks.find(key.kid()).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["bank"]);
        validation.set_issuer(&["https://gate.example/"]);
        validation.validate_exp = false;
        let data =
            decode::<Value>(&token, &DecodingKey::from_jwk(jwk).unwrap(), &validation).unwrap();
        let claims = data.claims;
        assert_eq!(claims["sub"], "ann");
        assert_eq!(claims["policy"], "transfers");
        assert_eq!(claims["amr"], json!(["swk", "pin", "mfa"]));
        assert_eq!(claims["auth_time"], 1_699_999_990);
        assert_eq!(claims["exp"], 1_700_000_060);
        assert_eq!(claims["txn"], "tx-1");
        assert_eq!(data.header.kid.as_deref(), Some(key.kid()));
    }

    #[test]
    fn only_p256_keys_load() {
        assert!(AssertionKey::from_pem("not a key").is_err());
        assert!(AssertionKey::from_pem(KEY).is_ok());
    }
}
