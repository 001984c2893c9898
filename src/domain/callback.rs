//! Portal callbacks: the job that says "tell this portal that this transaction ended", the pure
//! retry schedule (exponential backoff, capped, with caller-supplied jitter), and the two ports
//! the callback worker needs: a durable queue (`CallbackQueue`, in the store) and a delivery
//! (`CallbackDelivery`, the HTTP sender in `notify`).
//!
//! The queue is at-least-once: a claimed job is leased, not removed, so a worker that dies while
//! sending has its jobs handed out again once the lease runs out. A portal may therefore see the
//! same callback twice; the callback carries no result, only the transaction id to fetch it by.
//!
//! May import: nothing else in this crate besides the domain.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::clock::Timestamp;
use super::ports::StoreError;
use super::transaction::TransactionId;

/// One callback to deliver.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackJob {
    /// A random (v4) UUID naming the job in the queue.
    pub id: String,
    pub transaction_id: TransactionId,
    /// The URL the portal gave at init, exactly as given.
    pub callback_uri: String,
    /// Delivery attempts already made (0 for a new job).
    pub attempt: u32,
    /// When the job is next due. For a job handed out by `claim_due`, the end of its lease.
    pub due_at: Timestamp,
}

impl CallbackJob {
    /// A new job for `transaction_id`, due at `now`.
    pub fn new(transaction_id: TransactionId, callback_uri: String, now: Timestamp) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            transaction_id,
            callback_uri,
            attempt: 0,
            due_at: now,
        }
    }

    /// The callback URL as it may be logged: `scheme://host[:port]/path`, without credentials,
    /// query or fragment (a portal may put a token in its query).
    pub fn endpoint_for_logs(&self) -> String {
        endpoint_for_logs(&self.callback_uri)
    }
}

impl fmt::Debug for CallbackJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackJob")
            .field("id", &self.id)
            .field("transaction_id", &self.transaction_id)
            .field("callback_uri", &self.endpoint_for_logs())
            .field("attempt", &self.attempt)
            .field("due_at", &self.due_at)
            .finish()
    }
}

/// Whether a callback may not reach `ip` unless an operator allowed it: loopback, private
/// (RFC 1918, IPv6 unique local), link-local (cloud metadata lives there), shared address space
/// (RFC 6598), "this network", unspecified, multicast and broadcast addresses, in IPv4 or
/// IPv4-mapped IPv6 form. A portal is a public service or a configured endpoint; anything else
/// is how a caller of the API would make stepgate reach what only it can reach.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => internal_v4(v4),
            None => internal_v6(v6),
        },
    }
}

/// Whether a callback that is not a configured endpoint may not reach `ip`: it is internal
/// (`is_internal`) and no network of `allowed` (`callbacks.allowed_networks`) holds it. An
/// IPv4-mapped address is judged, and matched against `allowed`, as its IPv4 address.
pub fn is_refused(ip: IpAddr, allowed: &[IpNet]) -> bool {
    let ip = super::address::unmapped(ip);
    is_internal(ip) && !allowed.iter().any(|net| net.contains(&ip))
}

/// The address a URL names literally (`http://10.0.0.1/`, `http://[::1]/`); `None` for a name.
pub fn literal_address(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
    || ip.is_private()
    || ip.is_link_local()
    || ip.is_unspecified()
    || ip.is_multicast()
    || ip.is_broadcast()
    || a == 0
    // 100.64.0.0/10, carrier-grade NAT: inside someone's network.
    || (a == 100 && (64..128).contains(&b))
    // 192.0.0.0/24, IETF protocol assignments.
    || (a == 192 && b == 0 && ip.octets()[2] == 0)
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
    || ip.is_unspecified()
    || ip.is_multicast()
    // fc00::/7 unique local, fe80::/10 link-local.
    || (first & 0xfe00) == 0xfc00
    || (first & 0xffc0) == 0xfe80
    // ::/96 IPv4-compatible (deprecated) addresses of internal IPv4 ones.
    || (ip.segments()[..6] == [0; 6] && internal_v4(Ipv4Addr::from_bits(ip.to_bits() as u32)))
}

/// `scheme://host[:port]/path` of `uri`, or a placeholder when it is not a URL.
pub fn endpoint_for_logs(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(url) => {
            let host = url.host_str().unwrap_or("");
            match url.port() {
                Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
                None => format!("{}://{host}{}", url.scheme(), url.path()),
            }
        }
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// How much earlier than the plain backoff a retry may come: `Jitter::NONE` keeps the schedule
/// exact (tests); a random `Jitter::per_mille(0..=1000)` from the caller spreads retries of many
/// jobs that failed together (a portal outage) over the upper half of each delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Jitter(u16);

impl Jitter {
    pub const NONE: Jitter = Jitter(0);
    pub const MAX_PER_MILLE: u16 = 1000;

    /// `value` thousandths of the largest jitter (half the delay); values above 1000 count as 1000.
    pub fn per_mille(value: u16) -> Self {
        Self(value.min(Self::MAX_PER_MILLE))
    }

    fn apply(self, delay: Duration) -> Duration {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let earlier = millis / 2 * u64::from(self.0) / u64::from(Self::MAX_PER_MILLE);
        Duration::from_millis(millis - earlier)
    }
}

/// The retry schedule: the first retry `first` after the first failure, each next one twice as
/// long after, never longer than `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// 1 s, 2 s, 4 s, ... up to 5 minutes.
    pub const DEFAULT: Backoff = Backoff {
        first: Duration::from_secs(1),
        cap: Duration::from_secs(300),
    };

    /// The wait after the `attempts_made`-th failed attempt (1-based), without jitter.
    pub fn delay(&self, attempts_made: u32) -> Duration {
        let doublings = attempts_made.saturating_sub(1).min(31);
        self.first
            .checked_mul(1u32 << doublings)
            .map_or(self.cap, |delay| delay.min(self.cap))
    }

    /// When to try again after `attempts_made` failed attempts, or `None` when `max_attempts`
    /// have been made and the job is given up.
    pub fn next_attempt(
        &self,
        attempts_made: u32,
        max_attempts: u32,
        now: Timestamp,
        jitter: Jitter,
    ) -> Option<Timestamp> {
        if attempts_made >= max_attempts {
            return None;
        }
        Some(now.plus(jitter.apply(self.delay(attempts_made))))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `Backoff::DEFAULT` without jitter: when to try again after `attempts_made` failed attempts,
/// or `None` once `max_attempts` have been made.
pub fn next_attempt(attempts_made: u32, max_attempts: u32, now: Timestamp) -> Option<Timestamp> {
    Backoff::DEFAULT.next_attempt(attempts_made, max_attempts, now, Jitter::NONE)
}

/// The durable queue of callback jobs (in the store, so a restart loses none). Every method is
/// one atomic step; jobs are ordered by `due_at`.
#[async_trait]
pub trait CallbackQueue: Send + Sync {
    /// Adds `job`, due at `job.due_at`. A job with the same id is replaced.
    async fn enqueue(&self, job: &CallbackJob) -> Result<(), StoreError>;

    /// Hands out up to `limit` jobs due at `now` (earliest first) and, in the same step, moves
    /// their due time to `now + lease`: two workers never get the same job at once, and a job
    /// whose worker died is handed out again after the lease. The returned jobs carry that new
    /// due time.
    async fn claim_due(
        &self,
        now: Timestamp,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<CallbackJob>, StoreError>;

    /// Removes the job (delivered, or given up). Removing a missing job is not an error.
    async fn complete(&self, id: &str) -> Result<(), StoreError>;

    /// Records `attempt` attempts made and makes the job due at `due_at`. A job that no longer
    /// exists (completed by another worker) stays gone.
    async fn reschedule(&self, id: &str, attempt: u32, due_at: Timestamp)
    -> Result<(), StoreError>;

    /// Jobs in the queue, due or not.
    async fn len(&self) -> Result<usize, StoreError>;

    /// Whether the queue holds no job at all.
    async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len().await? == 0)
    }
}

/// Why one delivery failed, which decides whether the job is tried again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// A timeout, a connection failure, a 5xx or a 429: the portal may accept it later.
    #[error("portal unavailable: {0}")]
    Retryable(String),
    /// The portal refused it (another 4xx), or the URL cannot be called: trying again would not help.
    #[error("callback rejected: {0}")]
    Rejected(String),
}

impl CallbackError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, CallbackError::Retryable(_))
    }
}

/// Delivers one callback to its portal (the HTTP sender in `notify::callback`).
#[async_trait]
pub trait CallbackDelivery: Send + Sync {
    async fn deliver(&self, job: &CallbackJob) -> Result<(), CallbackError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_000_000);

    #[test]
    fn internal_addresses_are_told_apart_from_public_ones() {
        let internal = [
            "127.0.0.1",
            "127.8.9.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "192.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
        ];
        for text in internal {
            assert!(is_internal(text.parse().unwrap()), "{text}");
        }
        let public = [
            "8.8.8.8",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "192.0.2.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ];
        for text in public {
            assert!(!is_internal(text.parse().unwrap()), "{text}");
        }
    }

    #[test]
    fn an_allowed_network_lets_its_internal_addresses_through_in_either_form() {
        let allowed: Vec<IpNet> = vec!["10.20.0.0/16".parse().unwrap()];
        for text in ["10.20.1.2", "::ffff:10.20.1.2"] {
            assert!(!is_refused(text.parse().unwrap(), &allowed), "{text}");
        }
        for text in ["10.21.0.1", "::ffff:127.0.0.1", "169.254.169.254"] {
            assert!(is_refused(text.parse().unwrap(), &allowed), "{text}");
        }
        assert!(!is_refused("8.8.8.8".parse().unwrap(), &[]));
        let url = |text: &str| url::Url::parse(text).unwrap();
        assert_eq!(
            literal_address(&url("http://[::1]:9/cb")),
            Some("::1".parse().unwrap())
        );
        assert_eq!(
            literal_address(&url("http://10.0.0.1/cb")),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(literal_address(&url("http://portal.example/cb")), None);
    }

    fn secs_after_now(at: Option<Timestamp>) -> Option<f64> {
        at.map(|at| NOW.until(at).as_secs_f64())
    }

    #[test]
    fn the_schedule_doubles_from_one_second() {
        let gaps: Vec<_> = (1..=6)
            .map(|made| secs_after_now(next_attempt(made, 10, NOW)))
            .collect();
        assert_eq!(
            gaps,
            [1.0, 2.0, 4.0, 8.0, 16.0, 32.0].map(Some).to_vec(),
            "1 s after the first failure, then doubling"
        );
    }

    #[test]
    fn the_schedule_is_capped_at_five_minutes() {
        assert_eq!(secs_after_now(next_attempt(9, 100, NOW)), Some(256.0));
        assert_eq!(secs_after_now(next_attempt(10, 100, NOW)), Some(300.0));
        assert_eq!(secs_after_now(next_attempt(60, 100, NOW)), Some(300.0));
        // No overflow however many attempts were made.
        assert_eq!(
            Backoff::DEFAULT.delay(u32::MAX),
            Duration::from_secs(300),
            "saturates at the cap"
        );
    }

    #[test]
    fn the_job_is_given_up_after_max_attempts() {
        assert!(next_attempt(9, 10, NOW).is_some());
        assert_eq!(next_attempt(10, 10, NOW), None);
        assert_eq!(next_attempt(11, 10, NOW), None);
        assert_eq!(next_attempt(1, 1, NOW), None, "one attempt means no retry");
    }

    #[test]
    fn jitter_only_brings_a_retry_forward_by_up_to_half_the_delay() {
        let backoff = Backoff::DEFAULT;
        let at = |made, jitter| secs_after_now(backoff.next_attempt(made, 10, NOW, jitter));
        assert_eq!(at(3, Jitter::NONE), Some(4.0));
        assert_eq!(at(3, Jitter::per_mille(500)), Some(3.0));
        assert_eq!(at(3, Jitter::per_mille(1000)), Some(2.0));
        assert_eq!(at(3, Jitter::per_mille(u16::MAX)), Some(2.0), "clamped");
        assert_eq!(
            secs_after_now(backoff.next_attempt(20, 30, NOW, Jitter::per_mille(1000))),
            Some(150.0),
            "jitter applies below the cap too"
        );
    }

    #[test]
    fn a_custom_backoff_follows_the_same_shape() {
        let backoff = Backoff {
            first: Duration::from_millis(100),
            cap: Duration::from_millis(350),
        };
        let delays: Vec<_> = (1..=4).map(|made| backoff.delay(made)).collect();
        assert_eq!(
            delays,
            [100, 200, 350, 350].map(Duration::from_millis).to_vec()
        );
    }

    #[test]
    fn logs_see_no_credentials_query_or_fragment() {
        assert_eq!(
            endpoint_for_logs("https://user:pw@portal.example:8443/cb/done?token=s3cret#x"),
            "https://portal.example:8443/cb/done"
        );
        assert_eq!(
            endpoint_for_logs("http://portal.example/cb"),
            "http://portal.example/cb"
        );
        assert_eq!(endpoint_for_logs("not a url ?token=s3cret"), "<not a URL>");
        let job = CallbackJob::new(
            TransactionId::random(),
            "https://portal.example/cb?token=s3cret".into(),
            NOW,
        );
        let shown = format!("{job:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(job.attempt, 0);
        assert_eq!(job.due_at, NOW);
    }
}
