//! A generic SMS webhook: one POST per message whose JSON object or form fields come from the
//! configured body template (`{to}`, `{from}`, `{body}` replaced), with optional Basic or Bearer
//! auth and extra headers. 2xx is success; 5xx, 429 and timeouts are unavailable; anything else
//! (other 4xx, a redirect, which is never followed) is rejected.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::super::NotifyError;
use super::super::outbound::{describe_failure, read_capped};
use super::super::outgoing;
use crate::config::settings::{
    BodyTemplate, HttpAuth, HttpBodyFormat, HttpGatewaySettings, OutgoingProxySettings,
};
use crate::domain::ports::{SendError, SmsMessage, SmsSender};

const PROVIDER: &str = "http";

/// Classifies a non-success status of the webhook.
pub fn classify(status: StatusCode) -> SendError {
    let code = status.as_u16();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        SendError::Unavailable(format!("SMS webhook is unavailable: HTTP {code}"))
    } else if status.is_redirection() {
        SendError::Rejected(format!(
            "SMS webhook answered with a redirect, which is not followed: HTTP {code} (check sms.http.url)"
        ))
    } else if status.is_client_error() {
        SendError::Rejected(format!("SMS webhook refused the message: HTTP {code}"))
    } else {
        SendError::Unavailable(format!("SMS webhook answered unexpectedly: HTTP {code}"))
    }
}

/// Sends through one configured webhook.
pub struct HttpSender {
    client: reqwest::Client,
    url: reqwest::Url,
    format: HttpBodyFormat,
    auth: Option<HttpAuth>,
    headers: HeaderMap,
    body: Vec<(String, BodyTemplate)>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSender")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl HttpSender {
    pub fn new(settings: &HttpGatewaySettings, timeout: Duration) -> Result<Self, NotifyError> {
        Self::with_proxy(settings, timeout, None)
    }

    /// As `new`, with every request through the outgoing proxy when one is configured.
    pub fn with_proxy(
        settings: &HttpGatewaySettings,
        timeout: Duration,
        proxy: Option<&OutgoingProxySettings>,
    ) -> Result<Self, NotifyError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            let invalid = |what: &str| NotifyError::HttpClient {
                provider: PROVIDER,
                reason: format!("header {name}: invalid {what}"),
            };
            let name_parsed =
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid("name"))?;
            let mut value = HeaderValue::from_str(value).map_err(|_| invalid("value"))?;
            // Extra headers usually carry API keys.
            value.set_sensitive(true);
            headers.append(name_parsed, value);
        }
        Ok(Self {
            client: outgoing::client(PROVIDER, timeout, proxy)?,
            url: settings.url.clone(),
            format: settings.format,
            auth: settings.auth.clone(),
            headers,
            body: settings.body.clone(),
            timeout,
        })
    }

    /// The body fields for one message, in template order. A field that is exactly `{from}` is
    /// left out when the message has no sender, so the provider applies its default.
    pub fn fields(&self, message: &SmsMessage) -> Vec<(String, String)> {
        let from = message.from.as_deref();
        self.body
            .iter()
            .filter(|(_, template)| from.is_some() || !template.is_only_from())
            .map(|(name, template)| {
                (
                    name.clone(),
                    template.render(&message.to, from, &message.body),
                )
            })
            .collect()
    }
}

#[async_trait]
impl SmsSender for HttpSender {
    fn gateway(&self) -> &'static str {
        PROVIDER
    }

    async fn send(&self, message: &SmsMessage) -> Result<(), SendError> {
        let fields = self.fields(message);
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone());
        request = match &self.auth {
            Some(HttpAuth::Basic { username, password }) => {
                request.basic_auth(username, Some(password))
            }
            Some(HttpAuth::Bearer(token)) => request.bearer_auth(token),
            None => request,
        };
        request = match self.format {
            HttpBodyFormat::Json => {
                let object: serde_json::Map<String, serde_json::Value> = fields
                    .into_iter()
                    .map(|(name, value)| (name, serde_json::Value::String(value)))
                    .collect();
                request.json(&object)
            }
            HttpBodyFormat::Form => request.form(&fields),
        };
        let response = request.send().await.map_err(|error| {
            SendError::Unavailable(format!(
                "SMS webhook: {}",
                describe_failure(error, self.timeout)
            ))
        })?;
        let status = response.status();
        // Read (capped) so the connection can be reused; the content is not needed.
        let _ = read_capped(response).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(classify(status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(body: &[(&str, &str)]) -> HttpSender {
        let settings = HttpGatewaySettings {
            url: "https://sms.example/send".parse().unwrap(),
            format: HttpBodyFormat::Json,
            auth: None,
            headers: vec![("X-Key".into(), "k".into())],
            body: body
                .iter()
                .map(|(name, text)| ((*name).to_owned(), BodyTemplate::parse(text).unwrap()))
                .collect(),
        };
        HttpSender::new(&settings, Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn placeholders_are_replaced_once_and_a_bare_from_is_omitted_without_sender() {
        let sender = sender(&[("to", "{to}"), ("from", "{from}"), ("text", "SMS: {body}")]);
        let message = SmsMessage {
            to: "+31612345678".into(),
            from: None,
            body: "code {to} 123456".into(),
        };
        assert_eq!(
            sender.fields(&message),
            [
                ("to".to_owned(), "+31612345678".to_owned()),
                ("text".to_owned(), "SMS: code {to} 123456".to_owned()),
            ]
        );
        let with_sender = SmsMessage {
            from: Some("MyBank".into()),
            ..message
        };
        assert_eq!(sender.fields(&with_sender)[1].1, "MyBank");
    }

    #[test]
    fn statuses_map_to_retry_categories() {
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE),
            SendError::Unavailable(_)
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS),
            SendError::Unavailable(_)
        ));
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST),
            SendError::Rejected(_)
        ));
        assert!(matches!(
            classify(StatusCode::MOVED_PERMANENTLY),
            SendError::Rejected(_)
        ));
    }
}
