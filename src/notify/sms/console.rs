//! The demo gateway: prints each message to standard output as one line,
//! `SMS to +31*******78: <body>`, the number masked and the body (code included) in full, so
//! `stepgate demo` and local trials show the code where the operator is looking. Codes are
//! visible to anyone who sees the output: never for production, which is why the start-up check
//! logs a warning. Line breaks in the body become ` / ` and other control characters are
//! escaped, so one message is always one line and cannot drive the terminal.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use crate::domain::ports::{SendError, SmsMessage, SmsSender};
use crate::telemetry::audit::mask_phone;

type Output = Arc<Mutex<Box<dyn Write + Send>>>;

/// Prints messages to standard output (or, in tests, to any writer).
#[derive(Clone)]
pub struct ConsoleSender {
    out: Output,
}

impl std::fmt::Debug for ConsoleSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSender").finish_non_exhaustive()
    }
}

impl Default for ConsoleSender {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsoleSender {
    /// Prints to standard output.
    pub fn new() -> Self {
        Self::with_writer(Box::new(std::io::stdout()))
    }

    /// Prints to `out` instead.
    pub fn with_writer(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Arc::new(Mutex::new(out)),
        }
    }

    /// Nothing to check; says loudly that codes will be visible.
    pub fn warn_demo_only() {
        tracing::warn!(
            gateway = "console",
            "the console SMS gateway prints every SMS, codes included, to standard output: for demos only, never in production"
        );
    }

    fn write_line(&self, line: &str) -> std::io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        out.write_all(line.as_bytes())?;
        out.flush()
    }
}

/// The printed line for one message (without the final newline).
pub fn line(message: &SmsMessage) -> String {
    let mut body = String::with_capacity(message.body.len());
    let mut lines = message
        .body
        .split(['\r', '\n'])
        .filter(|part| !part.is_empty());
    if let Some(first) = lines.next() {
        push_printable(&mut body, first);
        for part in lines {
            body.push_str(" / ");
            push_printable(&mut body, part);
        }
    }
    format!("SMS to {}: {body}", mask_phone(&message.to))
}

fn push_printable(out: &mut String, text: &str) {
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
}

#[async_trait]
impl SmsSender for ConsoleSender {
    fn gateway(&self) -> &'static str {
        "console"
    }

    async fn send(&self, message: &SmsMessage) -> Result<(), SendError> {
        let mut text = line(message);
        text.push('\n');
        let sender = self.clone();
        // Standard output may be a slow pipe: keep the write off the async workers.
        match tokio::task::spawn_blocking(move || sender.write_line(&text)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(SendError::Unavailable(format!(
                "cannot print the SMS to standard output: {error}"
            ))),
            Err(join_error) => Err(SendError::Unavailable(format!(
                "printing the SMS failed: {join_error}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose bytes the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn each_sms_is_one_line_with_the_number_masked_and_the_body_in_full() {
        let captured = Captured::default();
        let sender = ConsoleSender::with_writer(Box::new(captured.clone()));
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
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "SMS to +31*******78: Demo bank code: 123456\n\
             SMS to +31*******78: Code: 654321 / @bank.example #654321\\u{1b}[2J\n"
        );
        assert!(!text.contains("+31612345678"));
    }
}
