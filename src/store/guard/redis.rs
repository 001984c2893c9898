//! The Redis account guard: shared by every replica of the gateway. It rides on the
//! `RedisStore`'s connection (same URL, prefix, timeouts and error mapping).
//!
//! Key layout (`{prefix}` is the configured key prefix):
//! - `{prefix}guard:{<user key>}`: a HASH per user (the key is an HMAC of the user id, so no
//!   user id appears in a key name), written by `guard.lua` in one step and expiring when
//!   nothing in it matters any more (`guard::keep_until`). Each user is one cluster slot.
//! - `{prefix}guard:blocked`: a ZSET of user keys scored by when their lock or report block
//!   ends; a hint for the admin list, written after the step that set the block and read back
//!   against each user's hash, so a stale entry is never listed.
//!
//! May import: domain, the Redis store.

use std::fmt;
use std::sync::Arc;

use ::redis::Script;
use async_trait::async_trait;

use crate::domain::clock::{SharedClock, Timestamp};
use crate::domain::guard::{self, AccountState, Block, GuardOp, GuardRules, GuardVerdict};
use crate::domain::ports::{AccountGuardStore, Admission, BoundedList, GuardedUser, StoreError};
use crate::store::redis::RedisStore;

const GUARD_LUA: &str = include_str!("../lua/guard.lua");
const ADMIT_LUA: &str = include_str!("../lua/guard_admit.lua");

/// The per-user hash's key.
pub(crate) fn user_key(prefix: &str, user_key: &str) -> String {
    format!("{prefix}guard:{{{user_key}}}")
}

/// A user's bounded list: the same hash tag as the user's hash, so one slot per user.
pub(crate) fn list_key(prefix: &str, user_key: &str, list: BoundedList) -> String {
    format!("{prefix}guard:{{{user_key}}}:{}", list.as_str())
}

/// The blocked users' index.
pub(crate) fn blocked_key(prefix: &str) -> String {
    format!("{prefix}guard:blocked")
}

fn corrupt(what: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("redis account guard: {what}"))
}

fn millis(duration: std::time::Duration) -> String {
    duration.as_millis().to_string()
}

/// The shared guard store. Cheap to share behind an `Arc`; connects on first use.
pub struct RedisGuardStore {
    store: Arc<RedisStore>,
    clock: SharedClock,
    prefix: String,
    script: Script,
    admit: Script,
}

impl fmt::Debug for RedisGuardStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisGuardStore")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl RedisGuardStore {
    pub fn new(store: Arc<RedisStore>, clock: SharedClock) -> Self {
        Self {
            prefix: store.key_prefix().to_owned(),
            store,
            clock,
            script: Script::new(GUARD_LUA),
            admit: Script::new(ADMIT_LUA),
        }
    }

    /// Keeps the blocked index in step with a verdict: a new block is added (scored by its
    /// end), an unlock removes the user.
    async fn index(
        &self,
        member: &str,
        op: GuardOp,
        verdict: GuardVerdict,
    ) -> Result<(), StoreError> {
        let index = blocked_key(&self.prefix);
        let member = member.to_owned();
        match (op, verdict) {
            (_, GuardVerdict::LockedNow { until } | GuardVerdict::Reported { until }) => {
                self.store
                    .call("guard_index", |mut connection| async move {
                        ::redis::cmd("ZADD")
                            .arg(&index)
                            .arg("GT")
                            .arg(until.millis())
                            .arg(&member)
                            .query_async::<i64>(&mut connection)
                            .await
                    })
                    .await?;
            }
            (GuardOp::Unlock, _) => {
                self.store
                    .call("guard_index", |mut connection| async move {
                        ::redis::cmd("ZREM")
                            .arg(&index)
                            .arg(&member)
                            .query_async::<i64>(&mut connection)
                            .await
                    })
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

fn verdict(kind: i64, value: i64, block: i64) -> Result<GuardVerdict, StoreError> {
    let at = || Timestamp(u64::try_from(value).unwrap_or(0));
    Ok(match (kind, block) {
        (0, _) => GuardVerdict::Clear,
        (1, 1) => GuardVerdict::Blocked(Block::Locked { until: at() }),
        (1, 2) => GuardVerdict::Blocked(Block::PushReported { until: at() }),
        (1, 3) => GuardVerdict::Blocked(Block::PushFatigue { until: at() }),
        (1, 4) => GuardVerdict::Blocked(Block::Busy { until: at() }),
        (2, _) => GuardVerdict::Counted {
            failures: u32::try_from(value).map_err(|_| corrupt("negative failure count"))?,
        },
        (3, _) => GuardVerdict::LockedNow { until: at() },
        (4, _) => GuardVerdict::Reported { until: at() },
        other => return Err(corrupt(format!("unexpected reply {other:?}"))),
    })
}

/// A user's hash as `HMGET f lf lu p lp pb i iu u` returns it.
fn decode(fields: &[Option<String>]) -> Result<(AccountState, Option<String>), StoreError> {
    let number = |index: usize| -> Result<Option<u64>, StoreError> {
        fields
            .get(index)
            .cloned()
            .flatten()
            .map(|text| {
                text.parse::<u64>()
                    .map_err(|_| corrupt(format!("field {index} is not a number: {text}")))
            })
            .transpose()
    };
    let count = |index: usize| -> Result<u32, StoreError> {
        Ok(u32::try_from(number(index)?.unwrap_or(0)).unwrap_or(u32::MAX))
    };
    let state = AccountState {
        failures: count(0)?,
        last_failure_at: number(1)?.map(Timestamp),
        locked_until: number(2)?.map(Timestamp),
        pushes: count(3)?,
        last_push_at: number(4)?.map(Timestamp),
        push_blocked_until: number(5)?.map(Timestamp),
        in_flight: count(6)?,
        in_flight_until: number(7)?.map(Timestamp),
    };
    Ok((state, fields.get(8).cloned().flatten()))
}

#[async_trait]
impl AccountGuardStore for RedisGuardStore {
    async fn guard(
        &self,
        member: &str,
        user_id: &str,
        op: GuardOp,
        rules: &GuardRules,
    ) -> Result<GuardVerdict, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(user_key(&self.prefix, member))
            .arg(self.clock.now().millis())
            .arg(op.as_str())
            .arg(user_id)
            .arg(rules.max_failures)
            .arg(millis(rules.lock_for))
            .arg(millis(rules.forget_after))
            .arg(rules.max_pushes)
            .arg(millis(rules.push_backoff))
            .arg(millis(rules.max_push_backoff))
            .arg(millis(rules.report_block))
            .arg(millis(guard::BUSY_RETRY))
            .arg(millis(guard::IN_FLIGHT_TTL));
        let (kind, value, block): (i64, i64, i64) = self
            .store
            .call_write("guard", |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        let verdict = verdict(kind, value, block)?;
        // The index is a hint for the admin list; the step itself is already saved.
        if let Err(error) = self.index(member, op, verdict).await {
            tracing::warn!(%error, "account guard: blocked-users index not updated");
        }
        Ok(verdict)
    }

    async fn guarded_users(&self) -> Result<Vec<GuardedUser>, StoreError> {
        let now = self.clock.now();
        let index = blocked_key(&self.prefix);
        let members: Vec<String> = self
            .store
            .call("guard_list", |mut connection| async move {
                let (_, members): (i64, Vec<String>) = ::redis::pipe()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&index)
                    .arg("-inf")
                    .arg(now.millis())
                    .cmd("ZRANGEBYSCORE")
                    .arg(&index)
                    .arg(format!("({}", now.millis()))
                    .arg("+inf")
                    .query_async(&mut connection)
                    .await?;
                Ok(members)
            })
            .await?;
        let mut guarded = Vec::with_capacity(members.len());
        for member in members {
            let key = user_key(&self.prefix, &member);
            let fields: Vec<Option<String>> = self
                .store
                .call("guard_read", |mut connection| async move {
                    ::redis::cmd("HMGET")
                        .arg(&key)
                        .arg(&["f", "lf", "lu", "p", "lp", "pb", "i", "iu", "u"])
                        .query_async(&mut connection)
                        .await
                })
                .await?;
            let (state, user_id) = decode(&fields)?;
            if let (Some(user_id), Some(_)) = (user_id, guard::current_block(&state, now)) {
                guarded.push(GuardedUser { user_id, state });
            }
        }
        Ok(guarded)
    }

    async fn admit_entry(
        &self,
        user_key: &str,
        list: BoundedList,
        entry: &str,
        live_until: Timestamp,
        max: u32,
        remove: &[String],
    ) -> Result<Admission, StoreError> {
        let mut invocation = self.admit.prepare_invoke();
        invocation
            .key(list_key(&self.prefix, user_key, list))
            .arg(self.clock.now().millis())
            .arg(entry)
            .arg(live_until.millis())
            .arg(max);
        for gone in remove {
            invocation.arg(gone);
        }
        let reply: Vec<::redis::Value> = self
            .store
            .call_write("guard_admit", |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        let text = |value: &::redis::Value| -> Result<String, StoreError> {
            ::redis::from_redis_value::<String>(value.clone())
                .map_err(|err| corrupt(format!("admit reply: {err}")))
        };
        match reply.split_first() {
            Some((first, rest)) if text(first)? == "0" => {
                let live =
                    rest.chunks(2)
                        .map(|pair| match pair {
                            [entry, until] => {
                                Ok((
                                    text(entry)?,
                                    Timestamp(text(until)?.parse::<f64>().map_err(|_| {
                                        corrupt("admit reply: a score is not a number")
                                    })? as u64),
                                ))
                            }
                            _ => Err(corrupt("admit reply has an odd length")),
                        })
                        .collect::<Result<_, _>>()?;
                Ok(Admission::Full { live })
            }
            Some(_) => Ok(Admission::Admitted),
            None => Err(corrupt("empty admit reply")),
        }
    }

    async fn remove_entry(
        &self,
        user_key: &str,
        list: BoundedList,
        entry: &str,
    ) -> Result<(), StoreError> {
        let key = list_key(&self.prefix, user_key, list);
        let entry = entry.to_owned();
        self.store
            .call("guard_remove", |mut connection| async move {
                ::redis::cmd("ZREM")
                    .arg(&key)
                    .arg(&entry)
                    .query_async::<i64>(&mut connection)
                    .await
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_is_one_slot_and_no_user_id_is_in_a_key() {
        assert_eq!(user_key("sg:", "ab12"), "sg:guard:{ab12}");
        assert_eq!(blocked_key("sg:"), "sg:guard:blocked");
    }
}
