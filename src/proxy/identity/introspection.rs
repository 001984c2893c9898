//! The introspection source, for apps whose session cookie is opaque: stepgate asks the app's
//! own "who am I" endpoint, forwarding only the configured session cookie(s), and reads the user
//! id (and phone number) from the JSON answer. Positive answers are cached per SHA-256 of the
//! cookie values for `cache_seconds`, in a bounded map; 401/403 mean no identity (not cached),
//! anything else that is not a 2xx JSON answer fails closed (`Unavailable`, never cached).
//!
//! May import: config (settings), service (`Requester`), the identity module.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use http::HeaderValue;
use http::header::{ACCEPT, COOKIE};
use pingora::http::RequestHeader;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Authorization, IdentityError, authorization, requester, single_cookie};
use crate::config::settings::IntrospectionSettings;
use crate::service::stepup::Requester;

/// An answer larger than this is refused (fails closed).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

pub(super) struct IntrospectionSource {
    settings: IntrospectionSettings,
    client: Result<reqwest::Client, String>,
    /// SHA-256 of the forwarded cookies -> (until, requester).
    cache: Mutex<HashMap<[u8; 32], (Instant, Requester)>>,
}

impl IntrospectionSource {
    pub(super) fn new(settings: IntrospectionSettings) -> Self {
        let client = super::outbound_client(settings.timeout, "introspection");
        Self {
            settings,
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub(super) async fn resolve(&self, req: &RequestHeader) -> Result<Requester, IdentityError> {
        let mut cookies: Vec<(&str, &str)> = Vec::with_capacity(self.settings.cookies.len());
        for name in &self.settings.cookies {
            if let Some(value) = single_cookie(req, name, "session cookie repeated")? {
                cookies.push((name, value));
            }
        }
        if cookies.is_empty() {
            return Err(IdentityError::Missing);
        }
        if authorization(req)? != Authorization::None {
            // The app may prefer the header over the cookie we would vouch for.
            return Err(IdentityError::Ambiguous(
                "an Authorization header next to the session cookie",
            ));
        }
        let key = cache_key(&cookies);
        if let Some(requester) = self.cached(&key) {
            return Ok(requester);
        }
        let requester = self.ask(&cookies).await?;
        self.remember(key, &requester);
        Ok(requester)
    }

    async fn ask(&self, cookies: &[(&str, &str)]) -> Result<Requester, IdentityError> {
        let client = self
            .client
            .as_ref()
            .map_err(|cause| IdentityError::Unavailable(cause.clone()))?;
        let header = cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut header = HeaderValue::from_str(&header)
            .map_err(|_| IdentityError::Rejected("session cookie is not a header value"))?;
        header.set_sensitive(true);
        let mut response = client
            .request(self.settings.method.clone(), self.settings.url.clone())
            .header(COOKIE, header)
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(|error| {
                IdentityError::Unavailable(format!(
                    "introspection endpoint unreachable: {}",
                    error.without_url()
                ))
            })?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(IdentityError::Rejected(
                "the app does not know this session",
            ));
        }
        if !status.is_success() {
            return Err(IdentityError::Unavailable(format!(
                "introspection endpoint answered {status}"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| {
            IdentityError::Unavailable(format!(
                "introspection answer unreadable: {}",
                error.without_url()
            ))
        })? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(IdentityError::Unavailable(format!(
                    "introspection answer larger than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let answer: Value = serde_json::from_slice(&body).map_err(|_| {
            IdentityError::Unavailable("introspection answer is not JSON".to_owned())
        })?;
        let user = match field(&answer, &self.settings.user_field) {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Number(number)) => number.to_string(),
            _ => {
                return Err(IdentityError::Rejected(
                    "no user in the introspection answer",
                ));
            }
        };
        let phone = self
            .settings
            .phone_field
            .as_ref()
            .and_then(|path| field(&answer, path))
            .and_then(Value::as_str);
        requester(user, phone)
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Requester> {
        if self.settings.cache_ttl.is_zero() {
            return None;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(key) {
            Some((until, requester)) if *until > Instant::now() => Some(requester.clone()),
            Some(_) => {
                cache.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember(&self, key: [u8; 32], requester: &Requester) {
        if self.settings.cache_ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.settings.cache_entries {
            cache.retain(|_, (until, _)| *until > now);
        }
        if cache.len() >= self.settings.cache_entries {
            // Still full of live entries: make room by dropping one (they all expire soon).
            if let Some(victim) = cache.keys().next().copied() {
                cache.remove(&victim);
            }
        }
        cache.insert(key, (now + self.settings.cache_ttl, requester.clone()));
    }
}

/// SHA-256 over the forwarded cookies: the cache never holds a session value.
fn cache_key(cookies: &[(&str, &str)]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for (name, value) in cookies {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(value.as_bytes());
        hash.update([0]);
    }
    hash.finalize().into()
}

/// The value at a dotted path.
fn field<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, part| value.get(part))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use serde_json::json;

    use super::super::test_support::request;
    use super::*;

    /// An endpoint on 127.0.0.1 answering by the session cookie, counting calls.
    async fn endpoint(calls: Arc<AtomicUsize>) -> String {
        let app = axum::Router::new().route(
            "/me",
            axum::routing::get(move |headers: HeaderMap| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let cookie = headers
                        .get("cookie")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    match cookie.as_str() {
                        "session=good" => {
                            axum::Json(json!({"user": {"id": "carol", "phone": "+31612345678"}}))
                                .into_response()
                        }
                        "session=broken" => StatusCode::BAD_GATEWAY.into_response(),
                        _ => StatusCode::UNAUTHORIZED.into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/me")
    }

    fn source(url: &str) -> IntrospectionSource {
        IntrospectionSource::new(IntrospectionSettings {
            url: url.parse().unwrap(),
            method: http::Method::GET,
            cookies: vec!["session".into()],
            user_field: vec!["user".into(), "id".into()],
            phone_field: Some(vec!["user".into(), "phone".into()]),
            cache_ttl: Duration::from_secs(60),
            cache_entries: 2,
            timeout: Duration::from_millis(500),
        })
    }

    #[tokio::test]
    async fn identity_introspection_maps_caches_and_fails_closed() {
        let calls = Arc::new(AtomicUsize::new(0));
        let source = source(&endpoint(calls.clone()).await);
        let good = request(&[("cookie", "other=x; session=good")]);
        let expected = Requester {
            user_id: "carol".into(),
            phone_number: Some("+31612345678".into()),
            client_ip: None,
        };
        assert_eq!(source.resolve(&good).await, Ok(expected.clone()));
        assert_eq!(source.resolve(&good).await, Ok(expected));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the second answer is cached"
        );
        let bad = request(&[("cookie", "session=stolen-guess")]);
        assert_eq!(
            source.resolve(&bad).await,
            Err(IdentityError::Rejected(
                "the app does not know this session"
            ))
        );
        let broken = request(&[("cookie", "session=broken")]);
        assert!(matches!(
            source.resolve(&broken).await,
            Err(IdentityError::Unavailable(_))
        ));
        assert!(matches!(
            source.resolve(&broken).await,
            Err(IdentityError::Unavailable(_))
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 4, "failures are never cached");
        assert_eq!(
            source.resolve(&request(&[("cookie", "other=x")])).await,
            Err(IdentityError::Missing)
        );
        let twice = request(&[("cookie", "session=good"), ("cookie", "session=evil")]);
        assert_eq!(
            source.resolve(&twice).await,
            Err(IdentityError::Ambiguous("session cookie repeated"))
        );
        let bearer = request(&[("cookie", "session=good"), ("authorization", "Bearer x")]);
        assert_eq!(
            source.resolve(&bearer).await,
            Err(IdentityError::Ambiguous(
                "an Authorization header next to the session cookie"
            ))
        );
    }

    #[tokio::test]
    async fn identity_introspection_endpoint_down_is_unavailable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let source = source(&format!("http://127.0.0.1:{port}/me"));
        let result = source
            .resolve(&request(&[("cookie", "session=good")]))
            .await;
        assert!(
            matches!(&result, Err(IdentityError::Unavailable(cause)) if !cause.contains("good")),
            "{result:?}"
        );
    }

    #[test]
    fn identity_introspection_cache_stays_bounded() {
        let source = source("http://127.0.0.1:9/me");
        let requester = Requester {
            user_id: "u".into(),
            phone_number: None,
            client_ip: None,
        };
        for value in ["a", "b", "c", "d"] {
            source.remember(cache_key(&[("session", value)]), &requester);
        }
        assert_eq!(source.cache.lock().unwrap().len(), 2);
        assert!(source.cached(&cache_key(&[("session", "d")])).is_some());
    }

    #[test]
    fn identity_introspection_dotted_fields_are_walked() {
        let answer = json!({"user": {"id": 7}, "id": "top"});
        assert_eq!(
            field(&answer, &["user".into(), "id".into()]),
            Some(&json!(7))
        );
        assert_eq!(field(&answer, &["id".into()]), Some(&json!("top")));
        assert_eq!(field(&answer, &["user".into(), "nope".into()]), None);
    }
}
