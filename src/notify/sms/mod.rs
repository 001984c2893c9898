//! SMS gateways, each an `SmsSender`: `twilio` (the Messages REST API), `http` (a generic JSON
//! or form webhook), `file` (appends JSON lines to a local file: the offline default) and
//! `console` (prints each SMS to standard output: demos only).
//! `build` turns the compiled settings into the selected sender, wrapped in `Instrumented` so
//! every send is counted and timed once; `startup_check` proves at boot that the gateway can
//! work (Twilio credentials, a writable outbox).
//!
//! May import: domain, config, telemetry.

pub mod console;
pub mod file;
pub mod http;
pub mod twilio;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::NotifyError;
use crate::config::settings::{OutgoingProxySettings, SmsGateway, SmsSettings};
use crate::domain::ports::{SendError, SmsMessage, SmsSender};
use crate::telemetry::metrics;

pub use self::console::ConsoleSender;
pub use self::file::FileSender;
pub use self::http::HttpSender;
pub use self::twilio::TwilioSender;

/// The sender for the configured gateway, instrumented. Opens no connection and touches no
/// file: connections are made by the first send, on the runtime that sends.
pub fn build(settings: &SmsSettings) -> Result<Arc<dyn SmsSender>, NotifyError> {
    build_with_proxy(settings, None)
}

/// As `build`, with the HTTP gateways' requests through the outgoing proxy when one is set.
pub fn build_with_proxy(
    settings: &SmsSettings,
    proxy: Option<&OutgoingProxySettings>,
) -> Result<Arc<dyn SmsSender>, NotifyError> {
    Ok(match &settings.gateway {
        SmsGateway::Twilio(twilio) => Arc::new(Instrumented::new(TwilioSender::with_proxy(
            twilio,
            settings.timeout,
            proxy,
        )?)),
        SmsGateway::Http(http) => Arc::new(Instrumented::new(HttpSender::with_proxy(
            http,
            settings.timeout,
            proxy,
        )?)),
        SmsGateway::File(file) => Arc::new(Instrumented::new(FileSender::new(file))),
        SmsGateway::Console => Arc::new(Instrumented::new(ConsoleSender::new())),
    })
}

/// Checks at boot that the configured gateway can work: Twilio accepts the account SID and auth
/// token (`NotifyError::Credentials` when it refuses them, `Unreachable` when it cannot be
/// asked); the HTTP gateway's client can be built (nothing is sent: a webhook has no harmless
/// request); the outbox file can be opened for appending; the console gateway warns that it
/// shows codes.
pub async fn startup_check(settings: &SmsSettings) -> Result<(), NotifyError> {
    startup_check_with_proxy(settings, None).await
}

/// As `startup_check`, through the outgoing proxy when one is set.
pub async fn startup_check_with_proxy(
    settings: &SmsSettings,
    proxy: Option<&OutgoingProxySettings>,
) -> Result<(), NotifyError> {
    match &settings.gateway {
        SmsGateway::Twilio(twilio) => {
            TwilioSender::with_proxy(twilio, settings.timeout, proxy)?
                .check_account()
                .await
        }
        SmsGateway::Http(http) => HttpSender::with_proxy(http, settings.timeout, proxy).map(drop),
        SmsGateway::File(file) => FileSender::new(file).check_writable().await,
        SmsGateway::Console => {
            ConsoleSender::warn_demo_only();
            Ok(())
        }
    }
}

/// The metric label for a send's result.
pub fn result_label(result: &Result<(), SendError>) -> &'static str {
    match result {
        Ok(()) => "sent",
        Err(SendError::SenderRefused(_)) => "sender_refused",
        Err(SendError::Rejected(_)) => "rejected",
        Err(SendError::Unavailable(_)) => "unavailable",
    }
}

/// Counts and times every send of the wrapped gateway
/// (`stepgate_sms_sent_total{gateway,result}`, `stepgate_sms_send_duration_seconds{gateway}`).
#[derive(Debug)]
pub struct Instrumented<S> {
    inner: S,
}

impl<S: SmsSender> Instrumented<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

#[async_trait]
impl<S: SmsSender> SmsSender for Instrumented<S> {
    fn gateway(&self) -> &'static str {
        self.inner.gateway()
    }

    async fn send(&self, message: &SmsMessage) -> Result<(), SendError> {
        let started = Instant::now();
        let result = self.inner.send(message).await;
        metrics::record_sms_send(self.gateway(), result_label(&result), started.elapsed());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scripted(Result<(), SendError>);

    #[async_trait]
    impl SmsSender for Scripted {
        fn gateway(&self) -> &'static str {
            "scripted"
        }
        async fn send(&self, _message: &SmsMessage) -> Result<(), SendError> {
            self.0.clone()
        }
    }

    fn sent_count(result: &str) -> u64 {
        metrics::register_all();
        let (_, body) = metrics::render();
        let text = String::from_utf8(body).unwrap();
        let needle =
            format!("stepgate_sms_sent_total{{gateway=\"scripted\",result=\"{result}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&needle))
            .map_or(0, |n| n.trim().parse().unwrap())
    }

    #[tokio::test]
    async fn every_send_is_counted_once_by_result() {
        let message = SmsMessage {
            to: "+31612345678".into(),
            from: None,
            body: "123456".into(),
        };
        let before = sent_count("sender_refused");
        let refusing = Instrumented::new(Scripted(Err(SendError::SenderRefused("x".into()))));
        assert!(refusing.send(&message).await.is_err());
        assert_eq!(sent_count("sender_refused"), before + 1);

        let before = sent_count("sent");
        let working = Instrumented::new(Scripted(Ok(())));
        working.send(&message).await.unwrap();
        assert_eq!(sent_count("sent"), before + 1);
        assert_eq!(working.gateway(), "scripted");
    }

    #[test]
    fn result_labels() {
        assert_eq!(result_label(&Ok(())), "sent");
        assert_eq!(
            result_label(&Err(SendError::Unavailable("t".into()))),
            "unavailable"
        );
        assert_eq!(
            result_label(&Err(SendError::Rejected("r".into()))),
            "rejected"
        );
    }
}
