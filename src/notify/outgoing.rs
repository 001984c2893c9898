//! The outgoing-call policy every provider client is built on: never follow a redirect, ignore
//! the process environment's `HTTP(S)_PROXY` (only the configured `outgoing_proxy` counts), and
//! when a proxy is configured send every call through it with its Basic credentials
//! (`Proxy-Authorization` on each forwarded request and on each `CONNECT`).
//!
//! May import: config (the compiled proxy settings), `notify` itself.

use std::time::Duration;

use base64::Engine as _;

use super::NotifyError;
use super::outbound::describe_failure;
use crate::config::settings::OutgoingProxySettings;

/// A client builder with the outgoing policy: no redirects, the configured proxy or none at all.
/// Callers add their timeouts, roots and protocol settings.
pub fn client_builder(proxy: Option<&OutgoingProxySettings>) -> reqwest::ClientBuilder {
    // reqwest is built without a rustls provider; pingora uses ring, so both agree on it. A
    // second install finds it in place, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("stepgate/", env!("CARGO_PKG_VERSION")))
        .no_proxy();
    match proxy {
        Some(settings) => builder.proxy(self::proxy(settings)),
        None => builder,
    }
}

/// The reqwest proxy for the settings: every scheme goes through it.
fn proxy(settings: &OutgoingProxySettings) -> reqwest::Proxy {
    let proxy = match reqwest::Proxy::all(settings.url.clone()) {
        Ok(proxy) => proxy,
        // Only a URL without a host fails here, and validation refuses those; the custom form
        // cannot fail and routes the same way.
        Err(_) => {
            let url = settings.url.clone();
            reqwest::Proxy::custom(move |_| Some(url.clone()))
        }
    };
    match &settings.credentials {
        Some((username, password)) => {
            if !settings.preemptive_auth {
                // reqwest has no 407 round trip, so credentials only work when sent up front.
                tracing::warn!(
                    "outgoing_proxy.preemptive_auth is off, but the HTTP client can only send proxy credentials with the first request; sending them up front"
                );
            }
            // A sensitive header value rather than credentials in the proxy URL, so that no
            // debug output of the client shows the password.
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            match reqwest::header::HeaderValue::from_str(&format!("Basic {encoded}")) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    proxy.custom_http_auth(value)
                }
                Err(_) => proxy.basic_auth(username, password),
            }
        }
        None => proxy,
    }
}

/// The client an SMS gateway uses: the outgoing policy, one timeout for connecting and one for
/// the whole request.
pub(crate) fn client(
    provider: &'static str,
    timeout: Duration,
    proxy: Option<&OutgoingProxySettings>,
) -> Result<reqwest::Client, NotifyError> {
    build(
        provider,
        client_builder(proxy)
            .timeout(timeout)
            .connect_timeout(timeout),
        timeout,
    )
}

/// Builds `builder`, describing a failure for `provider`.
pub(crate) fn build(
    provider: &'static str,
    builder: reqwest::ClientBuilder,
    timeout: Duration,
) -> Result<reqwest::Client, NotifyError> {
    builder.build().map_err(|error| NotifyError::HttpClient {
        provider,
        reason: describe_failure(error, timeout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_settings_build_a_client_without_showing_the_password() {
        let settings = OutgoingProxySettings {
            url: url::Url::parse("http://proxy.internal:3128").unwrap(),
            credentials: Some(("gate".into(), "hunter2".into())),
            preemptive_auth: true,
        };
        let built = client_builder(Some(&settings)).build().unwrap();
        assert!(!format!("{built:?}").contains("hunter2"));
        client_builder(None).build().unwrap();
        client("test", Duration::from_secs(1), Some(&settings)).unwrap();
    }
}
