//! Push delivery: `apns` (HTTP/2, ES256 provider tokens) and `fcm` (HTTP v1 with a service
//! account, or the legacy server key), both on reqwest through the outgoing proxy, and
//! `console` (printed, for demos). `PushSenders`
//! holds one sender per `push_configs` entry, routes each message by its `push_config`, and
//! counts and times every send (`stepgate_push_sends_total`, `stepgate_push_provider_seconds`).
//!
//! Keys were read and proven usable when the config loaded, so `build` opens no connection and
//! cannot fail on a key; connections are made by the first send, on the runtime that sends.
//!
//! May import: domain, config, telemetry.

pub mod apns;
pub mod console;
pub mod fcm;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::NotifyError;
use crate::config::Settings;
use crate::config::settings::{OutgoingProxySettings, PushConfigSettings, PushProviderSettings};
use crate::domain::clock::{SharedClock, SystemClock};
use crate::domain::device::Platform;
use crate::domain::push::{PushError, PushMessage, PushSender};
use crate::telemetry::metrics;

pub use self::apns::ApnsSender;
pub use self::console::ConsolePushSender;
pub use self::fcm::{FcmLegacySender, FcmV1Sender};

/// Connecting to a provider may take this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One whole provider request (token fetches are separate requests) may take this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The senders of every configured push config, by id.
#[derive(Clone, Default)]
pub struct PushSenders {
    senders: HashMap<String, (Platform, Arc<dyn PushSender>)>,
}

impl std::fmt::Debug for PushSenders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.senders.keys().collect();
        ids.sort();
        f.debug_struct("PushSenders").field("ids", &ids).finish()
    }
}

/// The senders for `settings.push_configs`, through `settings.outgoing_proxy`.
pub fn build(settings: &Settings) -> Result<PushSenders, NotifyError> {
    PushSenders::build(
        &settings.push_configs,
        settings.outgoing_proxy.as_ref(),
        Arc::new(SystemClock),
    )
}

impl PushSenders {
    /// One sender per config; `clock` dates provider tokens (a manual clock in tests).
    pub fn build(
        configs: &[PushConfigSettings],
        proxy: Option<&OutgoingProxySettings>,
        clock: SharedClock,
    ) -> Result<Self, NotifyError> {
        let mut senders = Self::default();
        for config in configs {
            let ca_pem = config.ca_pem.as_deref();
            let sender: Arc<dyn PushSender> = match &config.provider {
                PushProviderSettings::Apns(apns) => {
                    Arc::new(ApnsSender::new(apns, ca_pem, proxy, clock.clone())?)
                }
                PushProviderSettings::FcmV1(fcm) => {
                    Arc::new(FcmV1Sender::new(fcm, ca_pem, proxy, clock.clone())?)
                }
                PushProviderSettings::FcmLegacy(legacy) => {
                    Arc::new(FcmLegacySender::new(legacy, ca_pem, proxy, clock.clone())?)
                }
                PushProviderSettings::Console(_) => {
                    ConsolePushSender::warn_demo_only(&config.id);
                    Arc::new(ConsolePushSender::new())
                }
            };
            senders.insert(&config.id, config.platform(), sender);
        }
        Ok(senders)
    }

    /// Adds (or replaces) the sender for `id`; for tests and custom wiring.
    pub fn insert(&mut self, id: &str, platform: Platform, sender: Arc<dyn PushSender>) {
        self.senders.insert(id.to_owned(), (platform, sender));
    }

    pub fn contains(&self, id: &str) -> bool {
        self.senders.contains_key(id)
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Delivers through the message's push config, counted and timed once. A config that does
    /// not exist, or serves the other platform, is `UnknownConfig` and asks no provider.
    pub async fn send(&self, message: &PushMessage) -> Result<(), PushError> {
        let Some((_, sender)) = self
            .senders
            .get(&message.push_config)
            .filter(|(platform, _)| *platform == message.platform)
        else {
            metrics::push_unknown_config();
            return Err(PushError::UnknownConfig(message.push_config.clone()));
        };
        let started = Instant::now();
        let result = sender.send(message).await;
        let label = match &result {
            Ok(()) => "sent",
            Err(error) => error.label(),
        };
        metrics::record_push_send(sender.provider(), label, started.elapsed());
        result
    }
}

/// The router is itself a sender, so services take one `Arc<dyn PushSender>` port.
#[async_trait]
impl PushSender for PushSenders {
    fn provider(&self) -> &'static str {
        "push"
    }

    async fn send(&self, message: &PushMessage) -> Result<(), PushError> {
        PushSenders::send(self, message).await
    }
}

/// A client with the outgoing policy, the provider timeouts, and `ca_pem`'s roots trusted
/// besides the system's.
fn provider_client(
    provider: &'static str,
    ca_pem: Option<&[u8]>,
    proxy: Option<&OutgoingProxySettings>,
    http2_only: bool,
) -> Result<reqwest::Client, NotifyError> {
    let mut builder = super::outgoing::client_builder(proxy)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    if http2_only {
        builder = builder.http2_prior_knowledge();
    }
    if let Some(pem) = ca_pem {
        let roots = reqwest::Certificate::from_pem_bundle(pem).map_err(|error| {
            NotifyError::HttpClient {
                provider,
                reason: format!("ca_file: {}", error.without_url()),
            }
        })?;
        builder = builder.tls_certs_merge(roots);
    }
    super::outgoing::build(provider, builder, REQUEST_TIMEOUT)
}

/// A short, printable excerpt of a provider's error code (never a body: it may echo a token).
fn code_excerpt(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect()
}

/// Unix seconds of the clock.
fn unix_seconds(clock: &SharedClock) -> u64 {
    clock.now().millis() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scripted(Result<(), PushError>);

    #[async_trait]
    impl PushSender for Scripted {
        fn provider(&self) -> &'static str {
            "scripted"
        }
        async fn send(&self, _message: &PushMessage) -> Result<(), PushError> {
            self.0.clone()
        }
    }

    fn message(push_config: &str, platform: Platform) -> PushMessage {
        PushMessage {
            token: "t".into(),
            platform,
            push_config: push_config.into(),
            topic: None,
            environment: Default::default(),
            transaction_id: "tx".into(),
            message: None,
            expires_at_secs: 0,
        }
    }

    fn count(provider: &str, result: &str) -> u64 {
        metrics::register_all();
        let text = String::from_utf8(metrics::render().1).unwrap();
        let needle =
            format!("stepgate_push_sends_total{{provider=\"{provider}\",result=\"{result}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&needle))
            .map_or(0, |n| n.trim().parse().unwrap())
    }

    #[tokio::test]
    async fn sends_are_routed_by_config_and_platform_and_counted() {
        let mut senders = PushSenders::default();
        senders.insert("ok", Platform::Android, Arc::new(Scripted(Ok(()))));
        senders.insert(
            "gone",
            Platform::Ios,
            Arc::new(Scripted(Err(PushError::Unregistered))),
        );
        let sent = count("scripted", "sent");
        senders
            .send(&message("ok", Platform::Android))
            .await
            .unwrap();
        assert_eq!(count("scripted", "sent"), sent + 1);

        let gone = count("scripted", "unregistered");
        assert_eq!(
            senders.send(&message("gone", Platform::Ios)).await,
            Err(PushError::Unregistered)
        );
        assert_eq!(count("scripted", "unregistered"), gone + 1);

        let unknown = count("none", "unknown_config");
        assert_eq!(
            senders.send(&message("absent", Platform::Ios)).await,
            Err(PushError::UnknownConfig("absent".into()))
        );
        // The right id for the other platform is no better.
        assert_eq!(
            senders.send(&message("ok", Platform::Ios)).await,
            Err(PushError::UnknownConfig("ok".into()))
        );
        assert_eq!(count("none", "unknown_config"), unknown + 2);
        assert!(format!("{senders:?}").contains("\"gone\", \"ok\""));
    }

    #[test]
    fn provider_codes_are_cut_to_a_safe_excerpt() {
        assert_eq!(code_excerpt("BadDeviceToken"), "BadDeviceToken");
        assert_eq!(code_excerpt("a\nb<script>"), "abscript");
        assert_eq!(code_excerpt(&"x".repeat(100)).len(), 64);
    }
}
