//! Portal callbacks: one `POST <callback_uri>` per finished push or OTP transaction, with the
//! JSON body `{"callback_uri": .., "transaction_id": ..}` (`Content-Type:
//! application/json;charset=UTF-8`) and HTTP Basic credentials when `callbacks.endpoints` holds
//! some for exactly that URL. Any 2xx is delivered (portals are expected to answer 204).
//! Timeouts, connection failures, 5xx and 429 are worth retrying; any other answer (another 4xx,
//! a redirect, which is never followed) is rejected for good.
//!
//! A callback to a URL that is not a configured endpoint never reaches an internal address
//! (`domain::callback::is_internal`: loopback, private, link-local, ...) unless
//! `callbacks.allowed_networks` allows it, nor one of the gate's own listeners: a literal
//! address is checked before sending, a name on every address it resolves to, at connect time
//! (so a name that resolves to a public address when the portal registers it and to an internal
//! one later, DNS rebinding, is refused too).
//!
//! "Exactly that URL" means equal after URL parsing (`url::Url`), which only normalises what
//! every HTTP client would (scheme and host case, default port, an empty path as `/`); the query
//! counts. Logs show `scheme://host[:port]/path` only, never the query or the credentials.
//!
//! May import: domain, config, `notify` itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use url::Url;

use super::NotifyError;
use super::outbound::describe_failure;
use super::outgoing::{build, client_builder};
use crate::config::settings::{CallbackSettings, OutgoingProxySettings};
use crate::domain::callback::{
    CallbackDelivery, CallbackError, CallbackJob, is_refused, literal_address,
};

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

/// Where a callback that is not a configured endpoint may not go.
#[derive(Debug, Clone)]
struct Reach {
    allowed_networks: Vec<IpNet>,
    own_listeners: Vec<SocketAddr>,
}

impl Reach {
    /// Why `addr` may not be called, if it may not.
    fn refusal(&self, addr: SocketAddr) -> Option<&'static str> {
        let ip = crate::domain::address::unmapped(addr.ip());
        let own = self.own_listeners.iter().any(|listener| {
            listener.port() == addr.port()
                && (listener.ip() == ip || listener.ip().is_unspecified() || ip.is_loopback())
        });
        if own {
            return Some("one of the gate's own listeners");
        }
        is_refused(ip, &self.allowed_networks).then_some("an internal address")
    }
}

/// A name that resolves only to addresses a callback may not reach.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves to no address a callback may reach (internal addresses are refused)")]
struct Unreachable(String);

/// Resolves names for callbacks that are not configured endpoints, keeping only the
/// addresses they may reach: what the connection then uses is what was checked.
struct GuardedResolver {
    reach: Arc<Reach>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let reach = self.reach.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // The port is set by the connector; checked here with port 0 for the address
            // rules, and with the URL's port in `CallbackSender::send` for the listeners.
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let usable: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| reach.refusal(*addr).is_none())
                .collect();
            if usable.is_empty() {
                return Err(Box::new(Unreachable(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: reqwest::dns::Addrs = Box::new(usable.into_iter());
            Ok(addrs)
        })
    }
}

/// Sends portal callbacks. Cheap to share behind an `Arc`.
pub struct CallbackSender {
    /// For configured endpoints: the operator chose them.
    client: reqwest::Client,
    /// For every other URL: resolves through `GuardedResolver`.
    guarded: reqwest::Client,
    reach: Arc<Reach>,
    configured: Vec<Url>,
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
    /// `own_listeners`: the gate's listening addresses, which a callback never reaches.
    pub fn new(
        settings: &CallbackSettings,
        proxy: Option<&OutgoingProxySettings>,
        own_listeners: &[SocketAddr],
    ) -> Result<Self, NotifyError> {
        let builder = || {
            client_builder(proxy)
                .timeout(settings.timeout)
                .connect_timeout(CONNECT_TIMEOUT.min(settings.timeout))
        };
        let reach = Arc::new(Reach {
            allowed_networks: settings.allowed_networks.clone(),
            own_listeners: own_listeners.to_vec(),
        });
        let guarded = builder().dns_resolver(GuardedResolver {
            reach: reach.clone(),
        });
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
            client: build(PROVIDER, builder(), settings.timeout)?,
            guarded: build(PROVIDER, guarded, settings.timeout)?,
            reach,
            configured: settings.endpoints.iter().map(|e| e.url.clone()).collect(),
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
        let client = if self.configured.contains(&url) {
            &self.client
        } else {
            self.check_reach(&url)?;
            &self.guarded
        };
        let mut request = client
            .post(url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8))
            .body(body);
        if let Some(credentials) = self.credentials.iter().find(|c| c.url == url) {
            // reqwest marks the Authorization value sensitive, so no debug output shows it.
            request = request.basic_auth(&credentials.username, Some(&credentials.password));
        }
        let response = request.send().await.map_err(|err| {
            // Refused by the guarded resolver: given up for good, like a literal address.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
            while let Some(cause) = source {
                if let Some(unreachable) = cause.downcast_ref::<Unreachable>() {
                    return CallbackError::Rejected(unreachable.to_string());
                }
                source = cause.source();
            }
            CallbackError::Retryable(describe_failure(err, self.timeout))
        })?;
        let status = response.status();
        // The body is never read or logged: a portal's error page is not ours to keep.
        drop(response);
        classify(status)
    }

    /// Refuses, for good, a URL whose literal address or port the guarded resolver cannot see.
    fn check_reach(&self, url: &Url) -> Result<(), CallbackError> {
        let port = url.port_or_known_default().unwrap_or(80);
        // A name: its addresses are checked when it resolves (`GuardedResolver`).
        let refusal =
            literal_address(url).and_then(|ip| self.reach.refusal(SocketAddr::new(ip, port)));
        match refusal {
            Some(what) => Err(CallbackError::Rejected(format!(
                "callback_uri points at {what}, which is refused unless configured (callbacks.endpoints or callbacks.allowed_networks)"
            ))),
            None => Ok(()),
        }
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
        let sender = CallbackSender::new(&settings, None, &[]).unwrap();
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
    async fn internal_and_own_addresses_are_refused_unless_configured_or_allowed() {
        // Nothing listens on these: a request that went out would fail as retryable, a refusal
        // is final and comes before any connection.
        let own: SocketAddr = "203.0.113.5:8081".parse().unwrap();
        let sender = CallbackSender::new(&CallbackSettings::default(), None, &[own]).unwrap();
        let job = |uri: &str| {
            CallbackJob::new(
                crate::domain::transaction::TransactionId::random(),
                uri.to_owned(),
                crate::domain::clock::Timestamp(0),
            )
        };
        for uri in [
            "http://127.0.0.1:9/cb",
            "http://[::1]:9/cb",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1/cb",
            "http://[::ffff:192.168.0.1]/cb",
            "http://localhost:9/cb",
            "http://203.0.113.5:8081/admin/v1/reload",
        ] {
            let err = sender.send(&job(uri)).await.unwrap_err();
            assert!(!err.is_retryable(), "{uri}: {err}");
        }
        // An allowed network is reached (the connection fails, so the error is retryable).
        let allowed = CallbackSettings {
            allowed_networks: vec!["127.0.0.0/8".parse().unwrap()],
            ..CallbackSettings::default()
        };
        let sender = CallbackSender::new(&allowed, None, &[]).unwrap();
        let err = sender
            .send(&job("http://127.0.0.1:9/cb"))
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
    }

    #[tokio::test]
    async fn names_are_resolved_to_reachable_addresses_only() {
        use reqwest::dns::Resolve as _;
        let resolver = GuardedResolver {
            reach: Arc::new(Reach {
                allowed_networks: Vec::new(),
                own_listeners: Vec::new(),
            }),
        };
        let refused = resolver.resolve("localhost".parse().unwrap()).await;
        assert!(refused.is_err());
        let allowing = GuardedResolver {
            reach: Arc::new(Reach {
                allowed_networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
                own_listeners: Vec::new(),
            }),
        };
        let addrs: Vec<SocketAddr> = allowing
            .resolve("localhost".parse().unwrap())
            .await
            .map_err(|e| e.to_string())
            .unwrap()
            .collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()));
    }

    #[tokio::test]
    async fn a_uri_that_cannot_be_called_is_rejected_without_a_request() {
        let sender = CallbackSender::new(&CallbackSettings::default(), None, &[]).unwrap();
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
