//! The embedded callback queue: jobs in a `HashMap` and a due-time index in a `BTreeSet`, both
//! behind one std `Mutex`, so each port method is one critical section (never held across an
//! `.await`). Lost on restart: only Redis makes callbacks durable.
//!
//! May import: domain.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::callback::{CallbackJob, CallbackQueue};
use crate::domain::clock::Timestamp;
use crate::domain::ports::StoreError;

/// The embedded queue. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct MemoryCallbackQueue {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Job id -> job; `due_at` is the current due time.
    jobs: HashMap<String, CallbackJob>,
    /// `(due_at, id)` of every job, earliest first.
    due: BTreeSet<(Timestamp, String)>,
}

impl fmt::Debug for MemoryCallbackQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCallbackQueue")
            .field("jobs", &self.lock().jobs.len())
            .finish()
    }
}

impl MemoryCallbackQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// The state; a panic elsewhere while holding the lock leaves consistent data (each change
    /// is applied in full before the guard drops), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn remove(&mut self, id: &str) -> Option<CallbackJob> {
        let job = self.jobs.remove(id)?;
        self.due.remove(&(job.due_at, job.id.clone()));
        Some(job)
    }

    fn insert(&mut self, job: CallbackJob) {
        self.due.insert((job.due_at, job.id.clone()));
        self.jobs.insert(job.id.clone(), job);
    }
}

#[async_trait]
impl CallbackQueue for MemoryCallbackQueue {
    async fn enqueue(&self, job: &CallbackJob) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.remove(&job.id);
        state.insert(job.clone());
        Ok(())
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<CallbackJob>, StoreError> {
        let mut state = self.lock();
        let due: Vec<String> = state
            .due
            .iter()
            .take_while(|(due_at, _)| *due_at <= now)
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect();
        let leased_until = now.plus(lease);
        let mut claimed = Vec::with_capacity(due.len());
        for id in due {
            if let Some(mut job) = state.remove(&id) {
                job.due_at = leased_until;
                claimed.push(job.clone());
                state.insert(job);
            }
        }
        Ok(claimed)
    }

    async fn complete(&self, id: &str) -> Result<(), StoreError> {
        self.lock().remove(id);
        Ok(())
    }

    async fn reschedule(
        &self,
        id: &str,
        attempt: u32,
        due_at: Timestamp,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        if let Some(mut job) = state.remove(id) {
            job.attempt = attempt;
            job.due_at = due_at;
            state.insert(job);
        }
        Ok(())
    }

    async fn len(&self) -> Result<usize, StoreError> {
        Ok(self.lock().jobs.len())
    }
}
