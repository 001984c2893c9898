//! The account guard: the rules that hold for one user across transactions and methods.
//!
//! - **Failure lock** (PSD2 RTS Art. 4(3)(b), NIST SP 800-63B-4 §3.2.2): consecutive failed
//!   authentications (wrong SMS codes, wrong PINs, wrong numbers) are counted per user; a new
//!   code or a new transaction does not reset the count, only a success does (or a quiet period,
//!   `forget_after`). At `max_failures` the account is locked for `lock_for`: nothing starts and
//!   nothing is checked until the lock runs out or an admin lifts it. An attempt is counted
//!   *before* it is checked (`BeginAttempt`) and settled after (`Failure`, `Success`, or
//!   `Refund` when it turned out not to be an attempt), so answers arriving together cannot
//!   check more than `max_failures` codes across all of the user's transactions.
//! - **Push fatigue** (NIST SP 800-63B-4 §3.1.3.1): pushes since the last success are counted;
//!   beyond `max_pushes` each further push waits a backoff that doubles per push.
//! - **"This wasn't me"**: a phone's report blocks push step-ups for the user for
//!   `report_block`.
//!
//! Each rule is a pure function over an `AccountState` and the current time; the memory store
//! applies them under its lock, the Redis store's `guard.lua` implements the same rules, and the
//! store conformance suite holds both to identical outcomes.

use std::time::Duration;

use super::clock::Timestamp;

/// The configured limits. A zero `max_failures` or `max_pushes` turns that rule off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardRules {
    pub max_failures: u32,
    pub lock_for: Duration,
    /// A failure count that has seen no new failure for this long starts again from zero.
    pub forget_after: Duration,
    pub max_pushes: u32,
    /// The wait after the first push beyond `max_pushes`; it doubles with every further push.
    pub push_backoff: Duration,
    pub max_push_backoff: Duration,
    pub report_block: Duration,
    /// Step-ups (SMS, push) one user may have pending at once; 0 = unbounded.
    pub max_pending_step_ups: u32,
    /// Requests the proxy may hold for one user at once; 0 = unbounded.
    pub max_held_requests: u32,
}

impl Default for GuardRules {
    /// PSD2's five consecutive failures, a 30-minute lock, a day to forget; five pushes without
    /// a success, then a minute's wait doubling up to an hour; a report blocks push for a day.
    fn default() -> Self {
        Self {
            max_failures: 5,
            lock_for: Duration::from_secs(30 * 60),
            forget_after: Duration::from_secs(24 * 3600),
            max_pushes: 5,
            push_backoff: Duration::from_secs(60),
            max_push_backoff: Duration::from_secs(3600),
            report_block: Duration::from_secs(24 * 3600),
            max_pending_step_ups: 10,
            max_held_requests: 5,
        }
    }
}

/// What the guard remembers of one user. All-default means "nothing to remember".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountState {
    /// Consecutive failures since the last success (or since they were forgotten).
    pub failures: u32,
    pub last_failure_at: Option<Timestamp>,
    pub locked_until: Option<Timestamp>,
    /// Pushes sent since the last success.
    pub pushes: u32,
    pub last_push_at: Option<Timestamp>,
    /// Set by a "this wasn't me" report.
    pub push_blocked_until: Option<Timestamp>,
    /// Attempts begun and not yet settled; they take their share of the failure limit.
    pub in_flight: u32,
    /// When attempts in flight are presumed lost (a gate that died between begin and settle).
    pub in_flight_until: Option<Timestamp>,
}

/// Why a start is refused, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Too many consecutive failures: nothing may start or be checked.
    Locked { until: Timestamp },
    /// The user reported a push they did not ask for: no push until then.
    PushReported { until: Timestamp },
    /// Too many pushes without a success: the next push waits until then.
    PushFatigue { until: Timestamp },
    /// The attempts in flight already take what is left of the failure limit: this one is not
    /// checked; retry once they have settled (a moment).
    Busy { until: Timestamp },
    /// The user has `max_pending_step_ups` step-ups pending: the soonest ends then.
    TooManyPending { until: Timestamp },
    /// The proxy holds `max_held_requests` requests of the user: the soonest is let go then.
    TooManyHeld { until: Timestamp },
}

impl Block {
    pub fn until(self) -> Timestamp {
        match self {
            Block::Locked { until }
            | Block::PushReported { until }
            | Block::PushFatigue { until }
            | Block::Busy { until }
            | Block::TooManyPending { until }
            | Block::TooManyHeld { until } => until,
        }
    }

    /// A fixed name for metrics, audit and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Block::Locked { .. } => "locked",
            Block::PushReported { .. } => "push_reported",
            Block::PushFatigue { .. } => "push_fatigue",
            Block::Busy { .. } => "busy",
            Block::TooManyPending { .. } => "too_many_pending",
            Block::TooManyHeld { .. } => "too_many_held",
        }
    }
}

/// One step of the guard, applied atomically to one user's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardOp {
    /// May a step-up start, or an approval stand, for the user (not locked)? Changes nothing.
    Check,
    /// May a push go out? When it may, it is counted.
    AdmitPush,
    /// An authentication attempt is about to be checked: counted now, refused when the
    /// account is locked or the attempts in flight already take the limit.
    BeginAttempt,
    /// A begun attempt failed: at the limit the account is locked.
    Failure,
    /// A successful authentication: the failure and push counts start again.
    Success,
    /// A begun attempt turned out not to be one (unknown or ended transaction): uncounted.
    Refund,
    /// "This wasn't me": push is blocked for `report_block`.
    Report,
    /// An admin lifts every lock and block and clears the counts.
    Unlock,
}

impl GuardOp {
    /// The name the Redis script knows the step by.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardOp::Check => "check",
            GuardOp::AdmitPush => "admit_push",
            GuardOp::BeginAttempt => "begin",
            GuardOp::Failure => "failure",
            GuardOp::Success => "success",
            GuardOp::Refund => "refund",
            GuardOp::Report => "report",
            GuardOp::Unlock => "unlock",
        }
    }
}

/// What a step came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardVerdict {
    /// Allowed (`Check`, `AdmitPush`, `BeginAttempt`), or recorded (`Success`, `Refund`,
    /// `Unlock`).
    Clear,
    /// Refused (`Check`, `AdmitPush`), or a failure while already locked (not counted).
    Blocked(Block),
    /// A failure counted; `failures` so far, the account still open.
    Counted { failures: u32 },
    /// This failure locked the account.
    LockedNow { until: Timestamp },
    /// A report recorded: push blocked until then.
    Reported { until: Timestamp },
}

/// How soon an attempt refused as `Busy` may try again.
pub const BUSY_RETRY: Duration = Duration::from_secs(1);

/// How long a begun attempt may stay unsettled before it no longer holds its share of the limit
/// (longer than any check takes; only a gate dying mid-check leaves one behind).
pub const IN_FLIGHT_TTL: Duration = Duration::from_secs(60);

fn active(until: Option<Timestamp>, now: Timestamp) -> Option<Timestamp> {
    until.filter(|until| now < *until)
}

/// The wait before the next push, once `pushes` have gone out since the last success.
fn push_wait(pushes: u32, rules: &GuardRules) -> Duration {
    let beyond = pushes.saturating_sub(rules.max_pushes).min(31);
    rules
        .push_backoff
        .saturating_mul(1u32 << beyond)
        .min(rules.max_push_backoff)
}

/// Applies `op` to `state` at `now`.
pub fn apply(
    state: &mut AccountState,
    op: GuardOp,
    rules: &GuardRules,
    now: Timestamp,
) -> GuardVerdict {
    let locked = active(state.locked_until, now).map(|until| Block::Locked { until });
    match op {
        GuardOp::Check => locked.map_or(GuardVerdict::Clear, GuardVerdict::Blocked),
        GuardOp::AdmitPush => {
            if let Some(block) = locked {
                return GuardVerdict::Blocked(block);
            }
            if let Some(until) = active(state.push_blocked_until, now) {
                return GuardVerdict::Blocked(Block::PushReported { until });
            }
            if rules.max_pushes > 0
                && state.pushes >= rules.max_pushes
                && let Some(last) = state.last_push_at
            {
                let until = last.plus(push_wait(state.pushes, rules));
                if now < until {
                    return GuardVerdict::Blocked(Block::PushFatigue { until });
                }
            }
            state.pushes = state.pushes.saturating_add(1);
            state.last_push_at = Some(now);
            GuardVerdict::Clear
        }
        GuardOp::BeginAttempt => {
            if let Some(block) = locked {
                return GuardVerdict::Blocked(block);
            }
            if state
                .last_failure_at
                .is_some_and(|last| now >= last.plus(rules.forget_after))
            {
                state.failures = 0;
            }
            if state.in_flight_until.is_some_and(|until| now >= until) {
                state.in_flight = 0;
            }
            if rules.max_failures > 0
                && state.failures.saturating_add(state.in_flight) >= rules.max_failures
            {
                // The attempts in flight take the limit; the lock follows if they fail.
                return GuardVerdict::Blocked(Block::Busy {
                    until: now.plus(BUSY_RETRY),
                });
            }
            state.in_flight = state.in_flight.saturating_add(1);
            state.in_flight_until = Some(now.plus(IN_FLIGHT_TTL));
            GuardVerdict::Clear
        }
        GuardOp::Failure => {
            state.in_flight = state.in_flight.saturating_sub(1);
            if let Some(block) = locked {
                return GuardVerdict::Blocked(block);
            }
            if state
                .last_failure_at
                .is_some_and(|last| now >= last.plus(rules.forget_after))
            {
                state.failures = 0;
            }
            state.failures = state.failures.saturating_add(1);
            state.last_failure_at = Some(now);
            if rules.max_failures > 0 && state.failures >= rules.max_failures {
                let until = now.plus(rules.lock_for);
                state.locked_until = Some(until);
                state.failures = 0;
                state.last_failure_at = None;
                GuardVerdict::LockedNow { until }
            } else {
                GuardVerdict::Counted {
                    failures: state.failures,
                }
            }
        }
        GuardOp::Success => {
            state.in_flight = state.in_flight.saturating_sub(1);
            state.failures = 0;
            state.last_failure_at = None;
            state.pushes = 0;
            state.last_push_at = None;
            GuardVerdict::Clear
        }
        GuardOp::Refund => {
            state.in_flight = state.in_flight.saturating_sub(1);
            GuardVerdict::Clear
        }
        GuardOp::Report => {
            let until = now.plus(rules.report_block);
            state.push_blocked_until = Some(until);
            GuardVerdict::Reported { until }
        }
        GuardOp::Unlock => {
            *state = AccountState::default();
            GuardVerdict::Clear
        }
    }
}

/// When the state stops mattering: after this it may be forgotten (the store's TTL). `None`
/// when it already holds nothing worth keeping.
pub fn keep_until(state: &AccountState, rules: &GuardRules) -> Option<Timestamp> {
    [
        state.last_failure_at.map(|at| at.plus(rules.forget_after)),
        state.locked_until,
        state
            .last_push_at
            .map(|at| at.plus(push_wait(state.pushes, rules).max(rules.forget_after))),
        state.push_blocked_until,
        state.in_flight_until.filter(|_| state.in_flight > 0),
    ]
    .into_iter()
    .flatten()
    .max()
}

/// The block in force at `now` for listing (a failure lock first), if any.
pub fn current_block(state: &AccountState, now: Timestamp) -> Option<Block> {
    active(state.locked_until, now)
        .map(|until| Block::Locked { until })
        .or_else(|| {
            active(state.push_blocked_until, now).map(|until| Block::PushReported { until })
        })
}

/// When the last block in force at `now` ends (the admin list's order), if any.
pub fn blocked_until(state: &AccountState, now: Timestamp) -> Option<Timestamp> {
    active(state.locked_until, now).max(active(state.push_blocked_until, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: GuardRules = GuardRules {
        max_failures: 3,
        lock_for: Duration::from_secs(600),
        forget_after: Duration::from_secs(3600),
        max_pushes: 2,
        push_backoff: Duration::from_secs(10),
        max_push_backoff: Duration::from_secs(40),
        report_block: Duration::from_secs(900),
        max_pending_step_ups: 0,
        max_held_requests: 0,
    };

    fn at(seconds: u64) -> Timestamp {
        Timestamp(seconds * 1000)
    }

    /// One wrong answer: begun, then settled as a failure.
    fn fail(state: &mut AccountState, rules: &GuardRules, now: Timestamp) -> GuardVerdict {
        match apply(state, GuardOp::BeginAttempt, rules, now) {
            GuardVerdict::Clear => apply(state, GuardOp::Failure, rules, now),
            refused => refused,
        }
    }

    #[test]
    fn consecutive_failures_lock_and_only_time_or_unlock_open_it() {
        let mut state = AccountState::default();
        assert_eq!(
            fail(&mut state, &RULES, at(1)),
            GuardVerdict::Counted { failures: 1 }
        );
        assert_eq!(
            fail(&mut state, &RULES, at(2)),
            GuardVerdict::Counted { failures: 2 }
        );
        assert_eq!(
            fail(&mut state, &RULES, at(3)),
            GuardVerdict::LockedNow { until: at(603) }
        );
        let locked = GuardVerdict::Blocked(Block::Locked { until: at(603) });
        assert_eq!(apply(&mut state, GuardOp::Check, &RULES, at(4)), locked);
        assert_eq!(apply(&mut state, GuardOp::AdmitPush, &RULES, at(4)), locked);
        assert_eq!(fail(&mut state, &RULES, at(5)), locked);
        assert_eq!(
            apply(&mut state, GuardOp::Success, &RULES, at(6)),
            GuardVerdict::Clear
        );
        assert_eq!(
            apply(&mut state, GuardOp::Check, &RULES, at(7)),
            locked,
            "a success does not lift a lock"
        );
        assert_eq!(
            apply(&mut state, GuardOp::Check, &RULES, at(603)),
            GuardVerdict::Clear
        );
        let mut admin = state;
        fail(&mut admin, &RULES, at(700));
        fail(&mut admin, &RULES, at(701));
        fail(&mut admin, &RULES, at(702));
        assert_eq!(
            apply(&mut admin, GuardOp::Unlock, &RULES, at(703)),
            GuardVerdict::Clear
        );
        assert_eq!(
            apply(&mut admin, GuardOp::Check, &RULES, at(703)),
            GuardVerdict::Clear
        );
    }

    #[test]
    fn a_success_resets_the_count_and_a_quiet_hour_forgets_it() {
        let mut state = AccountState::default();
        fail(&mut state, &RULES, at(1));
        fail(&mut state, &RULES, at(2));
        apply(&mut state, GuardOp::Success, &RULES, at(3));
        assert_eq!(
            fail(&mut state, &RULES, at(4)),
            GuardVerdict::Counted { failures: 1 }
        );
        fail(&mut state, &RULES, at(5));
        assert_eq!(
            fail(&mut state, &RULES, at(5 + 3600)),
            GuardVerdict::Counted { failures: 1 }
        );
    }

    #[test]
    fn pushes_beyond_the_cap_wait_a_doubling_backoff_until_a_success() {
        let mut state = AccountState::default();
        for second in [1, 2] {
            assert_eq!(
                apply(&mut state, GuardOp::AdmitPush, &RULES, at(second)),
                GuardVerdict::Clear
            );
        }
        let fatigue = |until| GuardVerdict::Blocked(Block::PushFatigue { until });
        assert_eq!(
            apply(&mut state, GuardOp::AdmitPush, &RULES, at(3)),
            fatigue(at(12))
        );
        assert_eq!(
            apply(&mut state, GuardOp::AdmitPush, &RULES, at(12)),
            GuardVerdict::Clear
        );
        assert_eq!(
            apply(&mut state, GuardOp::AdmitPush, &RULES, at(20)),
            fatigue(at(32))
        );
        apply(&mut state, GuardOp::AdmitPush, &RULES, at(32));
        // 4 pushes: 10 s doubled twice is 40 s, the cap.
        assert_eq!(
            apply(&mut state, GuardOp::AdmitPush, &RULES, at(33)),
            fatigue(at(72))
        );
        apply(&mut state, GuardOp::AdmitPush, &RULES, at(72));
        assert_eq!(
            apply(&mut state, GuardOp::AdmitPush, &RULES, at(73)),
            fatigue(at(112)),
            "capped at max_push_backoff"
        );
        apply(&mut state, GuardOp::Success, &RULES, at(74));
        assert_eq!(
            apply(&mut state, GuardOp::AdmitPush, &RULES, at(75)),
            GuardVerdict::Clear
        );
    }

    #[test]
    fn a_report_blocks_push_only() {
        let mut state = AccountState::default();
        assert_eq!(
            apply(&mut state, GuardOp::Report, &RULES, at(1)),
            GuardVerdict::Reported { until: at(901) }
        );
        assert_eq!(
            apply(&mut state, GuardOp::AdmitPush, &RULES, at(2)),
            GuardVerdict::Blocked(Block::PushReported { until: at(901) })
        );
        assert_eq!(
            apply(&mut state, GuardOp::Check, &RULES, at(2)),
            GuardVerdict::Clear
        );
        assert_eq!(
            current_block(&state, at(2)),
            Some(Block::PushReported { until: at(901) })
        );
        assert_eq!(
            apply(&mut state, GuardOp::AdmitPush, &RULES, at(901)),
            GuardVerdict::Clear
        );
    }

    #[test]
    fn attempts_in_flight_take_the_limit_and_a_refund_gives_one_back() {
        let mut state = AccountState::default();
        for _ in 0..3 {
            assert_eq!(
                apply(&mut state, GuardOp::BeginAttempt, &RULES, at(1)),
                GuardVerdict::Clear
            );
        }
        assert_eq!(
            apply(&mut state, GuardOp::BeginAttempt, &RULES, at(1)),
            GuardVerdict::Blocked(Block::Busy {
                until: at(1).plus(BUSY_RETRY)
            }),
            "three in flight take a limit of three"
        );
        apply(&mut state, GuardOp::Refund, &RULES, at(2));
        assert_eq!(
            apply(&mut state, GuardOp::BeginAttempt, &RULES, at(2)),
            GuardVerdict::Clear
        );
        // The last allowed attempt was right: no lock, the count starts again.
        assert_eq!(
            apply(&mut state, GuardOp::Success, &RULES, at(3)),
            GuardVerdict::Clear
        );
        assert_eq!(
            apply(&mut state, GuardOp::Failure, &RULES, at(3)),
            GuardVerdict::Counted { failures: 1 },
            "an attempt that fails after a success starts the count again"
        );
        assert_eq!(
            apply(&mut state, GuardOp::Check, &RULES, at(3)),
            GuardVerdict::Clear
        );
    }

    #[test]
    fn rules_at_zero_are_off() {
        let off = GuardRules {
            max_failures: 0,
            max_pushes: 0,
            ..RULES
        };
        let mut state = AccountState::default();
        for second in 0..50 {
            assert!(matches!(
                fail(&mut state, &off, at(second)),
                GuardVerdict::Counted { .. }
            ));
            assert_eq!(
                apply(&mut state, GuardOp::AdmitPush, &off, at(second)),
                GuardVerdict::Clear
            );
        }
    }

    #[test]
    fn the_state_is_kept_while_anything_in_it_matters() {
        let mut state = AccountState::default();
        assert_eq!(keep_until(&state, &RULES), None);
        fail(&mut state, &RULES, at(10));
        assert_eq!(keep_until(&state, &RULES), Some(at(3610)));
        apply(&mut state, GuardOp::Report, &RULES, at(20));
        assert_eq!(keep_until(&state, &RULES), Some(at(3610)));
        apply(&mut state, GuardOp::Unlock, &RULES, at(30));
        assert_eq!(keep_until(&state, &RULES), None);
    }
}
