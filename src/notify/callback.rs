//! Portal callbacks: one `POST <callback_uri>` per finished push or OTP transaction, with the
//! JSON body `{"callback_uri": .., "transaction_id": ..}` (`Content-Type:
//! application/json;charset=UTF-8`) and HTTP Basic credentials when `callbacks.endpoints` holds
//! some for exactly that URL. Any 2xx is delivered (portals are expected to answer 204).
//! Timeouts, connection failures, 5xx and 429 are worth retrying; any other answer (another 4xx,
//! a redirect, which is never followed) is rejected for good.
//!
//! "Exactly that URL" means equal after URL parsing (`url::Url`), which only normalises what
//! every HTTP client would (scheme and host case, default port, an empty path as `/`); the query
//! counts. Logs show `scheme://host[:port]/path` only, never the query or the credentials.
//!
//! May import: domain, config, `notify` itself.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use url::Url;

use super::NotifyError;
use super::outbound::describe_failure;
use super::outgoing::{build, client_builder};
use crate::config::settings::{CallbackSettings, OutgoingProxySettings};
use crate::domain::callback::{CallbackDelivery, CallbackError, CallbackJob};

const PROVIDER: &str = "callback";

/// The longest wait for a connection, whatever the whole-request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The content type the reference server sends.
const JSON_UTF8: &str = "application/json;charset=UTF-8";

/// The callback body: the reference API's two fields, nothing about the result (the portal
/// fetches that with the transaction id).
#[derive(Serialize)]
struct Body<'a> {
    callback_uri: &'a str,
    transaction_id: String,
}

/// Credentials for one configured endpoint.
struct Credentials {
    url: Url,
    username: String,
    password: String,
}

/// Sends portal callbacks. Cheap to share behind an `Arc`.
pub struct CallbackSender {
    client: reqwest::Client,
    credentials: Vec<Credentials>,
    timeout: Duration,
}

impl std::fmt::Debug for CallbackSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackSender")
            .field("endpoints_with_credentials", &self.credentials.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl CallbackSender {
    /// A sender with `settings`' credentials and timeout, through `proxy` when given (otherwise
    /// direct: the environment's `HTTP(S)_PROXY` is ignored). Builds no connection yet.
    pub fn new(
        settings: &CallbackSettings,
        proxy: Option<&OutgoingProxySettings>,
    ) -> Result<Self, NotifyError> {
        let builder = client_builder(proxy)
            .timeout(settings.timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(settings.timeout));
        let credentials = settings
            .endpoints
            .iter()
            .filter_map(|endpoint| {
                let (username, password) = endpoint.basic_auth.clone()?;
                Some(Credentials {
                    url: endpoint.url.clone(),
                    username,
                    password,
                })
            })
            .collect();
        Ok(Self {
            client: build(PROVIDER, builder, settings.timeout)?,
            credentials,
            timeout: settings.timeout,
        })
    }

    /// Sends one callback.
    pub async fn send(&self, job: &CallbackJob) -> Result<(), CallbackError> {
        let url = Url::parse(&job.callback_uri)
            .map_err(|_| CallbackError::Rejected("callback_uri is not a URL".to_owned()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CallbackError::Rejected(format!(
                "callback_uri scheme {} is not http or https",
                url.scheme()
            )));
        }
        let body = serde_json::to_vec(&Body {
            callback_uri: &job.callback_uri,
            transaction_id: job.transaction_id.to_string(),
        })
        .map_err(|err| CallbackError::Rejected(format!("cannot encode the body: {err}")))?;
        let mut request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8))
            .body(body);
        if let Some(credentials) = self.credentials.iter().find(|c| c.url == url) {
            // reqwest marks the Authorization value sensitive, so no debug output shows it.
            request = request.basic_auth(&credentials.username, Some(&credentials.password));
        }
        let response = request
            .send()
            .await
            .map_err(|err| CallbackError::Retryable(describe_failure(err, self.timeout)))?;
        let status = response.status();
        // The body is never read or logged: a portal's error page is not ours to keep.
        drop(response);
        classify(status)
    }
}

/// Whether an answer means delivered, try again, or give up.
pub fn classify(status: StatusCode) -> Result<(), CallbackError> {
    let code = status.as_u16();
    if status.is_success() {
        Ok(())
    } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Err(CallbackError::Retryable(format!(
            "portal answered HTTP {code}"
        )))
    } else if status.is_redirection() {
        Err(CallbackError::Rejected(format!(
            "portal answered with a redirect, which is not followed: HTTP {code}"
        )))
    } else {
        Err(CallbackError::Rejected(format!(
            "portal refused the callback: HTTP {code}"
        )))
    }
}

#[async_trait]
impl CallbackDelivery for CallbackSender {
    async fn deliver(&self, job: &CallbackJob) -> Result<(), CallbackError> {
        self.send(job).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings::CallbackEndpoint;

    #[test]
    fn answers_are_classified_for_retry() {
        assert_eq!(classify(StatusCode::NO_CONTENT), Ok(()));
        assert_eq!(classify(StatusCode::OK), Ok(()));
        assert_eq!(classify(StatusCode::ACCEPTED), Ok(()));
        for retry in [500, 502, 503, 504, 429] {
            let err = classify(StatusCode::from_u16(retry).unwrap()).unwrap_err();
            assert!(err.is_retryable(), "{retry}: {err}");
        }
        for give_up in [400, 401, 403, 404, 410, 301, 302, 307] {
            let err = classify(StatusCode::from_u16(give_up).unwrap()).unwrap_err();
            assert!(!err.is_retryable(), "{give_up}: {err}");
        }
    }

    #[test]
    fn debug_output_never_shows_a_password() {
        let settings = CallbackSettings {
            endpoints: vec![CallbackEndpoint {
                url: Url::parse("https://portal.example/cb").unwrap(),
                basic_auth: Some(("portal".into(), "hunter2".into())),
            }],
            ..CallbackSettings::default()
        };
        let sender = CallbackSender::new(&settings, None).unwrap();
        let shown = format!("{sender:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("endpoints_with_credentials: 1"), "{shown}");
    }

    #[test]
    fn the_body_is_the_reference_shape() {
        let body = serde_json::to_value(Body {
            callback_uri: "https://portal.example/cb?x=1",
            transaction_id: "0c6f1f2e-3b7a-4c55-9d0e-2a8f0b6e4d11".into(),
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "callback_uri": "https://portal.example/cb?x=1",
                "transaction_id": "0c6f1f2e-3b7a-4c55-9d0e-2a8f0b6e4d11",
            })
        );
    }

    #[tokio::test]
    async fn a_uri_that_cannot_be_called_is_rejected_without_a_request() {
        let sender = CallbackSender::new(&CallbackSettings::default(), None).unwrap();
        let job = |uri: &str| {
            CallbackJob::new(
                crate::domain::transaction::TransactionId::random(),
                uri.to_owned(),
                crate::domain::clock::Timestamp(0),
            )
        };
        for uri in ["not a url", "ftp://portal.example/cb", "mailto:a@b.example"] {
            let err = sender.send(&job(uri)).await.unwrap_err();
            assert!(!err.is_retryable(), "{uri}: {err}");
        }
    }
}
