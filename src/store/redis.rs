//! The Redis store: transactions as hashes and rate-limit counters, shared by every instance of
//! the gateway. Each multi-step change is one Lua script (`lua/*.lua`), one round trip, that
//! implements the rules of `domain::regulation` with `now` taken from the injected clock.
//!
//! Key layout (`{prefix}` is the configured key prefix, `stepgate:` by default):
//! - `{prefix}tx:{<uuid>}`: a HASH per transaction (the braces are a cluster hash tag). Fields
//!   `d0`, `d1`, ... (`dn` of them, at most 64 bytes each, so that Redis keeps the hash in its
//!   compact listpack encoding; a gate before 0.2 wrote one `data` field, still read) hold the
//!   immutable parts as JSON (`auth_type`, `method`, `created_at`, `details`);
//!   the scalar fields `status`, `attempts`, `max_attempts`, `resends`, `max_resends`,
//!   `expires_at` (epoch ms), `code` (hex HMAC, empty when none), `reason` (empty when none),
//!   `finished_at` (epoch ms, empty when none), `user_id` (absent when none) and `evidence`
//!   (JSON, absent when none) are what the
//!   scripts read and write. The key's TTL is `(expires_at - now) + retention`, set with a
//!   relative PEXPIRE from the injected clock.
//! - `{prefix}rl:<key>`: a fixed-window counter (INCR, PEXPIRE on the first hit).
//! - `{prefix}held:{<uuid>}`: a HASH per held request (same hash tag as its transaction), with
//!   fields `ticket` (JSON of `HeldTicket`), `request` (JSON of `OriginalRequest`, headers
//!   base64) and `body` (the raw bytes, never inside JSON). `hold` writes the fields and the
//!   key's PEXPIRE in one script; `ticket` reads the `ticket` field alone (HGET); `take` reads
//!   and deletes the hash in one script, so it answers once.
//! - `{prefix}held:{<uuid>}:waiter`: a STRING with a PX lease while a client connection waits
//!   for the held request (hold mode); its absence lets a completion forward the request.
//! - `{prefix}held-user:{<user_key>}`: a STRING, the id of the user's latest held request, with
//!   the same PX TTL. Its hash tag is the user key, so it cannot join the hold script (another
//!   slot on a cluster): `hold` sends it as a second command beside the script, not atomic with
//!   it (one round trip on the multiplexed connection). `latest_for_user` answers the id only while its hash still exists (GET,
//!   then EXISTS: two round trips), so an index that outlives a take or a failed hold is harmless.
//!
//! - `{prefix}tx-index`, `{prefix}tx-user:{<sha256 of user id>}` and `{prefix}audit`: the admin's
//!   time index and audit log (see `admin`).
//!
//! Held requests expire on Redis's own clock (a relative PEXPIRE of the given TTL), not the
//! injected one: nothing in the hash carries an absolute expiry.
//!
//! The connection (a `ConnectionManager`, which reconnects by itself) is made on first use, and a
//! failed attempt is not remembered: the store can be built before any runtime exists or while
//! Redis is down, and recovers when Redis comes back. Every call is bounded by the connect and
//! response timeouts; every failure is `StoreError::Unavailable` with a message that never
//! carries the URL or its password.
//!
//! May import: domain, config (its checked `RedisSettings`), telemetry.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::redis::{RedisError, Script};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use self::connection::Connector;
pub use self::connection::RedisConnection;
pub use self::signals::RedisSignals;
use crate::config::settings::RedisDurability;
pub use crate::config::settings::RedisSettings;
use crate::domain::auth_type::Method;
use crate::domain::clock::{SharedClock, Timestamp};
use crate::domain::code::CodeHash;
use crate::domain::held::{HeldRequest, HeldTicket, OriginalRequest};
use crate::domain::otp::{OtpAnswer, RedeemOutcome};
use crate::domain::ports::{
    HeldRequestStore, RateDecision, RateLimitStore, StoreError, TransactionStore, Verified,
};
use crate::domain::regulation::{Finish, FinishOutcome, ResendOutcome, VerifyOutcome};
use crate::domain::transaction::{Details, Owner, Reason, Status, Transaction, TransactionId};
use crate::store::signals::LocalSignals;

mod admin;
mod connection;
mod signals;

const COMMON_LUA: &str = include_str!("lua/common.lua");
const VERIFY_LUA: &str = include_str!("lua/verify.lua");
const RESEND_LUA: &str = include_str!("lua/resend.lua");
const FINISH_LUA: &str = include_str!("lua/finish.lua");
const INSERT_LUA: &str = include_str!("lua/insert.lua");
const HIT_LUA: &str = include_str!("lua/hit.lua");
const REFUND_LUA: &str = include_str!("lua/refund.lua");
const HELD_HOLD_LUA: &str = include_str!("lua/held_hold.lua");
const HELD_TAKE_LUA: &str = include_str!("lua/held_take.lua");
const OTP_REDEEM_LUA: &str = include_str!("lua/otp_redeem.lua");

// The script replies' first element (see lua/common.lua).
const R_MISSING: i64 = 0;
const R_OK: i64 = 1;
const R_WRONG: i64 = 2;
const R_EXHAUSTED: i64 = 3;
const R_EXPIRED: i64 = 4;
const R_NOT_PENDING: i64 = 5;
const R_NO_CODE: i64 = 6;
const R_DISABLED: i64 = 7;
const R_LIMIT: i64 = 8;
const R_CORRUPT: i64 = 9;

// Hash fields.
/// The immutable JSON stored whole (transactions written before 0.2 only).
const F_DATA: &str = "data";
/// How many chunks (`d0`, `d1`, ...) the immutable JSON is stored in.
const F_DATA_CHUNKS: &str = "dn";
/// Redis keeps a hash compact (listpack) while every value is at most this long.
const LISTPACK_VALUE: usize = 64;
const F_STATUS: &str = "status";
const F_ATTEMPTS: &str = "attempts";
const F_MAX_ATTEMPTS: &str = "max_attempts";
const F_RESENDS: &str = "resends";
const F_MAX_RESENDS: &str = "max_resends";
const F_EXPIRES_AT: &str = "expires_at";
const F_CODE: &str = "code";
const F_REASON: &str = "reason";
const F_USER_ID: &str = "user_id";
const F_FINISHED_AT: &str = "finished_at";
const F_EVIDENCE: &str = "evidence";

// Held request hash fields.
const F_HELD_TICKET: &str = "ticket";
const F_HELD_REQUEST: &str = "request";
const F_HELD_BODY: &str = "body";

struct Scripts {
    insert: Script,
    verify: Script,
    resend: Script,
    finish: Script,
    hit: Script,
    refund: Script,
    held_hold: Script,
    held_take: Script,
    otp_redeem: Script,
}

impl Scripts {
    fn new() -> Self {
        let with_common = |body: &str| Script::new(&format!("{COMMON_LUA}\n{body}"));
        Self {
            insert: Script::new(INSERT_LUA),
            verify: with_common(VERIFY_LUA),
            resend: with_common(RESEND_LUA),
            finish: with_common(FINISH_LUA),
            hit: Script::new(HIT_LUA),
            refund: Script::new(REFUND_LUA),
            held_hold: Script::new(HELD_HOLD_LUA),
            held_take: Script::new(HELD_TAKE_LUA),
            otp_redeem: with_common(OTP_REDEEM_LUA),
        }
    }
}

/// Where a store with `settings` connects, for logs: never a password.
pub fn describe(settings: &RedisSettings) -> String {
    connection::shown(settings)
}

/// The shared store. Cheap to share behind an `Arc`; connects on first use.
pub struct RedisStore {
    connector: Arc<Connector>,
    /// This process's waiters on the transactions (see `signals`).
    signals: LocalSignals,
    durability: RedisDurability,
    /// Bound on one whole call: connecting (if needed) plus the answer.
    call_timeout: Duration,
    prefix: String,
    clock: SharedClock,
    retention: Duration,
    scripts: Scripts,
    /// For logs only: the URL with its password masked.
    shown_url: String,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shown_url)
            .field("prefix", &self.prefix)
            .field("retention", &self.retention)
            .field("connected", &self.connector.is_connected())
            .finish_non_exhaustive()
    }
}

/// A store error naming the operation and the kind of failure, never the URL or a secret.
fn unavailable(operation: &str, err: &RedisError) -> StoreError {
    let cause = if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connection_refusal() {
        "connection refused".to_owned()
    } else if err.is_connection_dropped() {
        "connection lost".to_owned()
    } else {
        let category = match err.category() {
            "" => "server error",
            category => category,
        };
        match (err.code(), err.detail()) {
            // Server replies (script errors, WRONGPASS, OOM) carry no secret of ours.
            (Some(code), Some(detail)) if matches!(err.kind(), ::redis::ErrorKind::Server(_)) => {
                format!("{category} ({code} {detail})")
            }
            (Some(code), _) => format!("{category} ({code})"),
            _ => category.to_owned(),
        }
    };
    StoreError::Unavailable(format!("redis {operation}: {cause}"))
}

fn corrupt(what: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("redis transaction: {what}"))
}

fn corrupt_held(what: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("redis held request: {what}"))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The transaction's key; the braces make the id a cluster hash tag.
pub(crate) fn tx_key(prefix: &str, id: &TransactionId) -> String {
    format!("{prefix}tx:{{{id}}}")
}

fn rl_key(prefix: &str, key: &str) -> String {
    format!("{prefix}rl:{key}")
}

/// The held request's hash; the same hash tag as its transaction.
pub(crate) fn held_key(prefix: &str, id: &TransactionId) -> String {
    format!("{prefix}held:{{{id}}}")
}

/// The held request's waiter lease; the same hash tag as its transaction.
pub(crate) fn waiter_key(prefix: &str, id: &TransactionId) -> String {
    format!("{prefix}held:{{{id}}}:waiter")
}

/// The user's latest-held index; its hash tag is the (already hashed) user key.
pub(crate) fn held_user_key(prefix: &str, user_key: &str) -> String {
    format!("{prefix}held-user:{{{user_key}}}")
}

/// A JSON field of a held request, `None` when the field is absent.
fn held_json<T: serde::de::DeserializeOwned>(
    name: &str,
    value: Option<Vec<u8>>,
) -> Result<T, StoreError> {
    let bytes = value.ok_or_else(|| corrupt_held(format!("field {name} missing")))?;
    serde_json::from_slice(&bytes).map_err(|err| corrupt_held(format!("field {name}: {err}")))
}

/// The take script's reply: the three fields, `None` where a field is missing.
type HeldFields = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

/// The parts of a transaction that never change, stored as one JSON field.
#[derive(Serialize, Deserialize)]
struct Immutable {
    auth_type: String,
    method: String,
    created_at: u64,
    #[serde(default)]
    details: Details,
}

impl Immutable {
    /// Reads the `data` field, with its method checked.
    fn decode(data: &str) -> Result<(Self, Method), StoreError> {
        let immutable: Immutable =
            serde_json::from_str(data).map_err(|err| corrupt(format!("field {F_DATA}: {err}")))?;
        let method = immutable
            .method
            .parse()
            .map_err(|err| corrupt(format!("field {F_DATA}: {err}")))?;
        Ok((immutable, method))
    }
}

/// `{kind, a, b, status}`, as every transaction script replies.
type Reply = (i64, i64, i64, String);

/// The verify script's reply: `Reply` plus the immutable JSON (type and method).
type VerifyReply = (i64, i64, i64, String, String);

impl RedisStore {
    /// Parses the URL and prepares the scripts; does not connect (that happens on first use, so
    /// this works before any runtime exists and while Redis is down).
    pub fn new(
        settings: RedisSettings,
        clock: SharedClock,
        retention: Duration,
    ) -> Result<Self, StoreError> {
        let connector = Connector::new(&settings).map_err(|err| unavailable("url", &err))?;
        let shown_url = connection::shown(&settings);
        Ok(Self {
            connector: Arc::new(connector),
            signals: LocalSignals::new(),
            durability: settings.durability,
            // A write may also wait for its replicas.
            call_timeout: settings.connect_timeout
                + settings.response_timeout
                + if settings.durability.replicas > 0 {
                    settings.durability.timeout
                } else {
                    Duration::ZERO
                },
            prefix: settings.key_prefix,
            clock,
            retention,
            scripts: Scripts::new(),
            shown_url,
        })
    }

    /// Where waiters listen for this store's transactions to be decided, on any gate.
    pub fn signals(&self) -> RedisSignals {
        RedisSignals::new(
            self.signals.clone(),
            self.connector.clone(),
            signals::channel(&self.prefix),
        )
    }

    /// Tells this process's waiters and every other gate's that `id` was decided. Best
    /// effort: a waiter that misses it reads the store again a little later.
    async fn decided(&self, id: &TransactionId) {
        self.signals.signal(id);
        let channel = signals::channel(&self.prefix);
        let message = id.to_string();
        let published = self
            .call("publish", |mut connection| async move {
                ::redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(message)
                    .query_async::<i64>(&mut connection)
                    .await
            })
            .await;
        if let Err(error) = published {
            tracing::debug!(transaction_id = %id, %error, "cannot publish the decision");
        }
    }

    /// The configured key prefix, for the other Redis-backed stores sharing this connection.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// The shared connection, made on first use. A failed connect keeps nothing, so the next
    /// call tries again.
    pub async fn connection(&self) -> Result<RedisConnection, StoreError> {
        self.connector.connect().await.map_err(|err| {
            self.connector.failed(&err);
            unavailable("connect", &err)
        })
    }

    /// Runs one call on the connection, bounded by the connect and response timeouts (also for
    /// the other Redis-backed stores sharing this connection).
    pub async fn call<T, F, Fut>(&self, operation: &'static str, run: F) -> Result<T, StoreError>
    where
        F: FnOnce(RedisConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let attempt = async {
            let connection = self.connection().await?;
            run(connection).await.map_err(|err| {
                self.connector.failed(&err);
                unavailable(operation, &err)
            })
        };
        tokio::time::timeout(self.call_timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                self.connector.timed_out();
                Err(StoreError::Unavailable(format!(
                    "redis {operation}: timed out"
                )))
            })
    }

    /// `call` for a write that decides something: when `store.redis.replicas_to_acknowledge`
    /// is set, `WAIT`s until that many replicas hold it (a failover then loses none of it), and
    /// fails closed when fewer do within the timeout (the write stays on the primary; the caller
    /// answers that the store is unavailable, as for any other store failure).
    pub async fn call_write<T, F, Fut>(
        &self,
        operation: &'static str,
        run: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(RedisConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let durability = self.durability;
        if durability.replicas == 0 {
            return self.call(operation, run).await;
        }
        let (value, acknowledged) = self
            .call(operation, |connection| async move {
                let mut waiter = connection.clone();
                let value = run(connection).await?;
                let acknowledged: i64 = ::redis::cmd("WAIT")
                    .arg(durability.replicas)
                    .arg(millis(durability.timeout))
                    .query_async(&mut waiter)
                    .await?;
                Ok((value, acknowledged))
            })
            .await?;
        if acknowledged < i64::from(durability.replicas) {
            return Err(StoreError::Unavailable(format!(
                "redis {operation}: {acknowledged} of {} replicas acknowledged the write within {} ms",
                durability.replicas,
                durability.timeout.as_millis()
            )));
        }
        Ok(value)
    }

    /// Runs a transaction script: KEYS[1] the transaction, ARGV now, retention, then `extra`.
    async fn run_tx_script<R: ::redis::FromRedisValue>(
        &self,
        operation: &'static str,
        script: &Script,
        id: &TransactionId,
        extra: &[&str],
    ) -> Result<R, StoreError> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(tx_key(&self.prefix, id))
            .arg(self.clock.now().millis())
            .arg(millis(self.retention));
        for arg in extra {
            invocation.arg(*arg);
        }
        self.call_write(operation, |mut connection| async move {
            invocation.invoke_async(&mut connection).await
        })
        .await
    }

    fn encode(&self, tx: &Transaction) -> Result<Vec<(String, String)>, StoreError> {
        let immutable = Immutable {
            auth_type: tx.auth_type.clone(),
            method: tx.method.as_str().to_owned(),
            created_at: tx.created_at.millis(),
            details: tx.details.clone(),
        };
        let data = serde_json::to_string(&immutable)
            .map_err(|err| corrupt(format!("cannot encode: {err}")))?;
        let chunks = data_chunks(&data);
        let mut fields = vec![(F_DATA_CHUNKS.to_owned(), chunks.len().to_string())];
        for (i, chunk) in chunks.iter().enumerate() {
            fields.push((format!("d{i}"), (*chunk).to_owned()));
        }
        let scalars = [
            (F_STATUS, tx.status.as_str().to_owned()),
            (F_ATTEMPTS, tx.attempts.to_string()),
            (F_MAX_ATTEMPTS, tx.max_attempts.to_string()),
            (F_RESENDS, tx.resends.to_string()),
            (F_MAX_RESENDS, tx.max_resends.to_string()),
            (F_EXPIRES_AT, tx.expires_at.millis().to_string()),
            (
                F_CODE,
                tx.code_hash.map(|code| code.to_hex()).unwrap_or_default(),
            ),
            (
                F_REASON,
                tx.reason.map(|r| r.as_str().to_owned()).unwrap_or_default(),
            ),
            (
                F_FINISHED_AT,
                tx.finished_at
                    .map(|at| at.millis().to_string())
                    .unwrap_or_default(),
            ),
        ];
        fields.extend(scalars.map(|(name, value)| (name.to_owned(), value)));
        if let Some(user_id) = &tx.user_id {
            fields.push((F_USER_ID.to_owned(), user_id.clone()));
        }
        Ok(fields)
    }
}

/// `data` cut at character boundaries into pieces of at most `LISTPACK_VALUE` bytes (at least
/// one piece), so that the hash stays in Redis's compact encoding.
fn data_chunks(data: &str) -> Vec<&str> {
    let mut chunks = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let mut end = rest.len().min(LISTPACK_VALUE);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (chunk, tail) = rest.split_at(end);
        chunks.push(chunk);
        rest = tail;
    }
    if chunks.is_empty() {
        chunks.push("");
    }
    chunks
}

/// The immutable JSON of a transaction's hash: whole (written before 0.2) or from its chunks.
fn joined_data(fields: &HashMap<String, String>) -> Result<String, StoreError> {
    if let Some(whole) = fields.get(F_DATA) {
        return Ok(whole.clone());
    }
    let count: usize = fields
        .get(F_DATA_CHUNKS)
        .and_then(|count| count.parse().ok())
        .ok_or_else(|| corrupt(format!("field {F_DATA_CHUNKS} missing")))?;
    let mut data = String::new();
    for i in 0..count {
        let chunk = fields
            .get(&format!("d{i}"))
            .ok_or_else(|| corrupt(format!("field d{i} missing")))?;
        data.push_str(chunk);
    }
    Ok(data)
}

/// Rebuilds a transaction from its hash.
fn decode(id: TransactionId, fields: &HashMap<String, String>) -> Result<Transaction, StoreError> {
    let field = |name: &str| {
        fields
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| corrupt(format!("field {name} missing")))
    };
    let number = |name: &str| -> Result<u64, StoreError> {
        field(name)?
            .parse()
            .map_err(|_| corrupt(format!("field {name} is not a number")))
    };
    let counter = |name: &str| -> Result<u32, StoreError> {
        u32::try_from(number(name)?).map_err(|_| corrupt(format!("field {name} out of range")))
    };
    let optional = |name: &str| fields.get(name).filter(|value| !value.is_empty());

    let (immutable, method) = Immutable::decode(&joined_data(fields)?)?;
    let status: Status = field(F_STATUS)?
        .parse()
        .map_err(|err| corrupt(format!("field {F_STATUS}: {err}")))?;
    let reason = optional(F_REASON)
        .map(|text| text.parse::<Reason>())
        .transpose()
        .map_err(|err| corrupt(format!("field {F_REASON}: {err}")))?;
    let code_hash = optional(F_CODE)
        .map(|hex| CodeHash::from_hex(hex).ok_or_else(|| corrupt("field code is not a hash")))
        .transpose()?;
    let finished_at = match optional(F_FINISHED_AT) {
        Some(_) => Some(Timestamp(number(F_FINISHED_AT)?)),
        None => None,
    };
    Ok(Transaction {
        id,
        auth_type: immutable.auth_type,
        method,
        user_id: fields.get(F_USER_ID).cloned(),
        status,
        created_at: Timestamp(immutable.created_at),
        expires_at: Timestamp(number(F_EXPIRES_AT)?),
        finished_at,
        attempts: counter(F_ATTEMPTS)?,
        max_attempts: counter(F_MAX_ATTEMPTS)?,
        resends: counter(F_RESENDS)?,
        max_resends: counter(F_MAX_RESENDS)?,
        code_hash,
        reason,
        evidence: optional(F_EVIDENCE)
            .map(|json| serde_json::from_str(json))
            .transpose()
            .map_err(|err| corrupt(format!("field {F_EVIDENCE}: {err}")))?,
        details: immutable.details,
    })
}

/// A counter from a script reply.
fn reply_count(value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| corrupt("counter out of range in script reply"))
}

fn reply_status(text: &str) -> Result<Status, StoreError> {
    text.parse()
        .map_err(|err| corrupt(format!("script reply: {err}")))
}

fn unexpected(reply: &Reply) -> StoreError {
    if reply.0 == R_CORRUPT {
        corrupt("counters missing or not numbers")
    } else {
        corrupt(format!("unexpected script reply kind {}", reply.0))
    }
}

#[async_trait]
impl TransactionStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call("ping", |mut connection| async move {
            ::redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        })
        .await
        .map(drop)
    }

    async fn insert(&self, tx: &Transaction) -> Result<(), StoreError> {
        let now = self.clock.now();
        let ttl = millis(now.until(tx.expires_at) + self.retention).max(1);
        let mut invocation = self.scripts.insert.prepare_invoke();
        invocation
            .key(tx_key(&self.prefix, &tx.id))
            .arg(now.millis())
            .arg(millis(self.retention))
            .arg(ttl);
        for (name, value) in self.encode(tx)? {
            invocation.arg(name).arg(value);
        }
        let insert = self.call_write("insert", |mut connection| async move {
            invocation.invoke_async::<i64>(&mut connection).await
        });
        // The admin's indexes, beside it (other slots): an id taken already is indexed already.
        let (stored, ()) = tokio::join!(insert, self.index_on_insert(tx, now));
        if stored? == 1 {
            Ok(())
        } else {
            Err(StoreError::AlreadyExists(tx.id))
        }
    }

    async fn get(&self, id: &TransactionId) -> Result<Option<Transaction>, StoreError> {
        let key = tx_key(&self.prefix, id);
        let fields: HashMap<String, String> = self
            .call("get", |mut connection| async move {
                ::redis::cmd("HGETALL")
                    .arg(key)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let tx = decode(*id, &fields)?;
        // Gone by the injected clock even if Redis has not expired the key yet.
        if self.clock.now() >= tx.expires_at.plus(self.retention) {
            return Ok(None);
        }
        Ok(Some(tx))
    }

    async fn verify_code(
        &self,
        id: &TransactionId,
        owner: Owner<'_>,
        candidate: &CodeHash,
    ) -> Result<Option<Verified>, StoreError> {
        let candidate = candidate.to_hex();
        let (kind, a, b, status, data): VerifyReply = self
            .run_tx_script(
                "verify_code",
                &self.scripts.verify,
                id,
                &[&candidate, owner.user_id, owner.client_id.unwrap_or("")],
            )
            .await?;
        let outcome = match kind {
            R_MISSING => return Ok(None),
            R_OK => VerifyOutcome::Approved {
                attempts: reply_count(a)?,
            },
            R_WRONG => VerifyOutcome::WrongCode {
                attempts: reply_count(a)?,
                remaining: if b < 0 { None } else { Some(reply_count(b)?) },
            },
            R_EXHAUSTED => VerifyOutcome::Exhausted {
                attempts: reply_count(a)?,
            },
            R_EXPIRED => VerifyOutcome::Expired,
            R_NOT_PENDING => VerifyOutcome::NotPending(reply_status(&status)?),
            R_NO_CODE => VerifyOutcome::NoCode,
            _ => return Err(unexpected(&(kind, a, b, status))),
        };
        if outcome.decided() {
            self.decided(id).await;
        }
        let (immutable, method) = Immutable::decode(&data)?;
        Ok(Some(Verified {
            outcome,
            auth_type: immutable.auth_type,
            method,
        }))
    }

    async fn resend(
        &self,
        id: &TransactionId,
        new_code: Option<&CodeHash>,
    ) -> Result<Option<ResendOutcome>, StoreError> {
        let new_code = new_code.map(CodeHash::to_hex).unwrap_or_default();
        let reply: Reply = self
            .run_tx_script("resend", &self.scripts.resend, id, &[&new_code])
            .await?;
        let outcome = match reply.0 {
            R_MISSING => return Ok(None),
            R_OK => ResendOutcome::Resent {
                resends: reply_count(reply.1)?,
            },
            R_DISABLED => ResendOutcome::Disabled,
            R_LIMIT => ResendOutcome::LimitReached,
            R_EXPIRED => ResendOutcome::Expired,
            R_NOT_PENDING => ResendOutcome::NotPending(reply_status(&reply.3)?),
            _ => return Err(unexpected(&reply)),
        };
        Ok(Some(outcome))
    }

    async fn finish(
        &self,
        id: &TransactionId,
        update: &Finish,
    ) -> Result<Option<FinishOutcome>, StoreError> {
        let reason = update.reason.map(Reason::as_str).unwrap_or_default();
        let evidence = match &update.evidence {
            Some(evidence) => serde_json::to_string(evidence)
                .map_err(|err| corrupt(format!("evidence: {err}")))?,
            None => String::new(),
        };
        let (link, user_id) = match &update.user_id {
            Some(user_id) => ("1", user_id.as_str()),
            None => ("0", ""),
        };
        let reply: Reply = self
            .run_tx_script(
                "finish",
                &self.scripts.finish,
                id,
                &[update.status.as_str(), reason, link, user_id, &evidence],
            )
            .await?;
        let outcome = match reply.0 {
            R_MISSING => return Ok(None),
            R_OK => {
                if let Some(user_id) = &update.user_id {
                    self.index_linked_user(id, user_id).await;
                }
                FinishOutcome::Finished
            }
            R_EXPIRED => FinishOutcome::Expired,
            R_NOT_PENDING => FinishOutcome::NotPending(reply_status(&reply.3)?),
            _ => return Err(unexpected(&reply)),
        };
        if outcome.decided() {
            self.decided(id).await;
        }
        Ok(Some(outcome))
    }

    async fn redeem_otp(
        &self,
        id: &TransactionId,
        candidate: &CodeHash,
        answer: &OtpAnswer,
    ) -> Result<Option<RedeemOutcome>, StoreError> {
        let (status, reason) = if answer.approve {
            (Status::Approved, "")
        } else {
            (Status::Denied, Reason::NotAccepted.as_str())
        };
        let evidence = match &answer.evidence {
            Some(evidence) => serde_json::to_string(evidence)
                .map_err(|err| corrupt(format!("evidence: {err}")))?,
            None => String::new(),
        };
        let candidate = candidate.to_hex();
        let reply: Reply = self
            .run_tx_script(
                "redeem_otp",
                &self.scripts.otp_redeem,
                id,
                &[
                    &candidate,
                    &answer.user_id,
                    status.as_str(),
                    reason,
                    &evidence,
                ],
            )
            .await?;
        let outcome = match reply.0 {
            R_MISSING => return Ok(None),
            R_OK => {
                self.index_linked_user(id, &answer.user_id).await;
                RedeemOutcome::Finished {
                    status: reply_status(&reply.3)?,
                    attempts: reply_count(reply.1)?,
                }
            }
            R_WRONG => RedeemOutcome::WrongCode {
                attempts: reply_count(reply.1)?,
                remaining: if reply.2 < 0 {
                    None
                } else {
                    Some(reply_count(reply.2)?)
                },
            },
            R_EXHAUSTED => RedeemOutcome::Exhausted {
                attempts: reply_count(reply.1)?,
            },
            R_EXPIRED => RedeemOutcome::Expired,
            R_NOT_PENDING => RedeemOutcome::NotPending(reply_status(&reply.3)?),
            _ => return Err(unexpected(&reply)),
        };
        if outcome.decided() {
            self.decided(id).await;
        }
        Ok(Some(outcome))
    }
}

#[async_trait]
impl RateLimitStore for RedisStore {
    async fn hit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<RateDecision, StoreError> {
        let mut invocation = self.scripts.hit.prepare_invoke();
        invocation
            .key(rl_key(&self.prefix, key))
            .arg(millis(window).max(1));
        let (count, ttl): (i64, i64) = self
            .call_write("rate_limit", |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        let count = u32::try_from(count.max(0)).unwrap_or(u32::MAX);
        Ok(RateDecision {
            allowed: count <= limit,
            count,
            retry_after: Duration::from_millis(u64::try_from(ttl).unwrap_or(0).max(1)),
        })
    }

    async fn refund(&self, key: &str) -> Result<(), StoreError> {
        let mut invocation = self.scripts.refund.prepare_invoke();
        invocation.key(rl_key(&self.prefix, key));
        self.call("rate_limit_refund", |mut connection| async move {
            invocation.invoke_async::<i64>(&mut connection).await
        })
        .await?;
        Ok(())
    }
}

#[async_trait]
impl HeldRequestStore for RedisStore {
    async fn hold(
        &self,
        id: &TransactionId,
        request: &HeldRequest,
        ttl: Duration,
        user_key: Option<&str>,
    ) -> Result<(), StoreError> {
        let ttl = millis(ttl).max(1);
        let ticket = serde_json::to_vec(&request.ticket)
            .map_err(|err| corrupt_held(format!("cannot encode the ticket: {err}")))?;
        let head = serde_json::to_vec(&request.request)
            .map_err(|err| corrupt_held(format!("cannot encode the request: {err}")))?;
        let mut invocation = self.scripts.held_hold.prepare_invoke();
        invocation
            .key(held_key(&self.prefix, id))
            .arg(ttl)
            .arg(ticket)
            .arg(head)
            .arg(request.request.body.as_slice());
        let hold = self.call_write("held_hold", |mut connection| async move {
            invocation.invoke_async::<()>(&mut connection).await
        });
        // Another slot on a cluster, so not part of the script (see the module docs); sent
        // beside it, one round trip on the multiplexed connection.
        let index = async {
            let Some(user_key) = user_key else {
                return Ok(());
            };
            let key = held_user_key(&self.prefix, user_key);
            let id = id.to_string();
            self.call("held_index", |mut connection| async move {
                ::redis::cmd("SET")
                    .arg(key)
                    .arg(id)
                    .arg("PX")
                    .arg(ttl)
                    .query_async::<()>(&mut connection)
                    .await
            })
            .await
        };
        let (held, indexed) = tokio::join!(hold, index);
        held.and(indexed)
    }

    async fn ticket(&self, id: &TransactionId) -> Result<Option<HeldTicket>, StoreError> {
        let key = held_key(&self.prefix, id);
        let ticket: Option<Vec<u8>> = self
            .call("held_ticket", |mut connection| async move {
                ::redis::cmd("HGET")
                    .arg(key)
                    .arg(F_HELD_TICKET)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        ticket
            .map(|bytes| held_json(F_HELD_TICKET, Some(bytes)))
            .transpose()
    }

    async fn take(&self, id: &TransactionId) -> Result<Option<HeldRequest>, StoreError> {
        let mut invocation = self.scripts.held_take.prepare_invoke();
        invocation.key(held_key(&self.prefix, id));
        let taken: Option<HeldFields> = self
            .call_write("held_take", |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        let Some((ticket, head, body)) = taken else {
            return Ok(None);
        };
        // Already deleted: a record that cannot be read is reported, not kept.
        let ticket: HeldTicket = held_json(F_HELD_TICKET, ticket)?;
        let mut request: OriginalRequest = held_json(F_HELD_REQUEST, head)?;
        request.body = body.ok_or_else(|| corrupt_held(format!("field {F_HELD_BODY} missing")))?;
        Ok(Some(HeldRequest { ticket, request }))
    }

    async fn latest_for_user(&self, user_key: &str) -> Result<Option<TransactionId>, StoreError> {
        let key = held_user_key(&self.prefix, user_key);
        let latest: Option<String> = self
            .call("held_latest", |mut connection| async move {
                ::redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        let Some(latest) = latest else {
            return Ok(None);
        };
        let id: TransactionId = latest
            .parse()
            .map_err(|_| corrupt_held("user index does not hold a transaction id"))?;
        let key = held_key(&self.prefix, &id);
        let held: bool = self
            .call("held_latest", |mut connection| async move {
                ::redis::cmd("EXISTS")
                    .arg(key)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(held.then_some(id))
    }

    async fn set_waiter(
        &self,
        id: &TransactionId,
        lease: Option<Duration>,
    ) -> Result<(), StoreError> {
        let key = waiter_key(&self.prefix, id);
        self.call("held_set_waiter", |mut connection| async move {
            match lease {
                Some(lease) => {
                    ::redis::cmd("SET")
                        .arg(key)
                        .arg(1)
                        .arg("PX")
                        .arg(millis(lease).max(1))
                        .query_async::<()>(&mut connection)
                        .await
                }
                None => {
                    ::redis::cmd("DEL")
                        .arg(key)
                        .query_async::<()>(&mut connection)
                        .await
                }
            }
        })
        .await
    }

    async fn has_waiter(&self, id: &TransactionId) -> Result<bool, StoreError> {
        let key = waiter_key(&self.prefix, id);
        let exists: i64 = self
            .call("held_has_waiter", |mut connection| async move {
                ::redis::cmd("EXISTS")
                    .arg(key)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(exists == 1)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md house rules)
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Instant;

    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::{JoinHandle, JoinSet};

    use super::*;
    use crate::domain::clock::{Clock, ManualClock};
    use crate::store::conformance::test_redis_url;

    fn settings(url: &str) -> RedisSettings {
        RedisSettings {
            url: url.to_owned(),
            key_prefix: format!("stepgate-test:{}:", uuid::Uuid::new_v4()),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(2),
            mode: crate::config::settings::RedisMode::Standalone,
            durability: Default::default(),
        }
    }

    fn settings_with_prefix(url: &str, prefix: &str) -> RedisSettings {
        RedisSettings {
            key_prefix: prefix.to_owned(),
            ..settings(url)
        }
    }

    fn store(url: &str) -> RedisStore {
        RedisStore::new(
            settings(url),
            Arc::new(ManualClock::starting_now()),
            Duration::from_secs(60),
        )
        .unwrap()
    }

    #[test]
    fn builds_without_a_runtime_and_without_connecting() {
        // No tokio runtime here, and nothing listens on port 1.
        let store = store("redis://:hunter2@127.0.0.1:1/0");
        let shown = format!("{store:?}");
        assert!(shown.contains("connected: false"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            !format!("{:?}", settings("redis://:hunter2@h:1/0")).contains("hunter2"),
            "settings debug must mask the password"
        );
    }

    #[test]
    fn a_url_that_is_not_redis_is_refused_without_echoing_it() {
        let err = RedisStore::new(
            settings("http://user:hunter2@nowhere/"),
            Arc::new(ManualClock::starting_now()),
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_redis_fails_fast_with_unavailable() {
        let store = store("redis://:hunter2@127.0.0.1:1/0");
        let started = Instant::now();
        let err = store.ping().await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let id = TransactionId::random();
        assert!(matches!(
            store.get(&id).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            store.hit("k", 1, Duration::from_secs(1)).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_blackholed_redis_is_bounded_by_the_timeouts() {
        // Accepts TCP but never answers: the response timeout must end the call.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let mut settings = settings(&format!("redis://127.0.0.1:{port}/0"));
        settings.connect_timeout = Duration::from_millis(300);
        settings.response_timeout = Duration::from_millis(300);
        let store = RedisStore::new(
            settings,
            Arc::new(ManualClock::starting_now()),
            Duration::ZERO,
        )
        .unwrap();
        let started = Instant::now();
        let err = store.ping().await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    /// Forwards every connection on `listener` to `upstream`; aborting the handle drops the
    /// listener and every forwarded connection, which looks to the client like Redis going away.
    fn forward(listener: TcpListener, upstream: SocketAddr) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        })
    }

    async fn ping_until_ok(store: &RedisStore) -> Result<(), StoreError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match store.ping().await {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() > deadline => return Err(err),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    #[tokio::test]
    async fn recovers_by_itself_when_redis_comes_back() {
        let real = url::Url::parse(&test_redis_url()).unwrap();
        let upstream: SocketAddr = format!(
            "{}:{}",
            real.host_str().unwrap(),
            real.port().unwrap_or(6379)
        )
        .parse()
        .unwrap();
        // A port where nothing listens yet.
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let mut via = real.clone();
        via.set_port(Some(port)).unwrap();
        let store = store(via.as_str());

        // Down at boot: fails, and the failure is not remembered.
        assert!(matches!(
            store.ping().await,
            Err(StoreError::Unavailable(_))
        ));
        let proxy = forward(
            TcpListener::bind(("127.0.0.1", port)).await.unwrap(),
            upstream,
        );
        ping_until_ok(&store).await.unwrap();

        // Goes away while connected: calls fail…
        proxy.abort();
        let _ = proxy.await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.ping().await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "ping kept working with Redis gone"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // …and work again once it is back, with no restart of the store.
        let proxy = forward(
            TcpListener::bind(("127.0.0.1", port)).await.unwrap(),
            upstream,
        );
        ping_until_ok(&store).await.unwrap();
        // Scripts too (EVALSHA falls back to loading the script on a fresh connection).
        assert_eq!(
            store
                .hit("recovery", 5, Duration::from_millis(200))
                .await
                .unwrap()
                .count,
            1
        );
        proxy.abort();
    }

    #[test]
    fn scripts_compare_codes_with_the_constant_time_helper_only() {
        assert!(
            COMMON_LUA.contains("bit.bor(diff, bit.bxor(string.byte(a, i), string.byte(b, i)))")
        );
        // In verify.lua the stored code and the candidate meet only inside ct_equal; the one
        // other mention of the stored code is the presence check.
        let mut compared = 0;
        for (n, line) in VERIFY_LUA.lines().enumerate() {
            let code = line.split("--").next().unwrap_or_default().trim();
            if !(code.contains("tx.code") || code.contains("ARGV[3]")) {
                continue;
            }
            if code.contains("ct_equal(tx.code, ARGV[3])") {
                compared += 1;
            } else {
                assert_eq!(code, "if tx.code == '' then", "verify.lua line {}", n + 1);
            }
        }
        assert_eq!(compared, 1);
    }

    #[tokio::test]
    async fn lua_constant_time_compare_accepts_only_identical_hashes() {
        let client = ::redis::Client::open(test_redis_url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let probe = Script::new(&format!(
            "{COMMON_LUA}\nif ct_equal(ARGV[3], ARGV[4]) then return 1 else return 0 end"
        ));
        let a = "a".repeat(64);
        let mut last_differs = a.clone();
        last_differs.replace_range(63.., "b");
        let mut first_differs = a.clone();
        first_differs.replace_range(..1, "0");
        let cases = [
            (a.as_str(), a.as_str(), 1),
            (a.as_str(), last_differs.as_str(), 0),
            (a.as_str(), first_differs.as_str(), 0),
            (a.as_str(), &a[..63], 0),
            (a.as_str(), "", 0),
        ];
        for (left, right, expected) in cases {
            let equal: i64 = probe
                .key("stepgate-test:unused")
                .arg(0)
                .arg(0)
                .arg(left)
                .arg(right)
                .invoke_async(&mut connection)
                .await
                .unwrap();
            assert_eq!(equal, expected, "{left} vs {right}");
        }
    }

    #[tokio::test]
    async fn stored_layout_is_a_hash_with_scalar_fields_and_a_relative_ttl() {
        let url = test_redis_url();
        let settings = settings(&url);
        let prefix = settings.key_prefix.clone();
        let clock = Arc::new(ManualClock::starting_now());
        let store = RedisStore::new(settings, clock.clone(), Duration::from_secs(60)).unwrap();
        let now = clock.now();
        let id = TransactionId::random();
        let code = CodeHash::from_hex(&"ab".repeat(32)).unwrap();
        let tx = Transaction {
            evidence: None,
            id,
            auth_type: "sms".into(),
            method: Method::Sms,
            user_id: None,
            status: Status::Pending,
            created_at: now,
            expires_at: now.plus(Duration::from_secs(120)),
            finished_at: None,
            attempts: 0,
            max_attempts: 3,
            resends: 0,
            max_resends: 1,
            code_hash: Some(code),
            reason: None,
            details: Details::default(),
        };
        store.insert(&tx).await.unwrap();

        let client = ::redis::Client::open(url).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let key = format!("{prefix}tx:{{{id}}}");
        let fields: HashMap<String, String> = ::redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        // Every value within the listpack limit: Redis keeps the hash compact.
        let encoding: String = ::redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(encoding, "listpack");
        assert!(fields.values().all(|value| value.len() <= LISTPACK_VALUE));
        let _: () = ::redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(fields["status"], "pending");
        assert_eq!(fields["code"], "ab".repeat(32));
        assert_eq!(
            fields["expires_at"],
            now.plus(Duration::from_secs(120)).to_string()
        );
        assert_eq!(fields["max_attempts"], "3");
        assert_eq!(fields["reason"], "");
        assert_eq!(fields["finished_at"], "");
        assert!(!fields.contains_key("user_id"));
        assert!(!fields.contains_key("data"));
        let data: serde_json::Value = serde_json::from_str(&joined_data(&fields).unwrap()).unwrap();
        assert_eq!(data["method"], "sms");
        assert_eq!(data["created_at"], now.millis());
    }

    #[test]
    fn data_is_cut_at_character_boundaries_within_the_listpack_limit() {
        let data = format!("{{\"message\":\"{}\"}}", "Überweisung € ".repeat(20));
        let chunks = data_chunks(&data);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|chunk| chunk.len() <= LISTPACK_VALUE));
        assert_eq!(chunks.concat(), data);
        assert_eq!(data_chunks(""), vec![""]);
    }

    #[tokio::test]
    async fn a_transaction_stored_whole_by_an_older_gate_still_reads_and_verifies() {
        let url = test_redis_url();
        let prefix = format!("stepgate-test:{}:", uuid::Uuid::new_v4());
        let clock: SharedClock = Arc::new(crate::domain::clock::SystemClock);
        let store = RedisStore::new(
            settings_with_prefix(&url, &prefix),
            clock.clone(),
            Duration::from_secs(60),
        )
        .unwrap();
        let now = clock.now();
        let id = TransactionId::random();
        let code = CodeHash::from_hex(&"cd".repeat(32)).unwrap();
        let key = format!("{prefix}tx:{{{id}}}");
        let client = ::redis::Client::open(url).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let data = format!(
            "{{\"auth_type\":\"sms_code\",\"method\":\"sms\",\"created_at\":{},\"details\":{{\"phone_number\":\"+31600000000\"}}}}",
            now.millis()
        );
        let _: () = ::redis::cmd("HSET")
            .arg(&key)
            .arg(&[
                ("data", data.as_str()),
                ("status", "pending"),
                ("attempts", "0"),
                ("max_attempts", "3"),
                ("resends", "0"),
                ("max_resends", "1"),
                (
                    "expires_at",
                    &now.plus(Duration::from_secs(120)).millis().to_string(),
                ),
                ("code", &"cd".repeat(32)),
                ("reason", ""),
                ("finished_at", ""),
                ("user_id", "old-user"),
            ])
            .query_async(&mut connection)
            .await
            .unwrap();
        let tx = store.get(&id).await.unwrap().expect("readable");
        assert_eq!(tx.details.phone_number.as_deref(), Some("+31600000000"));
        let verified = store
            .verify_code(&id, Owner::through_proxy("old-user"), &code)
            .await
            .unwrap()
            .expect("found");
        assert!(matches!(verified.outcome, VerifyOutcome::Approved { .. }));
        let _: () = ::redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
    }

    fn sample_held(body: Vec<u8>) -> HeldRequest {
        use crate::domain::held::{BindingDigest, HeldMode};
        HeldRequest {
            ticket: HeldTicket {
                bound: None,
                policy: "transfers".into(),
                user_id: "user-1".into(),
                mode: HeldMode::Hold,
                freshness_seconds: 300,
                binding: BindingDigest::of("token"),
                held_at: Timestamp(1_700_000_000_000),
                message: None,
            },
            request: OriginalRequest {
                method: "POST".into(),
                uri: "/transfer".into(),
                headers: vec![("x-raw".into(), vec![0xff, 0x00])],
                body,
            },
        }
    }

    #[tokio::test]
    async fn held_layout_is_one_hash_with_a_raw_body_and_a_relative_ttl() {
        let url = test_redis_url();
        let settings = settings(&url);
        let prefix = settings.key_prefix.clone();
        let store = RedisStore::new(
            settings,
            Arc::new(ManualClock::starting_now()),
            Duration::from_secs(60),
        )
        .unwrap();
        let id = TransactionId::random();
        let body = vec![0x00, 0xff, b'{', b'"', 0x80];
        let held = sample_held(body.clone());
        store
            .hold(&id, &held, Duration::from_secs(90), Some("user-key"))
            .await
            .unwrap();

        let client = ::redis::Client::open(url).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let key = format!("{prefix}held:{{{id}}}");
        let user_key = format!("{prefix}held-user:{{user-key}}");
        let fields: HashMap<String, Vec<u8>> = ::redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        let (key_ttl, user_ttl): (i64, i64) = ::redis::pipe()
            .cmd("PTTL")
            .arg(&key)
            .cmd("PTTL")
            .arg(&user_key)
            .query_async(&mut connection)
            .await
            .unwrap();
        let indexed: String = ::redis::cmd("GET")
            .arg(&user_key)
            .query_async(&mut connection)
            .await
            .unwrap();
        let _: () = ::redis::cmd("DEL")
            .arg(&key)
            .arg(&user_key)
            .query_async(&mut connection)
            .await
            .unwrap();

        let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["body", "request", "ticket"]);
        assert_eq!(fields["body"], body, "the body is stored raw");
        let request: serde_json::Value = serde_json::from_slice(&fields["request"]).unwrap();
        assert_eq!(request["method"], "POST");
        assert!(request.get("body").is_none(), "{request}");
        let ticket: HeldTicket = serde_json::from_slice(&fields["ticket"]).unwrap();
        assert_eq!(ticket, held.ticket);
        for ttl in [key_ttl, user_ttl] {
            assert!(ttl <= 90_000 && ttl > 85_000, "PTTL {ttl} ms");
        }
        assert_eq!(indexed, id.to_string());
    }

    #[tokio::test]
    async fn unreadable_held_records_are_corrupt_not_missing() {
        let url = test_redis_url();
        let settings = settings(&url);
        let prefix = settings.key_prefix.clone();
        let store = RedisStore::new(
            settings,
            Arc::new(ManualClock::starting_now()),
            Duration::from_secs(60),
        )
        .unwrap();
        let client = ::redis::Client::open(url).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let good_ticket = serde_json::to_string(&sample_held(Vec::new()).ticket).unwrap();
        let bad_ticket = TransactionId::random();
        let no_body = TransactionId::random();
        let user_index = held_user_key(&prefix, "user-key");
        let _: () = ::redis::pipe()
            .cmd("HSET")
            .arg(held_key(&prefix, &bad_ticket))
            .arg("ticket")
            .arg("{not json")
            .arg("request")
            .arg("{}")
            .arg("body")
            .arg("")
            .ignore()
            .cmd("HSET")
            .arg(held_key(&prefix, &no_body))
            .arg("ticket")
            .arg(&good_ticket)
            .arg("request")
            .arg(r#"{"method":"GET","uri":"/","headers":[]}"#)
            .ignore()
            .cmd("SET")
            .arg(&user_index)
            .arg("not-a-uuid")
            .ignore()
            .query_async(&mut connection)
            .await
            .unwrap();

        let ticket = store.ticket(&bad_ticket).await;
        let take_bad = store.take(&bad_ticket).await;
        let take_no_body = store.take(&no_body).await;
        let latest = store.latest_for_user("user-key").await;
        let _: () = ::redis::cmd("DEL")
            .arg(held_key(&prefix, &bad_ticket))
            .arg(held_key(&prefix, &no_body))
            .arg(&user_index)
            .query_async(&mut connection)
            .await
            .unwrap();
        for result in [
            ticket.map(drop),
            take_bad.map(drop),
            take_no_body.map(drop),
            latest.map(drop),
        ] {
            assert!(matches!(result, Err(StoreError::Corrupt(_))), "{result:?}");
        }
        // A take that found it unreadable still took it out.
        assert_eq!(store.take(&no_body).await, Ok(None));
    }

    #[tokio::test]
    async fn unreachable_redis_fails_held_calls_with_unavailable() {
        let store = store("redis://127.0.0.1:1/0");
        let id = TransactionId::random();
        let held = sample_held(vec![1, 2, 3]);
        assert!(matches!(
            store
                .hold(&id, &held, Duration::from_secs(1), Some("k"))
                .await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            store.ticket(&id).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            store.take(&id).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            store.latest_for_user("k").await,
            Err(StoreError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn unreadable_records_are_corrupt_not_missing() {
        let url = test_redis_url();
        let settings = settings(&url);
        let prefix = settings.key_prefix.clone();
        let store = RedisStore::new(
            settings,
            Arc::new(ManualClock::starting_now()),
            Duration::from_secs(60),
        )
        .unwrap();
        let id = TransactionId::random();
        let key = tx_key(&prefix, &id);
        let client = ::redis::Client::open(url).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = ::redis::cmd("HSET")
            .arg(&key)
            .arg("status")
            .arg("pending")
            .arg("attempts")
            .arg("many")
            .query_async(&mut connection)
            .await
            .unwrap();
        let _: () = ::redis::cmd("PEXPIRE")
            .arg(&key)
            .arg(60_000)
            .query_async(&mut connection)
            .await
            .unwrap();
        let get = store.get(&id).await;
        let candidate = CodeHash::from_hex(&"00".repeat(32)).unwrap();
        let verify = store
            .verify_code(&id, Owner::through_proxy("user-1"), &candidate)
            .await;
        let _: () = ::redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(matches!(get, Err(StoreError::Corrupt(_))), "{get:?}");
        assert!(matches!(verify, Err(StoreError::Corrupt(_))), "{verify:?}");
    }
}
