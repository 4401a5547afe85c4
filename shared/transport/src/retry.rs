//! The one retry policy for registry traffic, used by every request the transport makes and by
//! the engines when they write a streamed blob again (backup's layer uploads).
//!
//! Transient failures ([`TransportError::is_transient`]: connect errors, resets, stalls, 5xx,
//! 429) are retried with exponential backoff (0.5 s, doubling, at most 8 s apart); a
//! `Retry-After` given in seconds is honoured up to [`MAX_RETRY_AFTER`]. One operation never
//! spends more than the budget (`WSR_RETRY_SECONDS`, default 60 s) from its first failure:
//! a retry that would start after the budget is not made, and the last error is returned.
//! A stalled registry is detected by the idle timeout (`WSR_IDLE_TIMEOUT_SECONDS`, default
//! 60 s): no byte received (or, for an upload, none taken by the registry) for that long fails
//! the attempt, which is then retried like any transient failure.

use crate::TransportError;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Default for `WSR_RETRY_SECONDS`.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(60);
/// Default for `WSR_IDLE_TIMEOUT_SECONDS`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `Retry-After` waited for; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(8);

/// How long transient failures are retried, and when a quiet connection counts as stalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most time spent retrying one operation, counted from its first failure.
    pub budget: Duration,
    /// No progress for this long fails an attempt.
    pub idle_timeout: Duration,
}

impl RetryPolicy {
    /// The process's policy: the defaults, overridden by `WSR_RETRY_SECONDS` and
    /// `WSR_IDLE_TIMEOUT_SECONDS` (whole seconds; read once).
    pub fn current() -> RetryPolicy {
        *POLICY.get_or_init(|| RetryPolicy {
            budget: seconds_from_env("WSR_RETRY_SECONDS", 0).unwrap_or(DEFAULT_BUDGET),
            idle_timeout: seconds_from_env("WSR_IDLE_TIMEOUT_SECONDS", 1)
                .unwrap_or(DEFAULT_IDLE_TIMEOUT),
        })
    }

    /// Makes `self` the process's policy, unless one is in use already (then returns it as the
    /// error). For in-process tests, which cannot set the environment safely.
    pub fn install(self) -> Result<(), RetryPolicy> {
        POLICY.set(self).map_err(|_| RetryPolicy::current())
    }

    /// Starts counting for one operation.
    pub fn backoff(self) -> Backoff {
        Backoff {
            policy: self,
            first_failure: None,
            next_delay: FIRST_DELAY,
            failures: 0,
        }
    }
}

static POLICY: OnceLock<RetryPolicy> = OnceLock::new();

fn seconds_from_env(name: &str, min: u64) -> Option<Duration> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse::<u64>() {
        Ok(s) if s >= min => Some(Duration::from_secs(s)),
        _ => {
            tracing::warn!("{name}={value:?} is not a whole number of seconds >= {min}; ignored");
            None
        }
    }
}

/// The retry state of one operation.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    first_failure: Option<Instant>,
    next_delay: Duration,
    failures: u32,
}

impl Backoff {
    /// After `error`: how long to wait before the next attempt, or `None` when the error is
    /// not transient or the attempt would start after the budget.
    pub fn delay_after(&mut self, error: &TransportError) -> Option<Duration> {
        if !error.is_transient() {
            return None;
        }
        let first = *self.first_failure.get_or_insert_with(Instant::now);
        self.failures += 1;
        let backoff = self.next_delay;
        self.next_delay = (self.next_delay * 2).min(MAX_DELAY);
        let delay = match error.retry_after() {
            Some(asked) => asked.min(MAX_RETRY_AFTER),
            None => backoff,
        };
        (first.elapsed() + delay <= self.policy.budget).then_some(delay)
    }

    /// Failures seen so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Parses a `Retry-After` value given in seconds (an HTTP date is not honoured: the normal
/// backoff applies).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status: u16, retry_after: Option<u64>) -> TransportError {
        TransportError::Server {
            registry: "r".into(),
            status,
            what: "x".into(),
            detail: String::new(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn backs_off_exponentially_within_the_budget() {
        let policy = RetryPolicy {
            budget: Duration::from_secs(20),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        };
        let mut b = policy.backoff();
        let delays: Vec<_> = (0..6)
            .map(|_| b.delay_after(&server(503, None)).map(|d| d.as_millis()))
            .collect();
        let want = [500, 1000, 2000, 4000, 8000, 8000].map(Some);
        assert_eq!(delays, want);
        assert_eq!(b.failures(), 6);
        // A delay that would end beyond the budget is not waited for.
        let short = RetryPolicy {
            budget: Duration::from_millis(900),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        };
        let mut b = short.backoff();
        assert!(b.delay_after(&server(500, None)).is_some());
        assert!(b.delay_after(&server(500, None)).is_none());
        let mut b = policy.backoff();
        let not_found = TransportError::NotFound { what: "x".into() };
        assert_eq!(b.delay_after(&not_found), None);
        assert_eq!(b.delay_after(&server(400, None)), None);
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_cap_and_the_budget() {
        let policy = RetryPolicy {
            budget: Duration::from_secs(40),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        };
        let mut b = policy.backoff();
        assert_eq!(
            b.delay_after(&server(429, Some(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(b.delay_after(&server(429, Some(0))), Some(Duration::ZERO));
        assert_eq!(
            b.delay_after(&server(503, Some(3600))),
            Some(MAX_RETRY_AFTER)
        );
        let tight = RetryPolicy {
            budget: Duration::from_secs(2),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        };
        assert_eq!(tight.backoff().delay_after(&server(429, Some(5))), None);
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
