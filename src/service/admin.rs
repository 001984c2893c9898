//! Admin visibility: what ops may see of transactions, users, devices and audit events, and the
//! worker that moves audit events from the telemetry sink into the store.
//!
//! Redaction lives here, in the types: `TransactionSummary` and `DeviceSummary` have no field
//! for a code hash, a message, a secure message, signing data, a matching number, a push token or
//! a key, and carry phone numbers masked. Whatever the edge does with them, those cannot leak.
//!
//! May import: domain, telemetry.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::domain::clock::{SharedClock, Timestamp};
use crate::domain::device::{Device, DeviceId};
use crate::domain::ports::{
    AdminStore, AuditEntry, DeviceStore, StoreError, TransactionQuery, TransactionStore,
};
use crate::domain::transaction::{Status, Transaction, TransactionId};
use crate::telemetry::audit::{self, AuditRecord, mask_phone};

/// Audit records written to the store in one call, at most.
const MAX_AUDIT_BATCH: usize = 256;

/// A transaction as the admin API shows it: the lifecycle, never a secret (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransactionSummary {
    pub id: String,
    #[serde(rename = "type")]
    pub auth_type: String,
    pub method: &'static str,
    /// The effective status: a pending transaction past its expiry shows as expired.
    pub status: &'static str,
    pub user_id: Option<String>,
    /// Epoch milliseconds, like every timestamp of the API.
    pub created_at: u64,
    pub expires_at: u64,
    pub finished_at: Option<u64>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub resends: u32,
    pub max_resends: u32,
    pub reason: Option<&'static str>,
    pub device_id: Option<String>,
    pub application: Option<String>,
    pub callback_uri: Option<String>,
    /// The API client that started it; `null` when the proxy did.
    pub client_id: Option<String>,
    /// Masked as in the audit log (`+31*******78`).
    pub phone: Option<String>,
    /// Which authenticator signed a push or OTP answer (`pin`, `biometric`, ...).
    pub authenticator: Option<String>,
}

impl TransactionSummary {
    pub fn of(tx: &Transaction, now: Timestamp) -> Self {
        Self {
            id: tx.id.to_string(),
            auth_type: tx.auth_type.clone(),
            method: tx.method.as_str(),
            status: tx.effective_status(now).as_str(),
            user_id: tx.user_id.clone(),
            created_at: tx.created_at.millis(),
            expires_at: tx.expires_at.millis(),
            finished_at: tx.finished_at.map(Timestamp::millis),
            attempts: tx.attempts,
            max_attempts: tx.max_attempts,
            resends: tx.resends,
            max_resends: tx.max_resends,
            reason: tx.reason.map(|reason| reason.as_str()),
            device_id: tx.details.device_id.clone(),
            application: tx.details.application.clone(),
            callback_uri: tx.details.callback_uri.clone(),
            client_id: tx.details.client_id.clone(),
            phone: tx.details.phone_number.as_deref().map(mask_phone),
            authenticator: tx
                .evidence
                .as_ref()
                .and_then(|evidence| evidence.authenticator.clone()),
        }
    }
}

/// A device as the admin API shows it: which keys it enrolled and whether it can get pushes,
/// never the keys or the push token themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceSummary {
    pub id: String,
    pub user_id: String,
    pub application: String,
    pub name: String,
    pub platform: &'static str,
    pub model: Option<String>,
    pub os_version: Option<String>,
    pub created_at: u64,
    pub last_used_at: Option<u64>,
    /// The enrolled keys by name: `signing`, `encryption`, `pin`, `biometric`,
    /// `custom_authenticator`.
    pub keys: Vec<&'static str>,
    pub push_registered: bool,
    /// The application version the push registration is for.
    pub push_version: Option<String>,
    pub push_registered_at: Option<u64>,
}

impl From<&Device> for DeviceSummary {
    fn from(device: &Device) -> Self {
        let keys = &device.keys;
        let optional = [
            ("pin", keys.pin.is_some()),
            ("biometric", keys.biometric.is_some()),
            ("custom_authenticator", keys.custom_authenticator.is_some()),
        ];
        let mut names = vec!["signing", "encryption"];
        names.extend(
            optional
                .into_iter()
                .filter(|(_, present)| *present)
                .map(|(name, _)| name),
        );
        Self {
            id: device.id.to_string(),
            user_id: device.user_id.clone(),
            application: device.application.clone(),
            name: device.name.clone(),
            platform: device.platform.as_str(),
            model: device.model.clone(),
            os_version: device.os_version.clone(),
            created_at: device.created_at.millis(),
            last_used_at: device.last_used_at.map(Timestamp::millis),
            keys: names,
            push_registered: device.push.is_some(),
            push_version: device.push.as_ref().map(|push| push.version.clone()),
            push_registered_at: device.push.as_ref().map(|push| push.registered_at.millis()),
        }
    }
}

/// A user as the admin API shows it: their devices and recent transactions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserSummary {
    pub user_id: String,
    pub devices: Vec<DeviceSummary>,
    pub transactions: Vec<TransactionSummary>,
}

/// Which recent transactions to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentFilter {
    /// How far back from now.
    pub window: Duration,
    pub user_id: Option<String>,
    pub status: Option<Status>,
    pub limit: usize,
}

/// The admin's use cases. Cheap to clone.
#[derive(Clone)]
pub struct AdminService {
    admin: Arc<dyn AdminStore>,
    transactions: Arc<dyn TransactionStore>,
    devices: Arc<dyn DeviceStore>,
    clock: SharedClock,
}

impl AdminService {
    pub fn new(
        admin: Arc<dyn AdminStore>,
        transactions: Arc<dyn TransactionStore>,
        devices: Arc<dyn DeviceStore>,
        clock: SharedClock,
    ) -> Self {
        Self {
            admin,
            transactions,
            devices,
            clock,
        }
    }

    fn since(&self, window: Duration) -> Timestamp {
        let now = self.clock.now();
        Timestamp(
            now.millis()
                .saturating_sub(u64::try_from(window.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// Recent transactions, newest first.
    pub async fn recent(
        &self,
        filter: RecentFilter,
    ) -> Result<Vec<TransactionSummary>, StoreError> {
        let query = TransactionQuery {
            since: self.since(filter.window),
            user_id: filter.user_id,
            status: filter.status,
            limit: filter.limit,
        };
        let found = self.admin.recent_transactions(&query).await?;
        let now = self.clock.now();
        Ok(found
            .iter()
            .map(|tx| TransactionSummary::of(tx, now))
            .collect())
    }

    pub async fn transaction(
        &self,
        id: &TransactionId,
    ) -> Result<Option<TransactionSummary>, StoreError> {
        let found = self.transactions.get(id).await?;
        let now = self.clock.now();
        Ok(found.map(|tx| TransactionSummary::of(&tx, now)))
    }

    /// The user's devices (oldest first) and transactions of the last `window`, newest first.
    pub async fn user(
        &self,
        user_id: &str,
        window: Duration,
        limit: usize,
    ) -> Result<UserSummary, StoreError> {
        let devices = self.devices.devices_of_user(user_id).await?;
        let transactions = self
            .recent(RecentFilter {
                window,
                user_id: Some(user_id.to_owned()),
                status: None,
                limit,
            })
            .await?;
        Ok(UserSummary {
            user_id: user_id.to_owned(),
            devices: devices.iter().map(DeviceSummary::from).collect(),
            transactions,
        })
    }

    pub async fn device(&self, id: &DeviceId) -> Result<Option<DeviceSummary>, StoreError> {
        Ok(self
            .devices
            .get_device(id)
            .await?
            .as_ref()
            .map(DeviceSummary::from))
    }

    /// Audit events of the last `window`, newest first, each the JSON object that was stored.
    pub async fn events(
        &self,
        window: Duration,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let entries = self.admin.audit_since(self.since(window), limit).await?;
        Ok(entries
            .into_iter()
            .filter_map(|entry| match serde_json::from_str(&entry.event) {
                Ok(event) => Some(event),
                Err(error) => {
                    tracing::warn!(at = entry.at.millis(), %error, "skipping an unreadable stored audit event");
                    None
                }
            })
            .collect())
    }

    /// The audit worker: moves records from the telemetry sink into the store, in batches of
    /// whatever has queued up, until `shutdown` turns true; then writes what is still queued.
    /// A failed write is logged and its records dropped: the log lines remain the record of
    /// last resort, and the worker never stalls the sink.
    pub async fn drain_audit(
        &self,
        mut records: mpsc::Receiver<AuditRecord>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut dropped_seen = audit::dropped_records();
        loop {
            let first = tokio::select! {
                record = records.recv() => record,
                _ = shutdown.changed() => break,
            };
            let Some(first) = first else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_AUDIT_BATCH {
                match records.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
            self.store_audit(&batch).await;
            let dropped = audit::dropped_records();
            if dropped > dropped_seen {
                tracing::warn!(
                    dropped = dropped - dropped_seen,
                    "audit events did not reach the store (the queue was full); their log lines remain"
                );
                dropped_seen = dropped;
            }
        }
        records.close();
        let mut rest = Vec::new();
        while let Ok(record) = records.try_recv() {
            rest.push(record);
        }
        for batch in rest.chunks(MAX_AUDIT_BATCH) {
            self.store_audit(batch).await;
        }
    }

    async fn store_audit(&self, records: &[AuditRecord]) {
        let entries: Vec<AuditEntry> = records
            .iter()
            .map(|record| AuditEntry {
                at: Timestamp(record.at_ms),
                event: record.to_json(),
            })
            .collect();
        if let Err(error) = self.admin.append_audit(&entries).await {
            tracing::warn!(events = entries.len(), %error, "cannot store audit events; their log lines remain");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md house rules)
mod tests {
    use super::*;
    use crate::domain::auth_type::Method;
    use crate::domain::clock::{Clock, ManualClock};
    use crate::domain::code::CodeHash;
    use crate::domain::device::{DeviceKeys, Platform, PublicKeyBytes, PushRegistration};
    use crate::domain::transaction::{Details, Evidence, Reason};
    use crate::store::devices::memory::MemoryDeviceStore;
    use crate::store::memory::MemoryStore;

    const PHONE: &str = "+31612345678";
    const MESSAGE: &str = "Approve transfer of 4711 EUR";
    const SECURE: &str = "secure-message-text";
    const SIGNING: &str = "signing-data-text";
    const TOKEN: &str = "apns-device-token-0123456789abcdef";

    fn service() -> (
        AdminService,
        Arc<MemoryStore>,
        Arc<MemoryDeviceStore>,
        Arc<ManualClock>,
    ) {
        let clock = Arc::new(ManualClock::starting_now());
        let store = Arc::new(MemoryStore::new(clock.clone(), Duration::from_secs(60)));
        let devices = Arc::new(MemoryDeviceStore::new(clock.clone()));
        let service =
            AdminService::new(store.clone(), store.clone(), devices.clone(), clock.clone());
        (service, store, devices, clock)
    }

    fn secretive(now: Timestamp) -> Transaction {
        Transaction {
            id: TransactionId::random(),
            auth_type: "push_pin".into(),
            method: Method::PushWithPin,
            user_id: Some("ann".into()),
            status: Status::Pending,
            created_at: now,
            expires_at: now.plus(Duration::from_secs(5)),
            finished_at: None,
            attempts: 1,
            max_attempts: 3,
            resends: 0,
            max_resends: 1,
            code_hash: Some(CodeHash::from_hex(&"ab".repeat(32)).unwrap()),
            reason: Some(Reason::NotAccepted),
            evidence: Some(Evidence {
                authenticator: Some("pin".into()),
                signature: Some("c2lnbmF0dXJl".into()),
                user_public_key: Some("cHVibGljLWtleQ".into()),
                ..Evidence::default()
            }),
            details: Details {
                callback_uri: Some("https://portal.example/cb".into()),
                message: Some(MESSAGE.into()),
                secure_message: Some(SECURE.into()),
                language: Some("en".into()),
                phone_number: Some(PHONE.into()),
                sender_id: Some("MyBank".into()),
                device_id: Some("d".repeat(64)),
                application: Some("bank-app".into()),
                signing_data: Some(SIGNING.into()),
                number: Some(42),
                number_typed: true,
                client_id: Some("portal".into()),
            },
        }
    }

    #[tokio::test]
    async fn summaries_carry_the_lifecycle_and_no_secret() {
        let (service, store, _, clock) = service();
        let tx = secretive(clock.now());
        store.insert(&tx).await.unwrap();
        clock.advance(Duration::from_secs(6));
        let summary = service.transaction(&tx.id).await.unwrap().unwrap();
        assert_eq!(summary.status, "expired", "the effective status");
        assert_eq!(summary.phone.as_deref(), Some("+31*******78"));
        assert_eq!(summary.authenticator.as_deref(), Some("pin"));
        assert_eq!(summary.reason, Some("not_accepted"));
        let json = serde_json::to_string(&summary).unwrap();
        for secret in [
            "ab".repeat(32).as_str(),
            PHONE,
            MESSAGE,
            SECURE,
            SIGNING,
            "c2lnbmF0dXJl",
            "cHVibGljLWtleQ",
            "MyBank",
        ] {
            assert!(!json.contains(secret), "{secret} leaked: {json}");
        }
        // The matching number (42) could appear inside a timestamp, so look for it as a value.
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let fields = value.as_object().unwrap();
        assert!(
            fields.values().all(|field| field != &serde_json::json!(42)),
            "{json}"
        );
        assert!(!fields.contains_key("number") && !fields.contains_key("message"));
        let listed = service
            .recent(RecentFilter {
                window: Duration::from_secs(60),
                user_id: Some("ann".into()),
                status: Some(Status::Expired),
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(listed, vec![summary]);
    }

    #[tokio::test]
    async fn device_summaries_name_keys_without_their_bytes_and_hide_the_push_token() {
        let (service, _, devices, clock) = service();
        let key = |byte: u8| PublicKeyBytes(vec![byte; 65]);
        let device = Device {
            id: DeviceId::random(),
            user_id: "ann".into(),
            application: "bank-app".into(),
            name: "Ann's phone".into(),
            platform: Platform::Ios,
            model: Some("iPhone".into()),
            os_version: Some("18.1".into()),
            keys: DeviceKeys {
                signing: key(1),
                encryption: key(2),
                pin: Some(key(3)),
                biometric: None,
                custom_authenticator: None,
            },
            push: Some(PushRegistration {
                version: "1.0".into(),
                platform: Platform::Ios,
                token: TOKEN.into(),
                registered_at: clock.now(),
            }),
            created_at: clock.now(),
            last_used_at: None,
        };
        devices.insert_device(&device).await.unwrap();
        let summary = service.device(&device.id).await.unwrap().unwrap();
        assert_eq!(summary.keys, vec!["signing", "encryption", "pin"]);
        assert!(summary.push_registered);
        let json = serde_json::to_string(
            &service
                .user("ann", Duration::from_secs(60), 10)
                .await
                .unwrap(),
        )
        .unwrap();
        assert!(json.contains("Ann's phone"), "{json}");
        assert!(!json.contains(TOKEN), "{json}");
        // No key bytes in any encoding: base64url of [3; 65] starts with "AwMD".
        assert!(!json.contains("AwMD") && !json.contains("AQEB"), "{json}");
        assert_eq!(service.device(&DeviceId::random()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_worker_stores_queued_events_and_what_is_left_at_shutdown() {
        let (service, _, _, clock) = service();
        let (sender, receiver) = mpsc::channel(16);
        let (stop, shutdown) = watch::channel(false);
        let worker = tokio::spawn({
            let service = service.clone();
            async move { service.drain_audit(receiver, shutdown).await }
        });
        let record = |event: &'static str| AuditRecord {
            at_ms: clock.now().millis(),
            event,
            transaction_id: None,
            auth_type: None,
            method: None,
            user_id: Some("ann".into()),
            client_id: None,
            phone: None,
            detail: None,
        };
        sender.send(record("FIRST")).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while service
            .events(Duration::from_secs(60), 10)
            .await
            .unwrap()
            .is_empty()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the first event was not stored"
            );
            tokio::task::yield_now().await;
        }
        // Queued, then shutdown: the worker writes it on its way out.
        sender.send(record("LAST")).await.unwrap();
        stop.send(true).unwrap();
        worker.await.unwrap();
        let events = service.events(Duration::from_secs(60), 10).await.unwrap();
        let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
        assert!(
            names.contains(&"FIRST") && names.contains(&"LAST"),
            "{events:?}"
        );
        assert_eq!(events[0]["user_id"], "ann");
    }
}
