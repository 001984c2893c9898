//! The Redis callback queue: durable across restarts and shared by every replica of the gateway.
//! It rides on the `RedisStore`'s connection (same URL, prefix, timeouts and error mapping).
//!
//! Key layout (`{prefix}` is the configured key prefix; `{callbacks}` is a cluster hash tag so
//! both keys live in one slot and every script may touch both):
//! - `{prefix}{callbacks}:due`: a ZSET, job id scored by its due time (epoch ms; exact in a
//!   double until the year 287396).
//! - `{prefix}{callbacks}:jobs`: a HASH, job id -> JSON `{id, transaction_id, callback_uri,
//!   attempt}`. The due time lives in the ZSET only, so a lease touches nothing else.
//!
//! Neither key has a TTL: a job stays until it is completed or given up. `claim_due` is one
//! script (ZRANGEBYSCORE .. LIMIT, re-score each to the lease end, HGET each), as are `enqueue`,
//! `complete` and `reschedule`; `len` is one ZCARD.
//!
//! May import: domain, the Redis store.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::Script;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::callback::{CallbackJob, CallbackQueue};
use crate::domain::clock::Timestamp;
use crate::domain::ports::StoreError;
use crate::domain::transaction::TransactionId;
use crate::store::redis::RedisStore;

const ENQUEUE_LUA: &str = include_str!("../lua/callback_enqueue.lua");
const CLAIM_LUA: &str = include_str!("../lua/callback_claim.lua");
const COMPLETE_LUA: &str = include_str!("../lua/callback_complete.lua");
const RESCHEDULE_LUA: &str = include_str!("../lua/callback_reschedule.lua");

/// The due set's key.
pub(crate) fn due_key(prefix: &str) -> String {
    format!("{prefix}{{callbacks}}:due")
}

/// The jobs hash's key.
pub(crate) fn jobs_key(prefix: &str) -> String {
    format!("{prefix}{{callbacks}}:jobs")
}

/// A job as stored in the jobs hash: everything but the due time.
#[derive(Serialize, Deserialize)]
struct StoredJob {
    id: String,
    transaction_id: TransactionId,
    callback_uri: String,
    attempt: u32,
}

impl StoredJob {
    fn encode(job: &CallbackJob) -> Result<String, StoreError> {
        serde_json::to_string(&StoredJob {
            id: job.id.clone(),
            transaction_id: job.transaction_id,
            callback_uri: job.callback_uri.clone(),
            attempt: job.attempt,
        })
        .map_err(|err| corrupt(format!("cannot encode: {err}")))
    }

    fn decode(id: &str, json: &str, due_at: Timestamp) -> Result<CallbackJob, StoreError> {
        let stored: StoredJob =
            serde_json::from_str(json).map_err(|err| corrupt(format!("job {id}: {err}")))?;
        Ok(CallbackJob {
            id: stored.id,
            transaction_id: stored.transaction_id,
            callback_uri: stored.callback_uri,
            attempt: stored.attempt,
            due_at,
        })
    }
}

fn corrupt(what: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("redis callback queue: {what}"))
}

struct Scripts {
    enqueue: Script,
    claim: Script,
    complete: Script,
    reschedule: Script,
}

/// The shared queue. Cheap to share behind an `Arc`; connects on first use (through the store).
pub struct RedisCallbackQueue {
    store: Arc<RedisStore>,
    due_key: String,
    jobs_key: String,
    scripts: Scripts,
}

impl fmt::Debug for RedisCallbackQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCallbackQueue")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl RedisCallbackQueue {
    /// A queue under `store`'s key prefix, on its connection.
    pub fn new(store: Arc<RedisStore>) -> Self {
        let prefix = store.key_prefix().to_owned();
        Self {
            store,
            due_key: due_key(&prefix),
            jobs_key: jobs_key(&prefix),
            scripts: Scripts {
                enqueue: Script::new(ENQUEUE_LUA),
                claim: Script::new(CLAIM_LUA),
                complete: Script::new(COMPLETE_LUA),
                reschedule: Script::new(RESCHEDULE_LUA),
            },
        }
    }

    /// Runs `script` on the due set and jobs hash with `args`.
    async fn run<R: ::redis::FromRedisValue>(
        &self,
        operation: &'static str,
        script: &Script,
        args: &[&str],
    ) -> Result<R, StoreError> {
        let mut invocation = script.prepare_invoke();
        invocation.key(&self.due_key).key(&self.jobs_key);
        for arg in args {
            invocation.arg(*arg);
        }
        self.store
            .call_write(operation, |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await
    }
}

#[async_trait]
impl CallbackQueue for RedisCallbackQueue {
    async fn enqueue(&self, job: &CallbackJob) -> Result<(), StoreError> {
        let json = StoredJob::encode(job)?;
        let due = job.due_at.millis().to_string();
        self.run::<i64>(
            "callback_enqueue",
            &self.scripts.enqueue,
            &[&job.id, &due, &json],
        )
        .await?;
        Ok(())
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<CallbackJob>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let leased_until = now.plus(lease);
        let reply: Vec<String> = self
            .run(
                "callback_claim",
                &self.scripts.claim,
                &[
                    &now.millis().to_string(),
                    &limit.to_string(),
                    &leased_until.millis().to_string(),
                ],
            )
            .await?;
        reply
            .chunks(2)
            .map(|pair| match pair {
                [id, json] => StoredJob::decode(id, json, leased_until),
                _ => Err(corrupt("claim reply has an odd length")),
            })
            .collect()
    }

    async fn complete(&self, id: &str) -> Result<(), StoreError> {
        self.run::<i64>("callback_complete", &self.scripts.complete, &[id])
            .await?;
        Ok(())
    }

    async fn reschedule(
        &self,
        id: &str,
        attempt: u32,
        due_at: Timestamp,
    ) -> Result<(), StoreError> {
        self.run::<i64>(
            "callback_reschedule",
            &self.scripts.reschedule,
            &[id, &attempt.to_string(), &due_at.millis().to_string()],
        )
        .await?;
        Ok(())
    }

    async fn len(&self) -> Result<usize, StoreError> {
        let due_key = self.due_key.clone();
        self.store
            .call("callback_len", |mut connection| async move {
                ::redis::cmd("ZCARD")
                    .arg(&due_key)
                    .query_async(&mut connection)
                    .await
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_keys_share_one_cluster_slot() {
        assert_eq!(due_key("stepgate:"), "stepgate:{callbacks}:due");
        assert_eq!(jobs_key("stepgate:"), "stepgate:{callbacks}:jobs");
    }
}
