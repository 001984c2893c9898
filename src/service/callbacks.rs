//! Portal callbacks as a use case: `schedule` queues one callback when a push or OTP transaction
//! with a `callback_uri` has finished (SMS never gets one, as in the reference API), and `run` is
//! the worker that delivers the queue: it claims due jobs under a lease, sends them concurrently
//! (bounded), completes the delivered ones, reschedules retryable failures with exponential
//! backoff (`domain::callback::Backoff`, jittered) and gives a job up when the portal refuses it
//! or after `max_attempts`, with an audit event either way.
//!
//! The queue lives in the store, so callbacks survive a restart (on Redis) and several gateway
//! replicas can run the worker side by side: the lease hands each job to one of them at a time,
//! and a worker that dies mid-send has its jobs re-sent after the lease (at least once).
//!
//! May import: domain, telemetry.

use std::sync::Arc;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinError, JoinSet};

use crate::domain::auth_type::Method;
use crate::domain::callback::{Backoff, CallbackDelivery, CallbackJob, CallbackQueue, Jitter};
use crate::domain::clock::SharedClock;
use crate::domain::ports::StoreError;
use crate::domain::transaction::Transaction;
use crate::telemetry::audit::AuditEvent;
use crate::telemetry::metrics;

/// How the worker paces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackWorkerOptions {
    /// Delivery attempts per job, the first included.
    pub max_attempts: u32,
    /// How long a claimed job stays hidden from other workers; must outlast one send.
    pub lease: Duration,
    /// Sends in flight at once.
    pub concurrency: usize,
    /// How often an idle worker looks for due jobs (a `schedule` on this instance wakes it at
    /// once; jobs scheduled by another replica or due for a retry are seen within this).
    pub poll_interval: Duration,
    pub backoff: Backoff,
    /// Spreads retries over the upper half of each delay; off only in tests that time the gaps.
    pub jitter: bool,
}

impl CallbackWorkerOptions {
    /// The shortest lease; longer when a send may take longer.
    pub const MIN_LEASE: Duration = Duration::from_secs(30);

    /// The defaults for `max_attempts` and a sender whose requests end after `send_timeout`:
    /// the lease is at least twice that, so a slow send is never handed out a second time.
    pub fn new(max_attempts: u32, send_timeout: Duration) -> Self {
        Self {
            max_attempts,
            lease: Self::MIN_LEASE.max(send_timeout.saturating_mul(2)),
            concurrency: 16,
            poll_interval: Duration::from_millis(500),
            backoff: Backoff::DEFAULT,
            jitter: true,
        }
    }
}

/// Schedules and delivers portal callbacks. Cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct CallbackService {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Arc<dyn CallbackQueue>,
    delivery: Arc<dyn CallbackDelivery>,
    clock: SharedClock,
    options: CallbackWorkerOptions,
    /// Wakes an idle worker when a job is scheduled on this instance. `notify_one` keeps a
    /// permit when nobody waits, so a job scheduled mid-round is not missed.
    wake: Notify,
}

impl std::fmt::Debug for CallbackService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackService")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl CallbackService {
    pub fn new(
        queue: Arc<dyn CallbackQueue>,
        delivery: Arc<dyn CallbackDelivery>,
        clock: SharedClock,
        options: CallbackWorkerOptions,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                queue,
                delivery,
                clock,
                options,
                wake: Notify::new(),
            }),
        }
    }

    /// Queues the callback for a transaction that has just reached its final state, when it
    /// has a `callback_uri` and its method (after any fallback) is push or OTP. Due at once; the
    /// worker is woken. Call it once per transaction, after the finishing write succeeded.
    pub async fn schedule(&self, transaction: &Transaction) -> Result<(), StoreError> {
        let Some(uri) = transaction
            .details
            .callback_uri
            .as_deref()
            .filter(|uri| !uri.is_empty())
        else {
            return Ok(());
        };
        if !gets_a_callback(transaction.method) {
            return Ok(());
        }
        let job = CallbackJob::new(transaction.id, uri.to_owned(), self.inner.clock.now());
        self.inner.queue.enqueue(&job).await?;
        tracing::debug!(
            transaction_id = %transaction.id,
            endpoint = %job.endpoint_for_logs(),
            "callback scheduled"
        );
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Callbacks waiting in the queue (due, leased or waiting for a retry).
    pub async fn backlog(&self) -> Result<usize, StoreError> {
        self.inner.queue.len().await
    }

    /// The worker: delivers due callbacks until `shutdown` turns true (or its sender is gone),
    /// then lets the sends in flight finish (each is bounded by the sender's timeout). Runs as
    /// a background service; any number may run against one queue.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let options = &self.inner.options;
        let mut in_flight: JoinSet<()> = JoinSet::new();
        loop {
            while let Some(done) = in_flight.try_join_next() {
                report_panic(done);
            }
            if *shutdown.borrow() {
                break;
            }
            let free = options.concurrency.saturating_sub(in_flight.len());
            let mut maybe_more_due = false;
            if free > 0 {
                let now = self.inner.clock.now();
                match self.inner.queue.claim_due(now, free, options.lease).await {
                    Ok(jobs) => {
                        maybe_more_due = jobs.len() == free;
                        for job in jobs {
                            let this = self.clone();
                            in_flight.spawn(async move { this.attempt(job).await });
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot claim due callbacks; trying again shortly");
                    }
                }
            }
            if maybe_more_due {
                continue;
            }
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = self.inner.wake.notified() => {}
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => report_panic(done),
                () = tokio::time::sleep(options.poll_interval) => {}
            }
        }
        while let Some(done) = in_flight.join_next().await {
            report_panic(done);
        }
    }

    /// One delivery attempt of a claimed job, and what follows from its outcome.
    async fn attempt(&self, job: CallbackJob) {
        let options = &self.inner.options;
        let made = job.attempt.saturating_add(1);
        let endpoint = job.endpoint_for_logs();
        let transaction_id = job.transaction_id.to_string();
        let failure = match self.inner.delivery.deliver(&job).await {
            Ok(()) => {
                metrics::callback_delivered();
                AuditEvent {
                    event: "PUSH_AUTH_CALLBACK_SENT",
                    transaction_id: Some(&transaction_id),
                    detail: Some(&endpoint),
                    ..Default::default()
                }
                .emit();
                self.remove(&job).await;
                return;
            }
            Err(failure) => failure,
        };
        let retry_at = if failure.is_retryable() {
            let now = self.inner.clock.now();
            options
                .backoff
                .next_attempt(made, options.max_attempts, now, self.jitter())
        } else {
            None
        };
        match retry_at {
            Some(due_at) => {
                metrics::callback_retried();
                let retry_in = self.inner.clock.now().until(due_at);
                tracing::warn!(
                    transaction_id = %transaction_id,
                    endpoint = %endpoint,
                    attempt = made,
                    max_attempts = options.max_attempts,
                    retry_in = ?retry_in,
                    error = %failure,
                    "callback failed; retrying"
                );
                if let Err(err) = self.inner.queue.reschedule(&job.id, made, due_at).await {
                    // The lease still holds it: it comes back when the lease ends.
                    tracing::warn!(transaction_id = %transaction_id, error = %err, "cannot reschedule the callback; it is retried when its lease ends");
                }
            }
            None => {
                metrics::callback_failed();
                let detail = if failure.is_retryable() {
                    format!("{endpoint}: gave up after {made} attempts: {failure}")
                } else {
                    format!("{endpoint}: {failure}")
                };
                AuditEvent {
                    event: "PUSH_AUTH_CALLBACK_FAILED",
                    transaction_id: Some(&transaction_id),
                    detail: Some(&detail),
                    ..Default::default()
                }
                .emit();
                self.remove(&job).await;
            }
        }
    }

    /// Takes a finished job out of the queue. Should that fail, the job comes back after its
    /// lease and is sent once more: at least once, never lost.
    async fn remove(&self, job: &CallbackJob) {
        if let Err(err) = self.inner.queue.complete(&job.id).await {
            tracing::warn!(
                transaction_id = %job.transaction_id,
                error = %err,
                "cannot remove the finished callback; it may be sent again after its lease"
            );
        }
    }

    fn jitter(&self) -> Jitter {
        if self.inner.options.jitter {
            let per_mille = OsRng.next_u32() % (u32::from(Jitter::MAX_PER_MILLE) + 1);
            Jitter::per_mille(u16::try_from(per_mille).unwrap_or(Jitter::MAX_PER_MILLE))
        } else {
            Jitter::NONE
        }
    }
}

/// Push and OTP transactions call their portal back; SMS ones do not (the reference API's rule).
fn gets_a_callback(method: Method) -> bool {
    method.is_push() || method == Method::Otp
}

fn report_panic(done: Result<(), JoinError>) {
    if let Err(err) = done
        && err.is_panic()
    {
        tracing::error!(error = %err, "a callback delivery panicked; the job is retried when its lease ends");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::domain::callback::CallbackError;
    use crate::domain::clock::{Clock, ManualClock, Timestamp};
    use crate::domain::transaction::{Details, Status, TransactionId};
    use crate::store::callbacks::MemoryCallbackQueue;

    /// Answers from a script and records what it was asked to deliver.
    #[derive(Default)]
    struct ScriptedDelivery {
        answers: Mutex<VecDeque<Result<(), CallbackError>>>,
        delivered: Mutex<Vec<(String, u32)>>,
    }

    #[async_trait]
    impl CallbackDelivery for ScriptedDelivery {
        async fn deliver(&self, job: &CallbackJob) -> Result<(), CallbackError> {
            self.delivered
                .lock()
                .unwrap()
                .push((job.callback_uri.clone(), job.attempt));
            self.answers.lock().unwrap().pop_front().unwrap_or(Ok(()))
        }
    }

    fn transaction(method: Method, callback_uri: Option<&str>) -> Transaction {
        Transaction {
            id: TransactionId::random(),
            auth_type: "t".into(),
            method,
            user_id: Some("u".into()),
            status: Status::Approved,
            created_at: Timestamp(0),
            expires_at: Timestamp(1),
            finished_at: Some(Timestamp(1)),
            attempts: 0,
            max_attempts: 0,
            resends: 0,
            max_resends: 0,
            code_hash: None,
            reason: None,
            evidence: None,
            details: Details {
                callback_uri: callback_uri.map(str::to_owned),
                ..Details::default()
            },
        }
    }

    struct Fixture {
        service: CallbackService,
        queue: Arc<MemoryCallbackQueue>,
        delivery: Arc<ScriptedDelivery>,
        clock: Arc<ManualClock>,
    }

    fn fixture(answers: Vec<Result<(), CallbackError>>, max_attempts: u32) -> Fixture {
        let queue = Arc::new(MemoryCallbackQueue::new());
        let delivery = Arc::new(ScriptedDelivery {
            answers: Mutex::new(answers.into()),
            ..ScriptedDelivery::default()
        });
        let clock = Arc::new(ManualClock::new(Timestamp(1_000_000)));
        let options = CallbackWorkerOptions {
            jitter: false,
            ..CallbackWorkerOptions::new(max_attempts, Duration::from_secs(1))
        };
        let service = CallbackService::new(queue.clone(), delivery.clone(), clock.clone(), options);
        Fixture {
            service,
            queue,
            delivery,
            clock,
        }
    }

    impl Fixture {
        /// Claims what is due and runs each attempt to its end, as one worker round does.
        async fn round(&self) -> usize {
            let jobs = self
                .queue
                .claim_due(self.clock.now(), 16, Duration::from_secs(30))
                .await
                .unwrap();
            let count = jobs.len();
            for job in jobs {
                self.service.attempt(job).await;
            }
            count
        }
    }

    fn unavailable() -> Result<(), CallbackError> {
        Err(CallbackError::Retryable("HTTP 500".into()))
    }

    #[tokio::test]
    async fn only_push_and_otp_with_a_callback_uri_are_scheduled() {
        let f = fixture(vec![], 10);
        for method in Method::ALL {
            f.service
                .schedule(&transaction(method, Some("https://portal.example/cb")))
                .await
                .unwrap();
        }
        f.service
            .schedule(&transaction(Method::Push, None))
            .await
            .unwrap();
        f.service
            .schedule(&transaction(Method::Otp, Some("")))
            .await
            .unwrap();
        assert_eq!(
            f.service.backlog().await.unwrap(),
            5,
            "4 push methods + otp"
        );
    }

    #[tokio::test]
    async fn retries_back_off_and_then_deliver() {
        let f = fixture(vec![unavailable(), unavailable()], 10);
        f.service
            .schedule(&transaction(
                Method::Push,
                Some("https://portal.example/cb"),
            ))
            .await
            .unwrap();
        assert_eq!(f.round().await, 1);
        f.clock.advance(Duration::from_millis(999));
        assert_eq!(f.round().await, 0, "first retry 1 s later");
        f.clock.advance(Duration::from_millis(1));
        assert_eq!(f.round().await, 1);
        f.clock.advance(Duration::from_millis(1_999));
        assert_eq!(f.round().await, 0, "second retry 2 s later");
        f.clock.advance(Duration::from_millis(1));
        assert_eq!(f.round().await, 1);
        assert_eq!(
            f.service.backlog().await.unwrap(),
            0,
            "delivered and removed"
        );
        let attempts: Vec<u32> = f
            .delivery
            .delivered
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.1)
            .collect();
        assert_eq!(attempts, [0, 1, 2]);
    }

    #[tokio::test]
    async fn a_rejection_is_not_retried() {
        let f = fixture(vec![Err(CallbackError::Rejected("HTTP 400".into()))], 10);
        f.service
            .schedule(&transaction(Method::Otp, Some("https://portal.example/cb")))
            .await
            .unwrap();
        assert_eq!(f.round().await, 1);
        assert_eq!(f.service.backlog().await.unwrap(), 0);
        f.clock.advance(Duration::from_secs(600));
        assert_eq!(f.round().await, 0);
    }

    #[tokio::test]
    async fn a_job_is_given_up_after_max_attempts() {
        let f = fixture(vec![unavailable(), unavailable(), unavailable()], 3);
        f.service
            .schedule(&transaction(
                Method::PushWithPin,
                Some("https://portal.example/cb"),
            ))
            .await
            .unwrap();
        for _ in 0..3 {
            assert_eq!(f.round().await, 1);
            f.clock.advance(Duration::from_secs(300));
        }
        assert_eq!(f.service.backlog().await.unwrap(), 0, "given up after 3");
        assert_eq!(f.delivery.delivered.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn the_worker_delivers_when_woken_and_stops_on_shutdown() {
        let f = fixture(vec![], 10);
        let (stop, shutdown) = watch::channel(false);
        let worker = tokio::spawn({
            let service = f.service.clone();
            async move { service.run(shutdown).await }
        });
        f.service
            .schedule(&transaction(
                Method::Push,
                Some("https://portal.example/cb"),
            ))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while f.service.backlog().await.unwrap() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("delivered");
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), worker)
            .await
            .expect("the worker stops")
            .unwrap();
    }

    #[test]
    fn the_lease_outlasts_a_slow_send() {
        assert_eq!(
            CallbackWorkerOptions::new(10, Duration::from_secs(10)).lease,
            Duration::from_secs(30)
        );
        assert_eq!(
            CallbackWorkerOptions::new(10, Duration::from_secs(60)).lease,
            Duration::from_secs(120)
        );
    }
}
