//! The demo gateway: prints each message to standard output as one line,
//! `SMS to +31*******78: <body>`, the number masked and the body (code included) in full, so
//! `stepgate demo` and local trials show the code where the operator is looking. Codes are
//! visible to anyone who sees the output: never for production, which is why the start-up check
//! logs a warning. Line breaks in the body become ` / ` and other control characters are
//! escaped, so one message is always one line and cannot drive the terminal.

use async_trait::async_trait;

use crate::domain::ports::{SendError, SmsMessage, SmsSender};
use crate::notify::console::{ConsoleOutput, printable_line};
use crate::telemetry::audit::mask_phone;

/// Prints messages to standard output (or, in tests, to any writer).
#[derive(Debug, Clone)]
pub struct ConsoleSender {
    out: ConsoleOutput,
}

impl Default for ConsoleSender {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsoleSender {
    /// Prints to standard output.
    pub fn new() -> Self {
        Self::with_output(ConsoleOutput::stdout())
    }

    /// Prints to `out` instead.
    pub fn with_output(out: ConsoleOutput) -> Self {
        Self { out }
    }

    /// Nothing to check; says loudly that codes will be visible.
    pub fn warn_demo_only() {
        tracing::warn!(
            gateway = "console",
            "the console SMS gateway prints every SMS, codes included, to standard output: for demos only, never in production"
        );
    }
}

/// The printed line for one message (without the final newline).
pub fn line(message: &SmsMessage) -> String {
    format!(
        "SMS to {}: {}",
        mask_phone(&message.to),
        printable_line(&message.body)
    )
}

#[async_trait]
impl SmsSender for ConsoleSender {
    fn gateway(&self) -> &'static str {
        "console"
    }

    async fn send(&self, message: &SmsMessage) -> Result<(), SendError> {
        self.out
            .print(line(message))
            .await
            .map_err(|reason| SendError::Unavailable(format!("the SMS: {reason}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::console::Captured;

    #[tokio::test]
    async fn each_sms_is_one_line_with_the_number_masked_and_the_body_in_full() {
        let captured = Captured::default();
        let sender = ConsoleSender::with_output(captured.output());
        assert_eq!(sender.gateway(), "console");
        sender
            .send(&SmsMessage {
                to: "+31612345678".into(),
                from: Some("MyBank".into()),
                body: "Demo bank code: 123456".into(),
            })
            .await
            .unwrap();
        sender
            .send(&SmsMessage {
                to: "+31612345678".into(),
                from: None,
                body: "Code: 654321\n\n@bank.example #654321\u{1b}[2J".into(),
            })
            .await
            .unwrap();
        let text = captured.text();
        assert_eq!(
            text,
            "SMS to +31*******78: Demo bank code: 123456\n\
             SMS to +31*******78: Code: 654321 / @bank.example #654321\\u{1b}[2J\n"
        );
        assert!(!text.contains("+31612345678"));
    }
}
