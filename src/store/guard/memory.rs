//! The embedded account guard: one `HashMap` behind a std `Mutex`, so each step is one critical
//! section (never held across an `.await`). Entries are dropped once they stop mattering
//! (`guard::keep_until`).
//!
//! May import: domain.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

use crate::domain::clock::SharedClock;
use crate::domain::clock::Timestamp;
use crate::domain::guard::{self, AccountState, GuardOp, GuardRules, GuardVerdict};
use crate::domain::ports::{AccountGuardStore, Admission, BoundedList, GuardedUser, StoreError};

struct Entry {
    user_id: String,
    state: AccountState,
    /// When the entry may be forgotten (`guard::keep_until` after its last change).
    keep_until: Timestamp,
}

/// The embedded guard store. Cheap to share behind an `Arc`.
pub struct MemoryGuardStore {
    clock: SharedClock,
    users: Mutex<HashMap<String, Entry>>,
    /// (user key, list) -> entry -> live until.
    lists: Mutex<HashMap<(String, BoundedList), HashMap<String, Timestamp>>>,
    /// When the next sweep of entries nobody touched any more is due.
    next_sweep: Mutex<Timestamp>,
}

/// How often stale users and lists are swept out (each sweep is one pass over the maps).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl fmt::Debug for MemoryGuardStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryGuardStore").finish_non_exhaustive()
    }
}

impl MemoryGuardStore {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            users: Mutex::new(HashMap::new()),
            lists: Mutex::new(HashMap::new()),
            next_sweep: Mutex::new(Timestamp(0)),
        }
    }

    /// Drops users whose state no longer matters and lists with no live entry, at most once a
    /// minute, so users who never come back do not stay in memory.
    fn sweep(&self, now: Timestamp) {
        {
            let mut next = self
                .next_sweep
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if now < *next {
                return;
            }
            *next = now.plus(SWEEP_EVERY);
        }
        self.users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, entry| now < entry.keep_until);
        self.lists
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, entries| {
                entries.retain(|_, until| now < *until);
                !entries.is_empty()
            });
    }
}

#[async_trait]
impl AccountGuardStore for MemoryGuardStore {
    async fn guard(
        &self,
        user_key: &str,
        user_id: &str,
        op: GuardOp,
        rules: &GuardRules,
    ) -> Result<GuardVerdict, StoreError> {
        let now = self.clock.now();
        self.sweep(now);
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let mut state = users
            .get(user_key)
            .filter(|entry| now < entry.keep_until)
            .map(|entry| entry.state)
            .unwrap_or_default();
        let verdict = guard::apply(&mut state, op, rules, now);
        match guard::keep_until(&state, rules).filter(|until| now < *until) {
            Some(keep_until) => {
                users.insert(
                    user_key.to_owned(),
                    Entry {
                        user_id: user_id.to_owned(),
                        state,
                        keep_until,
                    },
                );
            }
            None => {
                users.remove(user_key);
            }
        }
        Ok(verdict)
    }

    async fn guarded_users(&self) -> Result<Vec<GuardedUser>, StoreError> {
        let now = self.clock.now();
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let mut guarded: Vec<(Timestamp, GuardedUser)> = users
            .values()
            .filter_map(|entry| {
                guard::current_block(&entry.state, now).map(|_| {
                    (
                        guard::blocked_until(&entry.state, now).unwrap_or(now),
                        GuardedUser {
                            user_id: entry.user_id.clone(),
                            state: entry.state,
                        },
                    )
                })
            })
            .collect();
        guarded.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.user_id.cmp(&b.1.user_id)));
        Ok(guarded.into_iter().map(|(_, user)| user).collect())
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
        let now = self.clock.now();
        self.sweep(now);
        let mut lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        let entries = lists.entry((user_key.to_owned(), list)).or_default();
        for gone in remove {
            entries.remove(gone);
        }
        entries.retain(|_, until| now < *until);
        if max > 0 && entries.len() >= usize::try_from(max).unwrap_or(usize::MAX) {
            let mut live: Vec<(String, Timestamp)> = entries
                .iter()
                .map(|(entry, until)| (entry.clone(), *until))
                .collect();
            live.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
            return Ok(Admission::Full { live });
        }
        entries.insert(entry.to_owned(), live_until);
        Ok(Admission::Admitted)
    }

    async fn remove_entry(
        &self,
        user_key: &str,
        list: BoundedList,
        entry: &str,
    ) -> Result<(), StoreError> {
        let mut lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entries) = lists.get_mut(&(user_key.to_owned(), list)) {
            entries.remove(entry);
            if entries.is_empty() {
                lists.remove(&(user_key.to_owned(), list));
            }
        }
        Ok(())
    }
}
