//! `provider: console`: the demo's push "provider". Calls no one and prints each push as one
//! line on standard output, `Push to android device (push config demo-phone): <message>
//! [transaction <id>]`, so `stepgate demo` and local trials see the push where the operator
//! is looking while the phone app finds it in its pending list. The token (a secret) is never
//! printed. For demos only: the start-up check says so loudly.

use async_trait::async_trait;

use crate::domain::device::Platform;
use crate::domain::push::{PushError, PushMessage, PushSender};
use crate::notify::console::{ConsoleOutput, printable_line};

/// Prints pushes to standard output (or, in tests, to any writer).
#[derive(Debug, Clone)]
pub struct ConsolePushSender {
    out: ConsoleOutput,
}

impl Default for ConsolePushSender {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsolePushSender {
    pub fn new() -> Self {
        Self::with_output(ConsoleOutput::stdout())
    }

    pub fn with_output(out: ConsoleOutput) -> Self {
        Self { out }
    }

    /// Nothing to check; says loudly that no push leaves the gateway.
    pub fn warn_demo_only(push_config: &str) {
        tracing::warn!(
            push_config,
            provider = "console",
            "the console push provider prints pushes to standard output and delivers none: for demos only, never in production"
        );
    }
}

/// The printed line for one push (without the final newline).
pub fn line(message: &PushMessage) -> String {
    let platform = match message.platform {
        Platform::Ios => "ios",
        Platform::Android => "android",
    };
    let text = message
        .message
        .as_deref()
        .map_or_else(|| "(no message)".to_owned(), printable_line);
    format!(
        "Push to {platform} device (push config {}): {text} [transaction {}]",
        printable_line(&message.push_config),
        printable_line(&message.transaction_id),
    )
}

#[async_trait]
impl PushSender for ConsolePushSender {
    fn provider(&self) -> &'static str {
        "console"
    }

    async fn send(&self, message: &PushMessage) -> Result<(), PushError> {
        self.out
            .print(line(message))
            .await
            .map_err(|reason| PushError::Unavailable(format!("the push: {reason}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::console::Captured;

    fn push(message: Option<&str>) -> PushMessage {
        PushMessage {
            token: "secret-device-token".into(),
            platform: Platform::Android,
            push_config: "demo-phone".into(),
            topic: None,
            environment: Default::default(),
            transaction_id: "0c6f".into(),
            message: message.map(str::to_owned),
            expires_at_secs: 0,
        }
    }

    #[tokio::test]
    async fn a_push_is_one_printed_line_without_the_token() {
        let captured = Captured::default();
        let sender = ConsolePushSender::with_output(captured.output());
        sender
            .send(&push(Some("Approve 10 EUR\nto NL91\u{1b}[2J")))
            .await
            .unwrap();
        sender.send(&push(None)).await.unwrap();
        let printed = captured.text();
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(
            lines,
            [
                "Push to android device (push config demo-phone): Approve 10 EUR / to NL91\\u{1b}[2J [transaction 0c6f]",
                "Push to android device (push config demo-phone): (no message) [transaction 0c6f]",
            ]
        );
        assert!(!printed.contains("secret-device-token"));
    }
}
