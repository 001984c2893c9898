//! Twilio's Messages REST API: a form POST of `To`, `From` and `Body` to
//! `{base_url}/2010-04-01/Accounts/{sid}/Messages.json` with HTTP Basic `sid:auth_token`; 201
//! means queued. Failures are classified from the status and Twilio's error code: sender errors
//! (only when the type's own sender id was used) so the caller retries with `from_number`,
//! 5xx/429/timeouts as unavailable, the rest as rejected. The startup check reads the account
//! (`GET .../Accounts/{sid}.json`), so wrong credentials fail at boot.
//!
//! Twilio's error `message` is never passed on: it can quote the phone number.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::Deserialize;

use super::super::NotifyError;
use super::super::outbound::{describe_failure, read_capped};
use super::super::outgoing;
use crate::config::settings::{OutgoingProxySettings, TwilioSettings};
use crate::domain::ports::{SendError, SmsMessage, SmsSender};

const PROVIDER: &str = "twilio";

/// Error codes that mean "this `From` cannot be used here" (invalid, unverified, not owned by
/// the account, not allowed for the destination or region): worth one retry with the default
/// number.
pub const SENDER_REFUSED_CODES: [u32; 9] = [
    21210, // 'From' phone number not verified
    21212, // invalid 'From' number (not a number, short code or alphanumeric sender id)
    21408, // permission to send to this region is not enabled (for this sender)
    21606, // 'From' is not a message-capable number for this destination
    21611, // 'From' has too many queued messages
    21612, // 'To' cannot be reached from this 'From'
    21659, // 'From' is not a Twilio number or short code
    21660, // 'From' number does not belong to the account
    21910, // invalid 'From' and 'To' pair
];

/// The fields of a Twilio error body that we use.
#[derive(Debug, Default, Deserialize)]
struct TwilioError {
    code: Option<u32>,
}

/// A short, number-free description of well-known error codes for logs.
fn code_meaning(code: u32) -> &'static str {
    match code {
        20003 => "authentication failed",
        20404 => "resource not found",
        20429 => "too many requests",
        21210 => "'From' number not verified",
        21211 => "invalid 'To' number",
        21212 => "invalid 'From' number",
        21408 => "region not enabled for sending",
        21602 => "message body required",
        21604 => "'To' number required",
        21606 => "'From' number cannot send to this destination",
        21610 => "recipient has unsubscribed",
        21611 => "too many messages queued for 'From'",
        21612 => "'To' unreachable from this 'From'",
        21614 => "'To' is not a mobile number",
        21617 => "body too long",
        21659 => "'From' is not a Twilio number",
        21660 => "'From' does not belong to the account",
        21910 => "invalid 'From' and 'To' pair",
        _ => "see https://www.twilio.com/docs/errors",
    }
}

fn describe_answer(status: StatusCode, code: Option<u32>) -> String {
    match code {
        Some(code) => format!(
            "HTTP {}, Twilio error {code} ({})",
            status.as_u16(),
            code_meaning(code)
        ),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// Classifies a non-success answer to a message POST. `custom_sender` says whether the type's
/// own sender id was used (a refused default number is not worth a retry with itself).
pub fn classify(status: StatusCode, code: Option<u32>, custom_sender: bool) -> SendError {
    let answer = describe_answer(status, code);
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return SendError::Unavailable(format!("Twilio is unavailable: {answer}"));
    }
    if status.is_redirection() {
        return SendError::Rejected(format!(
            "Twilio answered with a redirect, which is not followed: {answer} (check sms.twilio.base_url)"
        ));
    }
    if status.is_client_error() {
        if custom_sender && code.is_some_and(|code| SENDER_REFUSED_CODES.contains(&code)) {
            return SendError::SenderRefused(format!("Twilio refused the sender id: {answer}"));
        }
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return SendError::Rejected(format!(
                "Twilio refused the credentials: {answer} (check sms.twilio.account_sid and the auth token)"
            ));
        }
        return SendError::Rejected(format!("Twilio refused the message: {answer}"));
    }
    SendError::Unavailable(format!("Twilio answered unexpectedly: {answer}"))
}

/// Sends through one Twilio account.
pub struct TwilioSender {
    client: reqwest::Client,
    messages_url: String,
    account_url: String,
    account_sid: String,
    auth_token: String,
    from_number: String,
    timeout: Duration,
}

impl std::fmt::Debug for TwilioSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioSender")
            .field("account_sid", &self.account_sid)
            .field("from_number", &self.from_number)
            .finish_non_exhaustive()
    }
}

impl TwilioSender {
    pub fn new(settings: &TwilioSettings, timeout: Duration) -> Result<Self, NotifyError> {
        Self::with_proxy(settings, timeout, None)
    }

    /// As `new`, with every request through the outgoing proxy when one is configured.
    pub fn with_proxy(
        settings: &TwilioSettings,
        timeout: Duration,
        proxy: Option<&OutgoingProxySettings>,
    ) -> Result<Self, NotifyError> {
        let base = settings.base_url.as_str().trim_end_matches('/');
        let account_url = format!("{base}/2010-04-01/Accounts/{}", settings.account_sid);
        Ok(Self {
            client: outgoing::client(PROVIDER, timeout, proxy)?,
            messages_url: format!("{account_url}/Messages.json"),
            account_url: format!("{account_url}.json"),
            account_sid: settings.account_sid.clone(),
            auth_token: settings.auth_token.clone(),
            from_number: settings.from_number.clone(),
            timeout,
        })
    }

    /// Reads the account with the configured credentials: a refusal (401, 403, 404) is a
    /// configuration error; an account that is not active cannot send either.
    pub async fn check_account(&self) -> Result<(), NotifyError> {
        let unreachable = |reason: String| NotifyError::Unreachable {
            provider: PROVIDER,
            reason,
        };
        let response = self
            .client
            .get(&self.account_url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .send()
            .await
            .map_err(|error| unreachable(describe_failure(error, self.timeout)))?;
        let status = response.status();
        let body = read_capped(response).await;
        #[derive(Deserialize)]
        struct Account {
            status: Option<String>,
        }
        if status == StatusCode::OK {
            let account_status = serde_json::from_slice::<Account>(&body)
                .ok()
                .and_then(|account| account.status);
            return match account_status.as_deref() {
                None | Some("active") => Ok(()),
                Some(other) => Err(NotifyError::Credentials {
                    provider: PROVIDER,
                    reason: format!("account {} is {other}, not active", self.account_sid),
                }),
            };
        }
        let code = serde_json::from_slice::<TwilioError>(&body)
            .ok()
            .and_then(|error| error.code);
        let answer = describe_answer(status, code);
        if matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
        ) {
            return Err(NotifyError::Credentials {
                provider: PROVIDER,
                reason: format!(
                    "account {} with the configured auth token: {answer} (check sms.twilio.account_sid and sms.twilio.auth_token or STEPGATE_TWILIO_AUTH_TOKEN)",
                    self.account_sid
                ),
            });
        }
        Err(unreachable(format!(
            "reading the account answered {answer}"
        )))
    }
}

#[async_trait]
impl SmsSender for TwilioSender {
    fn gateway(&self) -> &'static str {
        PROVIDER
    }

    async fn send(&self, message: &SmsMessage) -> Result<(), SendError> {
        let (from, custom_sender) = match &message.from {
            Some(sender) => (sender.as_str(), true),
            None => (self.from_number.as_str(), false),
        };
        let response = self
            .client
            .post(&self.messages_url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .form(&[
                ("To", message.to.as_str()),
                ("From", from),
                ("Body", message.body.as_str()),
            ])
            .send()
            .await
            .map_err(|error| {
                SendError::Unavailable(format!("Twilio: {}", describe_failure(error, self.timeout)))
            })?;
        let status = response.status();
        // Read in full either way, so the connection can be reused.
        let body = read_capped(response).await;
        if status.is_success() {
            return Ok(());
        }
        let code = serde_json::from_slice::<TwilioError>(&body)
            .ok()
            .and_then(|error| error.code);
        Err(classify(status, code, custom_sender))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_errors_ask_for_a_retry_only_when_a_custom_sender_was_used() {
        let refused = classify(StatusCode::BAD_REQUEST, Some(21212), true);
        assert!(
            matches!(refused, SendError::SenderRefused(_)),
            "{refused:?}"
        );
        let with_default = classify(StatusCode::BAD_REQUEST, Some(21212), false);
        assert!(
            matches!(with_default, SendError::Rejected(_)),
            "{with_default:?}"
        );
    }

    #[test]
    fn statuses_map_to_retry_categories() {
        for (status, code, expected) in [
            (StatusCode::UNAUTHORIZED, Some(20003), "rejected"),
            (StatusCode::FORBIDDEN, None, "rejected"),
            (StatusCode::BAD_REQUEST, Some(21211), "rejected"),
            (StatusCode::NOT_FOUND, Some(20404), "rejected"),
            (StatusCode::TOO_MANY_REQUESTS, Some(20429), "unavailable"),
            (StatusCode::INTERNAL_SERVER_ERROR, None, "unavailable"),
            (StatusCode::BAD_GATEWAY, None, "unavailable"),
            (StatusCode::FOUND, None, "rejected"),
        ] {
            let error = classify(status, code, true);
            assert_eq!(
                super::super::result_label(&Err(error)),
                expected,
                "{status}"
            );
        }
    }

    #[test]
    fn messages_name_the_code_but_never_twilio_text() {
        let error = classify(StatusCode::BAD_REQUEST, Some(21211), false);
        assert_eq!(
            error.to_string(),
            "provider rejected the message: Twilio refused the message: HTTP 400, Twilio error 21211 (invalid 'To' number)"
        );
    }
}
