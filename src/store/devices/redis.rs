//! The Redis device store: devices, push registrations, enrollment codes, PIN counters, claims
//! and pending lists, shared by every replica. It rides on the `RedisStore`'s connection (same
//! URL, prefix, timeouts and error mapping). Every method is one round trip: one command, or one
//! Lua script (`lua/device_*.lua`) when it reads and writes or touches more than one key.
//!
//! Key layout (`{prefix}` is the configured key prefix). Every key a multi-key script touches
//! carries the one hash tag `{devices}`, so the scripts may reach the keys they derive (the
//! user's other devices, token index entries) on a cluster too:
//! - `{prefix}{devices}:device:<id>`: a HASH per device. `record` holds the JSON of `Device` as
//!   serde writes it, without `push`; `push` the JSON of its `PushRegistration` (absent when
//!   none) and `token` the SHA-256 hex of that push token; `user`, `user_key` (the user index's
//!   key), `application` and `created` (epoch ms) are what the scripts read and are
//!   authoritative for those fields of the record; `pin_failures` counts wrong PINs in a row.
//!   No TTL.
//! - `{prefix}{devices}:user-devices:<sha256 hex of user id>`: a ZSET of the user's device ids,
//!   scored by `created_at` (ties ordered by id).
//! - `{prefix}{devices}:push-token:<sha256 hex of token>`: a STRING, the device holding the
//!   token. An entry is believed only while that device's `token` field agrees.
//! - `{prefix}{devices}:device-pending:<id>`: a ZSET of transaction ids scored by expiry (epoch
//!   ms), living until its last entry expires.
//! - `{prefix}enroll-code:<hex HMAC>`: a STRING `<expires_at ms>:<user id>` with a PX TTL.
//! - `{prefix}once:<key>`: a STRING holding when the claim ends (epoch ms), with a PX TTL.
//!
//! No key holds a push token, phone number, user id or code in clear. Every expiry is decided by
//! the injected clock (the expiry is written in the value or the score); the relative PX TTLs,
//! on Redis's own clock, only clean up.
//!
//! May import: domain, the Redis store.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::{FromRedisValue, Script};
use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::domain::clock::{SharedClock, Timestamp};
use crate::domain::code::CodeHash;
use crate::domain::device::{
    Device, DeviceId, PinCheck, PinFailure, PushEnrollmentMode, PushRegistration,
    PushRegistrationOutcome, pin_failure,
};
use crate::domain::ports::{DeviceStore, StoreError};
use crate::domain::transaction::TransactionId;
use crate::store::redis::RedisStore;

const COMMON_LUA: &str = include_str!("../lua/device_common.lua");
const INSERT_LUA: &str = include_str!("../lua/device_insert.lua");
const UPDATE_LUA: &str = include_str!("../lua/device_update.lua");
const DELETE_LUA: &str = include_str!("../lua/device_delete.lua");
const LIST_LUA: &str = include_str!("../lua/device_list.lua");
const REGISTER_PUSH_LUA: &str = include_str!("../lua/device_register_push.lua");
const DROP_PUSH_LUA: &str = include_str!("../lua/device_drop_push.lua");
const DROP_PUSH_BY_TOKEN_LUA: &str = include_str!("../lua/device_drop_push_by_token.lua");
const PIN_CHECK_LUA: &str = include_str!("../lua/device_pin_check.lua");
const PIN_FAILURE_LUA: &str = include_str!("../lua/device_pin_failure.lua");
const RESET_PIN_LUA: &str = include_str!("../lua/device_reset_pin.lua");
const REDEEM_CODE_LUA: &str = include_str!("../lua/device_redeem_code.lua");
const CLAIM_ONCE_LUA: &str = include_str!("../lua/device_claim_once.lua");
const ADD_PENDING_LUA: &str = include_str!("../lua/device_add_pending.lua");

// Device hash fields.
const F_RECORD: &str = "record";
const F_PUSH: &str = "push";
const F_USER: &str = "user";
const F_APPLICATION: &str = "application";
const F_CREATED: &str = "created";

struct Scripts {
    insert: Script,
    update: Script,
    delete: Script,
    list: Script,
    register_push: Script,
    drop_push: Script,
    drop_push_by_token: Script,
    pin_check: Script,
    pin_failure: Script,
    reset_pin: Script,
    redeem_code: Script,
    claim_once: Script,
    add_pending: Script,
}

impl Scripts {
    fn new() -> Self {
        let with_common = |body: &str| Script::new(&format!("{COMMON_LUA}\n{body}"));
        Self {
            insert: with_common(INSERT_LUA),
            update: Script::new(UPDATE_LUA),
            delete: with_common(DELETE_LUA),
            list: with_common(LIST_LUA),
            register_push: with_common(REGISTER_PUSH_LUA),
            drop_push: with_common(DROP_PUSH_LUA),
            drop_push_by_token: with_common(DROP_PUSH_BY_TOKEN_LUA),
            pin_check: Script::new(PIN_CHECK_LUA),
            pin_failure: with_common(PIN_FAILURE_LUA),
            reset_pin: Script::new(RESET_PIN_LUA),
            redeem_code: Script::new(REDEEM_CODE_LUA),
            claim_once: Script::new(CLAIM_ONCE_LUA),
            add_pending: Script::new(ADD_PENDING_LUA),
        }
    }
}

/// The fields of a device hash as read: record, push, user, application, created.
type DeviceFields = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// One entry of the list script's reply: the id, then `DeviceFields`.
type ListedDevice = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn corrupt(what: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("redis device store: {what}"))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The base of every device key: `{prefix}{devices}:`.
pub(crate) fn devices_base(prefix: &str) -> String {
    format!("{prefix}{{devices}}:")
}

fn enroll_code_key(prefix: &str, code_hash: &CodeHash) -> String {
    format!("{prefix}enroll-code:{}", code_hash.to_hex())
}

fn once_key(prefix: &str, key: &str) -> String {
    format!("{prefix}once:{key}")
}

/// The shared device store. Cheap to share behind an `Arc`; connects on first use (through the
/// transaction store).
pub struct RedisDeviceStore {
    store: Arc<RedisStore>,
    clock: SharedClock,
    prefix: String,
    base: String,
    scripts: Scripts,
}

impl fmt::Debug for RedisDeviceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDeviceStore")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl RedisDeviceStore {
    /// A device store under `store`'s key prefix, on its connection, deciding expiry by `clock`
    /// (pass the transaction store's clock).
    pub fn new(store: Arc<RedisStore>, clock: SharedClock) -> Self {
        let prefix = store.key_prefix().to_owned();
        Self {
            store,
            clock,
            base: devices_base(&prefix),
            prefix,
            scripts: Scripts::new(),
        }
    }

    fn device_key(&self, id: &DeviceId) -> String {
        format!("{}device:{id}", self.base)
    }

    fn user_key(&self, user_id: &str) -> String {
        format!("{}user-devices:{}", self.base, sha256_hex(user_id))
    }

    fn token_key(&self, token_hash: &str) -> String {
        format!("{}push-token:{token_hash}", self.base)
    }

    fn pending_key(&self, id: &DeviceId) -> String {
        format!("{}device-pending:{id}", self.base)
    }

    /// Runs `script` with one key and `args`; scripts with the common helpers get the key base
    /// as ARGV[1] first.
    async fn run<R: FromRedisValue>(
        &self,
        operation: &'static str,
        script: &Script,
        key: String,
        with_base: bool,
        args: &[&str],
    ) -> Result<R, StoreError> {
        let mut invocation = script.prepare_invoke();
        invocation.key(key);
        if with_base {
            invocation.arg(self.base.as_str());
        }
        for arg in args {
            invocation.arg(*arg);
        }
        self.store
            .call_write(operation, |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await
    }

    /// Runs one plain command.
    async fn command<R: FromRedisValue>(
        &self,
        operation: &'static str,
        command: ::redis::Cmd,
    ) -> Result<R, StoreError> {
        self.store
            .call(operation, |mut connection| async move {
                command.query_async(&mut connection).await
            })
            .await
    }
}

/// The record as stored: the device without its push registration (kept in its own field).
fn encode_record(device: &Device) -> Result<String, StoreError> {
    let record = Device {
        push: None,
        ..device.clone()
    };
    serde_json::to_string(&record).map_err(|err| corrupt(format!("cannot encode a device: {err}")))
}

fn encode_push(registration: &PushRegistration) -> Result<String, StoreError> {
    serde_json::to_string(registration)
        .map_err(|err| corrupt(format!("cannot encode a push registration: {err}")))
}

/// Rebuilds a device from its hash; `None` when the hash does not exist.
fn decode_device(id: &DeviceId, fields: DeviceFields) -> Result<Option<Device>, StoreError> {
    let (record, push, user, application, created) = fields;
    let Some(record) = record else {
        return Ok(None);
    };
    let missing = |name: &str| corrupt(format!("device {id}: field {name} missing"));
    let mut device: Device = serde_json::from_str(&record)
        .map_err(|err| corrupt(format!("device {id}: field {F_RECORD}: {err}")))?;
    if device.id != *id {
        return Err(corrupt(format!("device {id}: record names another device")));
    }
    device.user_id = user.ok_or_else(|| missing(F_USER))?;
    device.application = application.ok_or_else(|| missing(F_APPLICATION))?;
    device.created_at = Timestamp(
        created
            .ok_or_else(|| missing(F_CREATED))?
            .parse()
            .map_err(|_| corrupt(format!("device {id}: field {F_CREATED} is not a number")))?,
    );
    device.push = push
        .map(|json| serde_json::from_str(&json))
        .transpose()
        .map_err(|err| corrupt(format!("device {id}: field {F_PUSH}: {err}")))?;
    Ok(Some(device))
}

fn parse_device_id(text: &str) -> Result<DeviceId, StoreError> {
    text.parse()
        .map_err(|_| corrupt("script reply holds a malformed device id"))
}

/// An enrollment code's value: `<expires_at ms>:<user id>`.
fn decode_code(value: &str, now: Timestamp) -> Result<Option<String>, StoreError> {
    let (expires, user_id) = value
        .split_once(':')
        .ok_or_else(|| corrupt("enrollment code value malformed"))?;
    let expires: u64 = expires
        .parse()
        .map_err(|_| corrupt("enrollment code expiry is not a number"))?;
    Ok((now < Timestamp(expires)).then(|| user_id.to_owned()))
}

#[async_trait]
impl DeviceStore for RedisDeviceStore {
    async fn create_enrollment_code(
        &self,
        code_hash: &CodeHash,
        user_id: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let ttl = millis(ttl).max(1);
        let expires = self.clock.now().millis().saturating_add(ttl);
        let mut command = ::redis::cmd("SET");
        command
            .arg(enroll_code_key(&self.prefix, code_hash))
            .arg(format!("{expires}:{user_id}"))
            .arg("PX")
            .arg(ttl);
        self.command::<()>("device_create_code", command).await
    }

    async fn peek_enrollment_code(
        &self,
        code_hash: &CodeHash,
    ) -> Result<Option<String>, StoreError> {
        let mut command = ::redis::cmd("GET");
        command.arg(enroll_code_key(&self.prefix, code_hash));
        let value: Option<String> = self.command("device_peek_code", command).await?;
        match value {
            Some(value) => decode_code(&value, self.clock.now()),
            None => Ok(None),
        }
    }

    async fn redeem_enrollment_code(
        &self,
        code_hash: &CodeHash,
    ) -> Result<Option<String>, StoreError> {
        let value: Option<String> = self
            .run(
                "device_redeem_code",
                &self.scripts.redeem_code,
                enroll_code_key(&self.prefix, code_hash),
                false,
                &[],
            )
            .await?;
        match value {
            Some(value) => decode_code(&value, self.clock.now()),
            None => Ok(None),
        }
    }

    async fn insert_device(&self, device: &Device) -> Result<(), StoreError> {
        let record = encode_record(device)?;
        let (push, token_hash) = match &device.push {
            Some(registration) => (encode_push(registration)?, sha256_hex(&registration.token)),
            None => (String::new(), String::new()),
        };
        let created = device.created_at.millis().to_string();
        self.run::<i64>(
            "device_insert",
            &self.scripts.insert,
            self.device_key(&device.id),
            true,
            &[
                device.id.as_str(),
                &record,
                &device.user_id,
                &self.user_key(&device.user_id),
                &device.application,
                &created,
                &push,
                &token_hash,
            ],
        )
        .await
        .map(drop)
    }

    async fn get_device(&self, id: &DeviceId) -> Result<Option<Device>, StoreError> {
        let mut command = ::redis::cmd("HMGET");
        command
            .arg(self.device_key(id))
            .arg(F_RECORD)
            .arg(F_PUSH)
            .arg(F_USER)
            .arg(F_APPLICATION)
            .arg(F_CREATED);
        let fields: DeviceFields = self.command("device_get", command).await?;
        decode_device(id, fields)
    }

    async fn devices_of_user(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        let listed: Vec<ListedDevice> = self
            .run(
                "device_list",
                &self.scripts.list,
                self.user_key(user_id),
                true,
                &[],
            )
            .await?;
        let mut devices = Vec::with_capacity(listed.len());
        for (id, record, push, user, application, created) in listed {
            let id = parse_device_id(&id)?;
            if let Some(device) = decode_device(&id, (record, push, user, application, created))? {
                // An index entry left by another user of the same hash would be a bug; never
                // hand one user's device to another.
                if device.user_id == user_id {
                    devices.push(device);
                }
            }
        }
        Ok(devices)
    }

    async fn delete_device(&self, id: &DeviceId) -> Result<bool, StoreError> {
        let deleted: i64 = self
            .run(
                "device_delete",
                &self.scripts.delete,
                self.device_key(id),
                true,
                &[id.as_str()],
            )
            .await?;
        Ok(deleted == 1)
    }

    async fn update_device(&self, device: &Device) -> Result<bool, StoreError> {
        let record = encode_record(device)?;
        let updated: i64 = self
            .run(
                "device_update",
                &self.scripts.update,
                self.device_key(&device.id),
                false,
                &[&record],
            )
            .await?;
        Ok(updated == 1)
    }

    async fn register_push(
        &self,
        id: &DeviceId,
        registration: &PushRegistration,
        mode: PushEnrollmentMode,
    ) -> Result<PushRegistrationOutcome, StoreError> {
        let push = encode_push(registration)?;
        let token_hash = sha256_hex(&registration.token);
        let reply: Vec<String> = self
            .run(
                "device_register_push",
                &self.scripts.register_push,
                self.device_key(id),
                true,
                &[id.as_str(), &token_hash, &push, mode.as_str()],
            )
            .await?;
        let Some((kind, ids)) = reply.split_first() else {
            return Err(corrupt("empty register_push reply"));
        };
        match (kind.as_str(), ids) {
            ("unknown", []) => Ok(PushRegistrationOutcome::UnknownDevice),
            ("token_in_use", []) => Ok(PushRegistrationOutcome::TokenInUse),
            ("already_enrolled", [existing]) => Ok(PushRegistrationOutcome::AlreadyEnrolled(
                parse_device_id(existing)?,
            )),
            ("registered", replaced) => Ok(PushRegistrationOutcome::Registered {
                replaced: replaced
                    .iter()
                    .map(|id| parse_device_id(id))
                    .collect::<Result<_, _>>()?,
            }),
            (other, _) => Err(corrupt(format!("unexpected register_push reply {other}"))),
        }
    }

    async fn drop_push(&self, id: &DeviceId) -> Result<bool, StoreError> {
        let dropped: i64 = self
            .run(
                "device_drop_push",
                &self.scripts.drop_push,
                self.device_key(id),
                true,
                &[id.as_str()],
            )
            .await?;
        Ok(dropped == 1)
    }

    async fn drop_push_by_token(&self, token: &str) -> Result<Option<DeviceId>, StoreError> {
        let token_hash = sha256_hex(token);
        let holder: Option<String> = self
            .run(
                "device_drop_push_by_token",
                &self.scripts.drop_push_by_token,
                self.token_key(&token_hash),
                true,
                &[&token_hash],
            )
            .await?;
        holder.as_deref().map(parse_device_id).transpose()
    }

    async fn begin_pin_check(
        &self,
        id: &DeviceId,
        max_pin_attempts: u32,
    ) -> Result<PinCheck, StoreError> {
        let counted: i64 = self
            .run(
                "device_pin_check",
                &self.scripts.pin_check,
                self.device_key(id),
                false,
                &[&max_pin_attempts.to_string()],
            )
            .await?;
        Ok(match counted {
            -1 => PinCheck::UnknownDevice,
            -2 => PinCheck::Exhausted,
            counted => PinCheck::Allowed {
                counted: u32::try_from(counted).map_err(|_| corrupt("PIN counter out of range"))?,
            },
        })
    }

    async fn settle_pin_failure(
        &self,
        id: &DeviceId,
        max_pin_attempts: u32,
    ) -> Result<PinFailure, StoreError> {
        let max = max_pin_attempts.to_string();
        let failures: i64 = self
            .run(
                "device_pin_failure",
                &self.scripts.pin_failure,
                self.device_key(id),
                true,
                &[id.as_str(), &max],
            )
            .await?;
        if failures < 0 {
            return Ok(PinFailure::UnknownDevice);
        }
        let failures = u32::try_from(failures).map_err(|_| corrupt("PIN counter out of range"))?;
        // The script deleted the device exactly when this says Disconnected (same rule).
        Ok(pin_failure(failures, max_pin_attempts))
    }

    async fn reset_pin_failures(&self, id: &DeviceId) -> Result<u32, StoreError> {
        let failures: i64 = self
            .run(
                "device_reset_pin",
                &self.scripts.reset_pin,
                self.device_key(id),
                false,
                &[],
            )
            .await?;
        u32::try_from(failures).map_err(|_| corrupt("PIN counter out of range"))
    }

    async fn claim_once(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let ttl = millis(ttl).max(1);
        let now = self.clock.now().millis();
        let ends = now.saturating_add(ttl);
        let claimed: i64 = self
            .run(
                "device_claim_once",
                &self.scripts.claim_once,
                once_key(&self.prefix, key),
                false,
                &[&now.to_string(), &ends.to_string(), &ttl.to_string()],
            )
            .await?;
        Ok(claimed == 1)
    }

    async fn add_pending(
        &self,
        id: &DeviceId,
        transaction: &TransactionId,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        let now = self.clock.now().millis().to_string();
        self.run::<i64>(
            "device_add_pending",
            &self.scripts.add_pending,
            self.pending_key(id),
            false,
            &[
                &now,
                &expires_at.millis().to_string(),
                &transaction.to_string(),
            ],
        )
        .await
        .map(drop)
    }

    async fn pending(&self, id: &DeviceId) -> Result<Vec<TransactionId>, StoreError> {
        let mut command = ::redis::cmd("ZRANGEBYSCORE");
        command
            .arg(self.pending_key(id))
            .arg(format!("({}", self.clock.now().millis()))
            .arg("+inf");
        let ids: Vec<String> = self.command("device_pending", command).await?;
        ids.iter()
            .map(|id| {
                id.parse()
                    .map_err(|_| corrupt("pending list holds a malformed transaction id"))
            })
            .collect()
    }
}
