//! The JSON Web Token source: picks the one token of a request (cookie or `Authorization:
//! Bearer`), verifies it with exactly the configured algorithm (no `none`, no algorithm
//! confusion, no `crit` extensions we do not understand), enforces `exp`, `nbf`, `iss` and `aud`,
//! and maps claims to the requester. Keys come from the settings, or from a JWKS URL cached here:
//! fetched on first use, refreshed in the background when older than `jwks_refresh_seconds`, and
//! fetched again on an unknown `kid` at most once per `jwks_min_refetch_seconds`.
//!
//! May import: config (settings), the identity module.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, decode, decode_header};
use pingora::http::RequestHeader;
use serde_json::{Map, Value};

use super::{Authorization, IdentityError, authorization, requester, single_cookie};
use crate::config::settings::{JwksUrlSettings, JwtSettings};
use crate::config::validate::jwks_keys;
use crate::service::stepup::Requester;

/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 256 * 1024;

type Keys = crate::config::settings::KeysById;

pub(super) struct JwtSource {
    settings: JwtSettings,
    algorithm: Algorithm,
    remote: Option<Arc<RemoteKeys>>,
}

impl JwtSource {
    pub(super) fn new(settings: JwtSettings) -> Self {
        let algorithm = settings
            .validation
            .algorithms
            .first()
            .copied()
            .unwrap_or(Algorithm::HS256);
        let remote = settings
            .jwks_url
            .clone()
            .map(|jwks| Arc::new(RemoteKeys::new(jwks, algorithm)));
        Self {
            settings,
            algorithm,
            remote,
        }
    }

    pub(super) async fn resolve(&self, req: &RequestHeader) -> Result<Requester, IdentityError> {
        let token = self.token(req)?;
        let header =
            decode_header(token).map_err(|_| IdentityError::Rejected("malformed token"))?;
        if header.crit.is_some() {
            // RFC 7515 4.1.11: extensions we do not understand must make the token invalid.
            return Err(IdentityError::Rejected("crit header parameter"));
        }
        if header.alg != self.algorithm {
            return Err(IdentityError::Rejected("algorithm not allowed"));
        }
        let kid = header.kid.as_deref();
        let claims = match &self.remote {
            Some(remote) => {
                let keys = remote.keys_for(kid).await?;
                let key = pick(&keys, kid).ok_or(IdentityError::Rejected("unknown key id"))?;
                self.verify(token, key)?
            }
            None => {
                let key = pick(&self.settings.keys, kid)
                    .ok_or(IdentityError::Rejected("unknown key id"))?;
                self.verify(token, key)?
            }
        };
        let user = match claims.get(&self.settings.user_claim) {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Number(number)) => number.to_string(),
            _ => return Err(IdentityError::Rejected("no user claim")),
        };
        let phone = self
            .settings
            .phone_claim
            .as_ref()
            .and_then(|claim| claims.get(claim))
            .and_then(Value::as_str);
        requester(user, phone)
    }

    /// The request's one token: the cookie's, or the bearer's; both only when they are the same.
    fn token<'a>(&self, req: &'a RequestHeader) -> Result<&'a str, IdentityError> {
        let cookie = match &self.settings.cookie {
            Some(name) => single_cookie(req, name, "identity cookie repeated")?,
            None => None,
        };
        let token = match (cookie, authorization(req)?) {
            (Some(cookie), Authorization::None) => cookie,
            (Some(cookie), Authorization::Bearer(bearer)) if bearer == cookie => cookie,
            (Some(_), _) => {
                return Err(IdentityError::Ambiguous(
                    "a cookie token and a different Authorization header",
                ));
            }
            (None, Authorization::Bearer(bearer)) => bearer,
            (None, Authorization::None | Authorization::Other) => {
                return Err(IdentityError::Missing);
            }
        };
        if token.is_empty() {
            return Err(IdentityError::Rejected("empty token"));
        }
        Ok(token)
    }

    fn verify(&self, token: &str, key: &DecodingKey) -> Result<Map<String, Value>, IdentityError> {
        decode::<Map<String, Value>>(token, key, &self.settings.validation)
            .map(|data| data.claims)
            .map_err(|error| {
                IdentityError::Rejected(match error.kind() {
                    ErrorKind::ExpiredSignature => "expired",
                    ErrorKind::ImmatureSignature => "not yet valid (nbf)",
                    ErrorKind::InvalidAudience => "wrong audience",
                    ErrorKind::InvalidIssuer => "wrong issuer",
                    ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        "algorithm not allowed"
                    }
                    _ => "invalid token",
                })
            })
    }
}

/// The key for `kid`: the key with that id; without a `kid`, the key without an id or the only
/// key; a key configured without an id (a secret, a PEM file) serves any `kid`.
fn pick<'a>(keys: &'a Keys, kid: Option<&str>) -> Option<&'a DecodingKey> {
    let by_id = kid.and_then(|kid| {
        keys.iter()
            .find(|(id, _)| id.as_deref() == Some(kid))
            .map(|(_, key)| key)
    });
    by_id
        .or_else(|| keys.iter().find(|(id, _)| id.is_none()).map(|(_, key)| key))
        .or(match (kid, keys.as_slice()) {
            (None, [(_, only)]) => Some(only),
            _ => None,
        })
}

/// Keys from a JWKS endpoint, cached.
struct RemoteKeys {
    settings: JwksUrlSettings,
    algorithm: Algorithm,
    client: Result<reqwest::Client, String>,
    state: RwLock<KeyState>,
    /// One fetch at a time; others wait for its result instead of fetching too.
    fetching: tokio::sync::Mutex<()>,
    /// A background refresh is under way.
    refreshing: AtomicBool,
}

#[derive(Default)]
struct KeyState {
    keys: Arc<Keys>,
    /// Last successful fetch.
    fetched: Option<Instant>,
    /// Last fetch, successful or not: unknown `kid`s and retries wait `min_refetch` after it.
    attempted: Option<Instant>,
    /// Why the last fetch failed, when it did.
    failure: Option<String>,
}

impl RemoteKeys {
    fn new(settings: JwksUrlSettings, algorithm: Algorithm) -> Self {
        let client = super::outbound_client(settings.timeout, "JWKS");
        Self {
            settings,
            algorithm,
            client,
            state: RwLock::new(KeyState::default()),
            fetching: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
        }
    }

    fn snapshot(&self) -> (Arc<Keys>, Option<Instant>, Option<Instant>, Option<String>) {
        match self.state.read() {
            Ok(state) => (
                state.keys.clone(),
                state.fetched,
                state.attempted,
                state.failure.clone(),
            ),
            Err(poisoned) => {
                let state = poisoned.into_inner();
                (
                    state.keys.clone(),
                    state.fetched,
                    state.attempted,
                    state.failure.clone(),
                )
            }
        }
    }

    /// The cached keys when they hold one for `kid`, else the keys after a fetch (when one is
    /// allowed now). `Unavailable` when no usable key is cached and the endpoint cannot be read.
    async fn keys_for(self: &Arc<Self>, kid: Option<&str>) -> Result<Arc<Keys>, IdentityError> {
        let (keys, fetched, attempted, failure) = self.snapshot();
        if pick(&keys, kid).is_some() {
            if fetched.is_none_or(|at| at.elapsed() >= self.settings.refresh) {
                self.refresh_in_background();
            }
            return Ok(keys);
        }
        if attempted.is_some_and(|at| at.elapsed() < self.settings.min_refetch) {
            // Too soon to ask again: a forged kid must not make us hammer the endpoint.
            return match failure {
                Some(cause) => Err(IdentityError::Unavailable(cause)),
                None => Err(IdentityError::Rejected("unknown key id")),
            };
        }
        let _one_at_a_time = self.fetching.lock().await;
        let (keys, _, attempted_now, failure) = self.snapshot();
        if attempted_now != attempted {
            // Another request fetched while we waited: its answer is ours.
            return match (pick(&keys, kid), failure) {
                (Some(_), _) => Ok(keys),
                (None, Some(cause)) => Err(IdentityError::Unavailable(cause)),
                (None, None) => Err(IdentityError::Rejected("unknown key id")),
            };
        }
        match self.fetch().await {
            Ok(keys) => Ok(keys),
            Err(cause) => Err(IdentityError::Unavailable(cause)),
        }
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.refreshing.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(async move {
            {
                let _one_at_a_time = this.fetching.lock().await;
                let (_, fetched, attempted, _) = this.snapshot();
                let due = fetched.is_none_or(|at| at.elapsed() >= this.settings.refresh)
                    && attempted.is_none_or(|at| at.elapsed() >= this.settings.min_refetch);
                if due {
                    // A failure keeps the cached keys; it is logged in `fetch`.
                    let _ = this.fetch().await;
                }
            }
            this.refreshing.store(false, Ordering::Release);
        });
    }

    /// Fetches the key set and records the outcome; a failed fetch keeps the cached keys.
    async fn fetch(&self) -> Result<Arc<Keys>, String> {
        let outcome = self.download().await;
        let mut state = match self.state.write() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        state.attempted = Some(now);
        match outcome {
            Ok(keys) => {
                state.keys = Arc::new(keys);
                state.fetched = Some(now);
                state.failure = None;
                tracing::debug!(keys = state.keys.len(), "JWKS fetched");
                Ok(state.keys.clone())
            }
            Err(cause) => {
                tracing::warn!(%cause, cached_keys = state.keys.len(), "JWKS fetch failed");
                state.failure = Some(cause.clone());
                Err(cause)
            }
        }
    }

    async fn download(&self) -> Result<Keys, String> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let mut response = client
            .get(self.settings.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|error| format!("JWKS endpoint unreachable: {}", error.without_url()))?;
        if !response.status().is_success() {
            return Err(format!("JWKS endpoint answered {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| format!("JWKS body unreadable: {}", error.without_url()))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("JWKS larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|error| format!("JWKS is not a key set: {error}"))?;
        let (keys, skipped) = jwks_keys(&set, self.algorithm);
        if !skipped.is_empty() {
            tracing::debug!(skipped = skipped.len(), "JWKS keys not usable here skipped");
        }
        if keys.is_empty() {
            return Err(format!("JWKS holds no usable {:?} key", self.algorithm));
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{EncodingKey, Header, Validation, encode};
    use serde_json::json;

    use super::super::test_support::{block, request};
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn validation(algorithm: Algorithm, iss: bool, aud: bool) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if iss {
            validation.set_issuer(&["https://idp.example"]);
            required.push("iss");
        }
        if aud {
            validation.set_audience(&["bank"]);
            required.push("aud");
        } else {
            validation.validate_aud = false;
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    fn hs256(iss: bool, aud: bool) -> JwtSource {
        JwtSource::new(JwtSettings {
            cookie: Some("session".into()),
            keys: vec![(None, DecodingKey::from_secret(SECRET))],
            jwks_url: None,
            validation: validation(Algorithm::HS256, iss, aud),
            user_claim: "sub".into(),
            phone_claim: Some("phone_number".into()),
        })
    }

    fn token(claims: Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn with_cookie(source: &JwtSource, token: &str) -> Result<Requester, IdentityError> {
        block(source.resolve(&request(&[("cookie", &format!("session={token}"))])))
    }

    /// Also the check that exactly one jsonwebtoken crypto backend is on (crates.md).
    #[test]
    fn identity_jwt_valid_token_in_cookie_or_bearer_gives_user_and_phone() {
        let source = hs256(false, false);
        let good = token(
            json!({"sub": "alice", "phone_number": "+31 6 1234 5678", "exp": now() + 600}),
            SECRET,
        );
        let expected = Ok(Requester {
            user_id: "alice".into(),
            phone_number: Some("+31612345678".into()),
            client_ip: None,
        });
        assert_eq!(with_cookie(&source, &good), expected);
        let bearer = request(&[("authorization", &format!("Bearer {good}"))]);
        assert_eq!(block(source.resolve(&bearer)), expected);
        // The same token in both places reads one way.
        let both = request(&[
            ("cookie", &format!("session={good}")),
            ("authorization", &format!("Bearer {good}")),
        ]);
        assert_eq!(block(source.resolve(&both)), expected);
    }

    #[test]
    fn identity_jwt_forged_expired_early_or_claimless_tokens_are_rejected() {
        let source = hs256(false, false);
        let cases = [
            (
                token(
                    json!({"sub": "a", "exp": now() + 600}),
                    b"another-secret-another-secret-xx",
                ),
                "bad signature",
            ),
            (token(json!({"sub": "a", "exp": 1_000}), SECRET), "expired"),
            (
                token(
                    json!({"sub": "a", "exp": now() + 600, "nbf": now() + 300}),
                    SECRET,
                ),
                "not yet valid (nbf)",
            ),
            (token(json!({"exp": now() + 600}), SECRET), "no user claim"),
            (
                token(json!({"sub": "a"}), SECRET),
                "a required claim is missing",
            ),
            ("garbage".to_owned(), "malformed token"),
        ];
        for (bad, why) in cases {
            assert_eq!(
                with_cookie(&source, &bad),
                Err(IdentityError::Rejected(why)),
                "{bad}"
            );
        }
    }

    #[test]
    fn identity_jwt_issuer_and_audience_are_required_when_configured() {
        let source = hs256(true, true);
        let exp = now() + 600;
        let good = token(
            json!({"sub": "a", "exp": exp, "iss": "https://idp.example", "aud": "bank"}),
            SECRET,
        );
        assert!(with_cookie(&source, &good).is_ok());
        let cases = [
            (
                json!({"sub": "a", "exp": exp, "aud": "bank"}),
                "a required claim is missing",
            ),
            (
                json!({"sub": "a", "exp": exp, "iss": "https://idp.example"}),
                "a required claim is missing",
            ),
            (
                json!({"sub": "a", "exp": exp, "iss": "https://evil.example", "aud": "bank"}),
                "wrong issuer",
            ),
            (
                json!({"sub": "a", "exp": exp, "iss": "https://idp.example", "aud": "shop"}),
                "wrong audience",
            ),
        ];
        for (claims, why) in cases {
            let bad = token(claims.clone(), SECRET);
            assert_eq!(
                with_cookie(&source, &bad),
                Err(IdentityError::Rejected(why)),
                "{claims}"
            );
        }
    }

    #[test]
    fn identity_jwt_crit_and_other_algorithms_are_refused() {
        let source = hs256(false, false);
        let claims = json!({"sub": "a", "exp": now() + 600});
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp".into()]);
        let crit = encode(&header, &claims, &EncodingKey::from_secret(SECRET)).unwrap();
        assert_eq!(
            with_cookie(&source, &crit),
            Err(IdentityError::Rejected("crit header parameter"))
        );
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            with_cookie(&source, &hs384),
            Err(IdentityError::Rejected("algorithm not allowed"))
        );
        // alg "none": no signature at all.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(claims.to_string())
        );
        assert_eq!(
            with_cookie(&source, &none),
            Err(IdentityError::Rejected("malformed token"))
        );
    }

    #[test]
    fn identity_jwt_alg_confusion_with_the_public_key_as_hmac_secret_fails() {
        // An ES256 source whose public key an attacker uses as an HS256 secret.
        let signing = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let public_pem = {
            use p256::pkcs8::{EncodePublicKey, LineEnding};
            signing
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap()
        };
        let source = JwtSource::new(JwtSettings {
            cookie: None,
            keys: vec![(
                None,
                DecodingKey::from_ec_pem(public_pem.as_bytes()).unwrap(),
            )],
            jwks_url: None,
            validation: validation(Algorithm::ES256, false, false),
            user_claim: "sub".into(),
            phone_claim: None,
        });
        let forged = token(
            json!({"sub": "a", "exp": now() + 600}),
            public_pem.as_bytes(),
        );
        let bearer = request(&[("authorization", &format!("Bearer {forged}"))]);
        assert_eq!(
            block(source.resolve(&bearer)),
            Err(IdentityError::Rejected("algorithm not allowed"))
        );
        let private_pem = {
            use p256::pkcs8::{EncodePrivateKey, LineEnding};
            signing.to_pkcs8_pem(LineEnding::LF).unwrap()
        };
        let good = encode(
            &Header::new(Algorithm::ES256),
            &json!({"sub": "a", "exp": now() + 600}),
            &EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        let bearer = request(&[("authorization", &format!("Bearer {good}"))]);
        assert!(block(source.resolve(&bearer)).is_ok());
    }

    #[test]
    fn identity_jwt_repeated_or_conflicting_credentials_are_ambiguous() {
        let source = hs256(false, false);
        let good = token(json!({"sub": "a", "exp": now() + 600}), SECRET);
        let other = token(json!({"sub": "b", "exp": now() + 600}), SECRET);
        let cases = [
            (
                vec![("cookie", format!("session={good}; session={other}"))],
                "identity cookie repeated",
            ),
            (
                vec![
                    ("cookie", format!("session={good}")),
                    ("cookie", format!("session={good}")),
                ],
                "identity cookie repeated",
            ),
            (
                vec![
                    ("authorization", format!("Bearer {good}")),
                    ("authorization", format!("Bearer {good}")),
                ],
                "Authorization header repeated",
            ),
            (
                vec![
                    ("cookie", format!("session={good}")),
                    ("authorization", format!("Bearer {other}")),
                ],
                "a cookie token and a different Authorization header",
            ),
            (
                vec![
                    ("cookie", format!("session={good}")),
                    ("authorization", "Basic YTpi".to_owned()),
                ],
                "a cookie token and a different Authorization header",
            ),
        ];
        for (headers, why) in cases {
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            assert_eq!(
                block(source.resolve(&request(&pairs))),
                Err(IdentityError::Ambiguous(why)),
                "{headers:?}"
            );
        }
        assert_eq!(
            block(source.resolve(&request(&[("authorization", "Basic YTpi")]))),
            Err(IdentityError::Missing)
        );
        assert_eq!(
            block(source.resolve(&request(&[]))),
            Err(IdentityError::Missing)
        );
    }

    #[test]
    fn identity_jwt_eddsa_tokens_verify_with_an_ed25519_key() {
        let mut seed = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        let der = {
            use ed25519_dalek::pkcs8::EncodePrivateKey;
            signing.to_pkcs8_der().unwrap()
        };
        let x = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(signing.verifying_key().as_bytes())
        };
        let source = JwtSource::new(JwtSettings {
            cookie: None,
            keys: vec![(
                Some("ed".into()),
                DecodingKey::from_ed_components(&x).unwrap(),
            )],
            jwks_url: None,
            validation: validation(Algorithm::EdDSA, false, false),
            user_claim: "uid".into(),
            phone_claim: None,
        });
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("ed".into());
        let good = encode(
            &header,
            &json!({"uid": 42, "exp": now() + 600}),
            &EncodingKey::from_ed_der(der.as_bytes()),
        )
        .unwrap();
        let bearer = request(&[("authorization", &format!("Bearer {good}"))]);
        assert_eq!(block(source.resolve(&bearer)).unwrap().user_id, "42");
        header.kid = Some("other".into());
        let unknown = encode(
            &header,
            &json!({"uid": 42, "exp": now() + 600}),
            &EncodingKey::from_ed_der(der.as_bytes()),
        )
        .unwrap();
        let bearer = request(&[("authorization", &format!("Bearer {unknown}"))]);
        assert_eq!(
            block(source.resolve(&bearer)),
            Err(IdentityError::Rejected("unknown key id"))
        );
    }

    #[test]
    fn identity_jwt_an_unreachable_jwks_url_is_unavailable_and_not_hammered() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let source = JwtSource::new(JwtSettings {
            cookie: None,
            keys: Vec::new(),
            jwks_url: Some(JwksUrlSettings {
                url: format!("http://127.0.0.1:{port}/jwks").parse().unwrap(),
                refresh: Duration::from_secs(300),
                min_refetch: Duration::from_secs(30),
                timeout: Duration::from_millis(500),
            }),
            validation: validation(Algorithm::HS256, false, false),
            user_claim: "sub".into(),
            phone_claim: None,
        });
        let good = token(json!({"sub": "a", "exp": now() + 600}), SECRET);
        let bearer = request(&[("authorization", &format!("Bearer {good}"))]);
        let first = block(source.resolve(&bearer));
        assert!(
            matches!(first, Err(IdentityError::Unavailable(_))),
            "{first:?}"
        );
        let remote = source.remote.as_ref().unwrap();
        let attempted = remote.snapshot().2;
        let second = block(source.resolve(&bearer));
        assert!(
            matches!(second, Err(IdentityError::Unavailable(_))),
            "{second:?}"
        );
        assert_eq!(
            remote.snapshot().2,
            attempted,
            "no second fetch within min_refetch"
        );
    }

    #[tokio::test]
    async fn identity_jwt_jwks_url_is_cached_and_refreshed_in_the_background_when_old() {
        use std::sync::atomic::AtomicUsize;
        let signing = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let point = p256::EncodedPoint::from(signing.verifying_key());
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let set = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
            "x": b64.encode(point.x().unwrap()), "y": b64.encode(point.y().unwrap())}]});
        let fetches = Arc::new(AtomicUsize::new(0));
        let counted = fetches.clone();
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let (counted, set) = (counted.clone(), set.clone());
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    axum::Json(set)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let jwks = |refresh: u64| JwksUrlSettings {
            url: format!("http://{addr}/jwks").parse().unwrap(),
            refresh: Duration::from_secs(refresh),
            min_refetch: Duration::ZERO,
            timeout: Duration::from_millis(500),
        };
        let source = |refresh: u64| {
            JwtSource::new(JwtSettings {
                cookie: None,
                keys: Vec::new(),
                jwks_url: Some(jwks(refresh)),
                validation: validation(Algorithm::ES256, false, false),
                user_claim: "sub".into(),
                phone_claim: None,
            })
        };
        let pem = {
            use p256::pkcs8::{EncodePrivateKey, LineEnding};
            signing.to_pkcs8_pem(LineEnding::LF).unwrap()
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let token = encode(
            &header,
            &json!({"sub": "a", "exp": now() + 600}),
            &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap();
        let bearer = request(&[("authorization", &format!("Bearer {token}"))]);
        // Fresh keys are reused.
        let cached = source(300);
        for _ in 0..3 {
            assert!(cached.resolve(&bearer).await.is_ok());
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        // Old keys still answer at once, and a refresh runs behind the request.
        let old = source(0);
        assert!(old.resolve(&bearer).await.is_ok());
        assert!(old.resolve(&bearer).await.is_ok());
        for _ in 0..50 {
            if fetches.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
    }
}
