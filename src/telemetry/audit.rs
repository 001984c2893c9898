//! Audit events: one structured log line per security-relevant event, named after the reference
//! event catalogue (e.g. `SMS_AUTH_INIT_MESSAGE_SENT`), on the `stepgate::audit` target so they
//! can be routed apart. They never carry a code, a secret or a full phone number.
//!
//! Each event also goes, as a plain `AuditRecord`, to the process-wide sink when one is
//! installed (`install_sink`; the composition root drains it into the store for the admin API).
//! Sending never waits and never fails the caller: when the sink is full the record is counted
//! in `dropped_records` and only the log line remains.
//!
//! Imports nothing from this crate.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;

/// The process-wide sink of audit records.
static SINK: OnceLock<mpsc::Sender<AuditRecord>> = OnceLock::new();

/// Records the sink could not take (full, or its reader gone).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// One audit event. Build it with the fields that apply, then `emit`.
#[derive(Debug, Default)]
pub struct AuditEvent<'a> {
    pub event: &'static str,
    pub transaction_id: Option<&'a str>,
    pub auth_type: Option<&'a str>,
    pub method: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub client_id: Option<&'a str>,
    /// A masked phone number (see `mask_phone`).
    pub phone: Option<String>,
    pub detail: Option<&'a str>,
}

impl AuditEvent<'_> {
    pub fn emit(&self) {
        tracing::info!(
            target: "stepgate::audit",
            event = self.event,
            transaction_id = self.transaction_id,
            auth_type = self.auth_type,
            method = self.method,
            user_id = self.user_id,
            client_id = self.client_id,
            phone = self.phone.as_deref(),
            detail = self.detail,
            "audit"
        );
        if let Some(sink) = SINK.get() {
            offer(sink, self.record());
        }
    }

    /// The event as owned data, stamped with the wall-clock time.
    pub fn record(&self) -> AuditRecord {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or_default();
        AuditRecord {
            at_ms,
            event: self.event,
            transaction_id: self.transaction_id.map(str::to_owned),
            auth_type: self.auth_type.map(str::to_owned),
            method: self.method.map(str::to_owned),
            user_id: self.user_id.map(str::to_owned),
            client_id: self.client_id.map(str::to_owned),
            phone: self.phone.clone(),
            detail: self.detail.map(str::to_owned),
        }
    }
}

/// One audit event as plain data, for storage: the fields of `AuditEvent` and when it happened
/// (epoch milliseconds). Serializes as the JSON object the admin API shows, `at` included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    #[serde(rename = "at")]
    pub at_ms: u64,
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Already masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditRecord {
    /// The record as one JSON object.
    pub fn to_json(&self) -> String {
        // Strings and numbers only: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Installs the process-wide sink holding up to `capacity` records and returns its reader;
/// `None` when a sink is already installed (there is one per process).
pub fn install_sink(capacity: usize) -> Option<mpsc::Receiver<AuditRecord>> {
    install_into(&SINK, capacity)
}

/// How many records the sink could not take since the process started.
pub fn dropped_records() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

fn install_into(
    cell: &OnceLock<mpsc::Sender<AuditRecord>>,
    capacity: usize,
) -> Option<mpsc::Receiver<AuditRecord>> {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    cell.set(sender).ok().map(|()| receiver)
}

/// Hands the record over without waiting; a full or closed sink only counts it.
fn offer(sink: &mpsc::Sender<AuditRecord>, record: AuditRecord) {
    if sink.try_send(record).is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keeps the country prefix's first characters and the last two digits: enough to tell numbers
/// apart in an investigation, not enough to contact anyone.
pub fn mask_phone(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    if chars.len() <= 5 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_serialize_without_absent_fields() {
        let record = AuditEvent {
            event: "SMS_AUTH_INIT_MESSAGE_SENT",
            transaction_id: Some("t-1"),
            phone: Some(mask_phone("+31612345678")),
            ..AuditEvent::default()
        }
        .record();
        assert!(record.at_ms > 1_600_000_000_000, "{}", record.at_ms);
        let json: serde_json::Value = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "at": record.at_ms,
                "event": "SMS_AUTH_INIT_MESSAGE_SENT",
                "transaction_id": "t-1",
                "phone": "+31*******78",
            })
        );
    }

    #[test]
    fn a_sink_is_installed_once_and_never_blocks_when_full() {
        let cell = OnceLock::new();
        let mut receiver = install_into(&cell, 1).unwrap();
        assert!(install_into(&cell, 1).is_none(), "one sink per cell");
        let sink = cell.get().unwrap();
        let record = |event| {
            AuditEvent {
                event,
                ..AuditEvent::default()
            }
            .record()
        };
        let dropped_before = dropped_records();
        offer(sink, record("FIRST"));
        // Full: counted as dropped, and the call returns at once.
        offer(sink, record("SECOND"));
        assert!(dropped_records() > dropped_before);
        assert_eq!(receiver.try_recv().unwrap().event, "FIRST");
        assert!(receiver.try_recv().is_err());
    }

    #[test]
    fn phone_numbers_are_masked() {
        assert_eq!(mask_phone("+31612345678"), "+31*******78");
        assert_eq!(mask_phone("12345"), "*****");
    }
}
