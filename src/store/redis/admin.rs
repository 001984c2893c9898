//! The Redis store's admin read side.
//!
//! Key layout (`{prefix}` is the configured key prefix):
//! - `{prefix}tx-index`: a ZSET of every transaction id, scored by `created_at` (epoch ms).
//!   Beside the insert script (sent together, one round trip on the multiplexed connection),
//!   one MULTI/EXEC on this key adds the id, trims entries older than `LONGEST_TRANSACTION +
//!   retention` (they point at evicted transactions) and refreshes the key's TTL to that span.
//!   It is the deliberate hot key of a cluster: every transaction writes it once (three
//!   commands), and nothing on a request path reads it.
//! - `{prefix}tx-user:{<sha256 hex of the user id>}`: the same per user (the hash keeps user
//!   ids out of key names). An OTP transaction, linked to its user only when it finishes, is
//!   added then (right after the finish script; a failure there is logged and the finish
//!   stands).
//! - `{prefix}audit`: a ZSET of audit events scored by their time (epoch ms, gateway clock),
//!   each member `<uuid> <event JSON>` so identical events stay apart. Every append (one
//!   MULTI/EXEC) trims events older than `AUDIT_MAX_AGE` and all but the newest
//!   `REDIS_AUDIT_CAPACITY`. A ZSET rather than a stream: stream ids come from one clock and
//!   must grow, which several gateways with skewed clocks (or a test clock) cannot promise.
//!
//! The index keys live in other hash slots than the transaction, so no script spans them: the
//! index writes are their own steps, each on one key, and valid on a cluster. A failed index
//! write is logged and the transaction stands (the admin view is not a record). Index entries
//! whose transaction is gone are skipped when read and then removed.
//!
//! May import: domain (and its parent, the Redis store).

use std::collections::HashMap;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::{RedisStore, decode, millis, tx_key};
use crate::domain::clock::Timestamp;
use crate::domain::ports::{
    AdminStore, AuditEntry, StoreError, TransactionQuery, TransactionStore,
};
use crate::domain::transaction::{Transaction, TransactionId};
use crate::store::admin::{
    AUDIT_MAX_AGE, LONGEST_TRANSACTION, MAX_SCANNED, REDIS_AUDIT_CAPACITY, audit_horizon,
    index_horizon, matches,
};

/// Index entries read per round trip.
const PAGE: usize = 200;

fn index_key(prefix: &str) -> String {
    format!("{prefix}tx-index")
}

fn user_index_key(prefix: &str, user_id: &str) -> String {
    let digest = hex::encode(Sha256::digest(user_id.as_bytes()));
    format!("{prefix}tx-user:{{{digest}}}")
}

fn audit_key(prefix: &str) -> String {
    format!("{prefix}audit")
}

impl RedisStore {
    /// The index keys' lifetime: an index nobody writes to outlives its newest transaction.
    fn index_ttl(&self) -> u64 {
        millis(LONGEST_TRANSACTION + self.retention)
    }

    /// Adds a new transaction to the time index and, with a user, the user's index. Best
    /// effort: logged, not returned (the transaction is what counts).
    pub(super) async fn index_on_insert(&self, tx: &Transaction, now: Timestamp) {
        let time_index = self.index_add(index_key(&self.prefix), tx.created_at, &tx.id, now);
        let user_index = async {
            match &tx.user_id {
                Some(user_id) => {
                    let key = user_index_key(&self.prefix, user_id);
                    self.index_add(key, tx.created_at, &tx.id, now).await
                }
                None => Ok(()),
            }
        };
        let (time_index, user_index) = tokio::join!(time_index, user_index);
        if let Err(error) = time_index.and(user_index) {
            tracing::warn!(transaction_id = %tx.id, %error, "cannot index the transaction for the admin API");
        }
    }

    /// Puts a transaction linked to its user at finish into that user's index. Best effort:
    /// the finish already happened, so a failure is logged, not returned.
    pub(super) async fn index_linked_user(&self, id: &TransactionId, user_id: &str) {
        let linked = async {
            // Gone already: nothing to index.
            let Some(tx) = TransactionStore::get(self, id).await? else {
                return Ok(());
            };
            let created_at = tx.created_at;
            let index = user_index_key(&self.prefix, user_id);
            self.index_add(index, created_at, id, self.clock.now())
                .await
        };
        if let Err(error) = linked.await {
            tracing::warn!(transaction_id = %id, %error, "cannot index the transaction under its linked user");
        }
    }

    /// One index entry: add it, trim what points at evicted transactions, refresh the TTL, in
    /// one MULTI/EXEC on the one key.
    async fn index_add(
        &self,
        key: String,
        created_at: Timestamp,
        id: &TransactionId,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("ZADD")
            .arg(&key)
            .arg(created_at.millis())
            .arg(id.to_string())
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(format!("({}", index_horizon(now, self.retention).millis()))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(self.index_ttl())
            .ignore();
        self.call("admin_index_add", |mut connection| async move {
            pipe.query_async::<()>(&mut connection).await
        })
        .await
    }

    /// One page of index entries at or after `since`, newest first.
    async fn index_page(
        &self,
        key: &str,
        since: Timestamp,
        offset: usize,
    ) -> Result<Vec<String>, StoreError> {
        let key = key.to_owned();
        self.call("admin_index", |mut connection| async move {
            ::redis::cmd("ZREVRANGEBYSCORE")
                .arg(key)
                .arg("+inf")
                .arg(since.millis())
                .arg("LIMIT")
                .arg(offset)
                .arg(PAGE)
                .query_async(&mut connection)
                .await
        })
        .await
    }

    /// The transactions' hashes, in the order asked (empty where the key is gone).
    async fn hashes(
        &self,
        ids: &[TransactionId],
    ) -> Result<Vec<HashMap<String, String>>, StoreError> {
        if ids.is_empty() {
            // An empty pipeline is a client error, not an empty answer.
            return Ok(Vec::new());
        }
        // One read per transaction, all sent at once: a pipeline would span slots on a cluster.
        let reads = ids.iter().map(|id| {
            let key = tx_key(&self.prefix, id);
            self.call("admin_read", |mut connection| async move {
                ::redis::cmd("HGETALL")
                    .arg(key)
                    .query_async::<HashMap<String, String>>(&mut connection)
                    .await
            })
        });
        futures::future::try_join_all(reads).await
    }

    /// Removes index entries that point at nothing; best effort (the next read skips them too).
    async fn drop_stale(&self, key: &str, stale: Vec<String>) {
        if stale.is_empty() {
            return;
        }
        let key = key.to_owned();
        let removed: Result<i64, StoreError> = self
            .call("admin_index_clean", |mut connection| async move {
                ::redis::cmd("ZREM")
                    .arg(key)
                    .arg(stale)
                    .query_async(&mut connection)
                    .await
            })
            .await;
        if let Err(error) = removed {
            tracing::debug!(%error, "cannot remove stale admin index entries");
        }
    }
}

#[async_trait]
impl AdminStore for RedisStore {
    async fn recent_transactions(
        &self,
        query: &TransactionQuery,
    ) -> Result<Vec<Transaction>, StoreError> {
        let key = match &query.user_id {
            Some(user_id) => user_index_key(&self.prefix, user_id),
            None => index_key(&self.prefix),
        };
        let now = self.clock.now();
        let mut found = Vec::new();
        let mut stale = Vec::new();
        let mut offset = 0;
        while found.len() < query.limit && offset < MAX_SCANNED {
            let page = self.index_page(&key, query.since, offset).await?;
            offset += page.len();
            let mut ids = Vec::with_capacity(page.len());
            for member in &page {
                match member.parse::<TransactionId>() {
                    Ok(id) => ids.push(id),
                    Err(_) => stale.push(member.clone()),
                }
            }
            for (id, fields) in ids.iter().zip(self.hashes(&ids).await?) {
                if fields.is_empty() {
                    stale.push(id.to_string());
                    continue;
                }
                let tx = match decode(*id, &fields) {
                    Ok(tx) => tx,
                    // One unreadable record must not hide the rest from an investigation.
                    Err(error) => {
                        tracing::warn!(transaction_id = %id, %error, "admin listing skips an unreadable transaction");
                        continue;
                    }
                };
                // Gone by the injected clock even if Redis has not expired the key yet.
                let live = now < tx.expires_at.plus(self.retention);
                if live && matches(&tx, query, now) {
                    found.push(tx);
                    if found.len() == query.limit {
                        break;
                    }
                }
            }
            if page.len() < PAGE {
                break;
            }
        }
        self.drop_stale(&key, stale).await;
        Ok(found)
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let key = audit_key(&self.prefix);
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        let mut add = ::redis::cmd("ZADD");
        add.arg(&key);
        for entry in entries {
            let member = format!("{} {}", uuid::Uuid::new_v4().simple(), entry.event);
            add.arg(entry.at.millis()).arg(member);
        }
        pipe.add_command(add).ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(format!("({}", audit_horizon(self.clock.now()).millis()))
            .ignore();
        // Keep the newest REDIS_AUDIT_CAPACITY: ranks 0 (oldest) up to -(capacity + 1).
        pipe.cmd("ZREMRANGEBYRANK")
            .arg(&key)
            .arg(0)
            .arg(-(i64::try_from(REDIS_AUDIT_CAPACITY).unwrap_or(i64::MAX)) - 1)
            .ignore();
        pipe.cmd("PEXPIRE")
            .arg(&key)
            .arg(millis(AUDIT_MAX_AGE))
            .ignore();
        self.call("admin_audit_append", |mut connection| async move {
            pipe.query_async::<()>(&mut connection).await
        })
        .await
    }

    async fn audit_since(
        &self,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let key = audit_key(&self.prefix);
        let members: Vec<(String, f64)> = self
            .call("admin_audit_read", |mut connection| async move {
                ::redis::cmd("ZREVRANGEBYSCORE")
                    .arg(key)
                    .arg("+inf")
                    .arg(since.millis())
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        members
            .into_iter()
            .map(|(member, score)| {
                let (_, event) = member.split_once(' ').ok_or_else(|| {
                    StoreError::Corrupt("redis audit: member without an id".into())
                })?;
                Ok(AuditEntry {
                    // Epoch milliseconds are far below 2^53: exact in a double.
                    at: Timestamp(score as u64),
                    event: event.to_owned(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (STYLE.md house rules)
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use ::redis::Client;

    use super::*;
    use crate::domain::auth_type::Method;
    use crate::domain::clock::{Clock, ManualClock};
    use crate::domain::ports::TransactionStore;
    use crate::domain::transaction::{Details, Status};
    use crate::store::conformance::test_redis_url;
    use crate::store::redis::RedisSettings;

    fn sample(user: Option<&str>, now: Timestamp) -> Transaction {
        Transaction {
            evidence: None,
            id: TransactionId::random(),
            auth_type: "sms".into(),
            method: Method::Sms,
            user_id: user.map(str::to_owned),
            status: Status::Pending,
            created_at: now,
            expires_at: now.plus(Duration::from_secs(60)),
            finished_at: None,
            attempts: 0,
            max_attempts: 3,
            resends: 0,
            max_resends: 0,
            code_hash: None,
            reason: None,
            details: Details::default(),
        }
    }

    #[tokio::test]
    async fn index_layout_is_zsets_scored_by_creation_with_a_ttl_and_trimmed_by_age() {
        let url = test_redis_url();
        let prefix = format!("stepgate-test:{}:", uuid::Uuid::new_v4());
        let clock = Arc::new(ManualClock::starting_now());
        let retention = Duration::from_secs(60);
        let store = RedisStore::new(
            RedisSettings {
                url: url.clone(),
                key_prefix: prefix.clone(),
                connect_timeout: Duration::from_millis(500),
                response_timeout: Duration::from_secs(2),
                mode: crate::config::settings::RedisMode::Standalone,
                durability: Default::default(),
            },
            clock.clone(),
            retention,
        )
        .unwrap();
        let old = sample(Some("ann"), clock.now());
        store.insert(&old).await.unwrap();
        clock.advance(LONGEST_TRANSACTION + retention + Duration::from_secs(1));
        let new = sample(Some("ann"), clock.now());
        store.insert(&new).await.unwrap();
        let anonymous = sample(None, clock.now());
        store.insert(&anonymous).await.unwrap();

        let client = Client::open(url).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let user_key = format!(
            "{prefix}tx-user:{{{}}}",
            hex::encode(Sha256::digest(b"ann"))
        );
        let index: Vec<(String, u64)> = ::redis::cmd("ZRANGE")
            .arg(format!("{prefix}tx-index"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut connection)
            .await
            .unwrap();
        let users: Vec<String> = ::redis::cmd("ZRANGE")
            .arg(&user_key)
            .arg(0)
            .arg(-1)
            .query_async(&mut connection)
            .await
            .unwrap();
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(&user_key)
            .query_async(&mut connection)
            .await
            .unwrap();
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut connection)
            .await
            .unwrap();
        let _: () = ::redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut connection)
            .await
            .unwrap();

        // The old entry was trimmed when the new one was written.
        assert_eq!(index.len(), 2, "{index:?}");
        assert!(index.contains(&(new.id.to_string(), new.created_at.millis())));
        assert!(index.iter().any(|(id, _)| *id == new.id.to_string()));
        assert!(index.iter().any(|(id, _)| *id == anonymous.id.to_string()));
        assert!(index.iter().all(|(id, _)| *id != old.id.to_string()));
        assert_eq!(users, vec![new.id.to_string()]);
        let span = i64::try_from(millis(LONGEST_TRANSACTION + retention)).unwrap();
        assert!(ttl > span - 5_000 && ttl <= span, "PTTL {ttl}");
        assert!(
            keys.iter().all(|key| !key.contains("ann")),
            "user ids never appear in key names: {keys:?}"
        );
    }
}
