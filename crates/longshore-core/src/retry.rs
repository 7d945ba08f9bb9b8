//! [`RetryPolicy`]: exponential backoff with full jitter, a cap and a maximum of attempts.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::names::Attempt;

/// When to try a failed job again, and when to give up.
///
/// The delay after failed attempt `n` is drawn uniformly from `[0, min(cap, base · 2^(n-1))]`
/// ("full jitter"), so retries of many jobs that failed together spread out instead of
/// hammering the dependency that failed them in waves. The attempt number comes from the
/// broker, so the schedule survives worker restarts.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base: Duration,
    cap: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, base 1 s, cap 5 minutes.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
        }
    }
}

/// What to do after a retryable failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this delay.
    RetryAfter(Duration),
    /// Attempts are used up: dead-letter.
    GiveUp,
}

impl RetryPolicy {
    /// Exponential backoff from `base`, capped at `cap`, for at most `max_attempts` attempts
    /// in all (the first run included).
    pub fn exponential(base: Duration, cap: Duration, max_attempts: u32) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            base,
            cap: cap.max(base),
        }
    }

    /// Never retry: the first failure dead-letters.
    pub fn never() -> Self {
        Self::default().with_max_attempts(1)
    }

    /// Sets the maximum number of attempts (the first run included; at least 1).
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Sets the first retry's delay ceiling.
    pub fn with_base(mut self, base: Duration) -> Self {
        self.base = base;
        self.cap = self.cap.max(base);
        self
    }

    /// Sets the largest delay.
    pub fn with_cap(mut self, cap: Duration) -> Self {
        self.cap = cap.max(self.base);
        self
    }

    /// The maximum number of attempts.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The largest delay this policy ever asks for.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The upper bound of the delay after failed attempt `attempt`: `min(cap, base · 2^(n-1))`.
    pub fn ceiling(&self, attempt: Attempt) -> Duration {
        // Past 64 doublings any finite cap is reached; stop iterating there.
        let steps = (attempt.get() - 1).min(64) as usize;
        ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(self.cap)
            .with_factor(2.0)
            .without_max_times()
            .build()
            .nth(steps)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// A delay drawn with full jitter from `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: Attempt) -> Duration {
        self.ceiling(attempt).mul_f64(fastrand::f64())
    }

    /// Retry or give up after attempt `attempt` failed with a retryable error.
    pub fn decide(&self, attempt: Attempt) -> RetryDecision {
        if attempt.get() >= self.max_attempts {
            RetryDecision::GiveUp
        } else {
            RetryDecision::RetryAfter(self.delay(attempt))
        }
    }
}

/// `delay` in whole multiples of `unit`, rounded down or up at random in proportion (`draw`
/// uniform in [0, 1)): with a unit of 1 s, 1.37 s waits 1 s 63% of the time and 2 s 37%. The
/// mean stays `delay`, so full jitter keeps its spread on a broker that waits in whole
/// seconds; rounding every draw up would put all the first retries of a 1 s policy at 1 s.
/// A zero `unit` leaves `delay` as it is.
pub(crate) fn whole_units(delay: Duration, unit: Duration, draw: f64) -> Duration {
    if unit.is_zero() {
        return delay;
    }
    let units = delay.as_secs_f64() / unit.as_secs_f64();
    let whole = units.floor();
    let up = f64::from(u8::from(draw < units - whole));
    unit.mul_f64(whole + up)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_units_keep_the_mean_and_the_spread() {
        let second = Duration::from_secs(1);
        let delay = Duration::from_millis(1_370);
        assert_eq!(whole_units(delay, second, 0.0), Duration::from_secs(2));
        assert_eq!(whole_units(delay, second, 0.5), second);
        let draws = 10_000;
        let mean = (0..draws)
            .map(|i| whole_units(delay, second, f64::from(i) / f64::from(draws)).as_secs_f64())
            .sum::<f64>()
            / f64::from(draws);
        assert!((mean - 1.37).abs() < 0.01, "{mean}");
        assert_eq!(
            whole_units(Duration::from_millis(300), second, 0.9),
            Duration::ZERO
        );
        assert_eq!(whole_units(delay, Duration::ZERO, 0.9), delay);
    }

    #[test]
    fn delays_stay_within_zero_and_cap() {
        let policy =
            RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(2), 50);
        for n in 1..=50 {
            for _ in 0..200 {
                let delay = policy.delay(Attempt::new(n));
                assert!(delay <= policy.ceiling(Attempt::new(n)));
                assert!(delay <= Duration::from_secs(2), "attempt {n}: {delay:?}");
            }
        }
    }

    #[test]
    fn ceiling_doubles_per_attempt_until_the_cap() {
        let policy =
            RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(2), 50);
        let ceilings: Vec<u128> = (1..=7)
            .map(|n| policy.ceiling(Attempt::new(n)).as_millis())
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(
            policy.ceiling(Attempt::new(u32::MAX)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn mean_delay_grows_per_attempt() {
        let policy =
            RetryPolicy::exponential(Duration::from_millis(10), Duration::from_secs(60), 50);
        let mean = |n: u32| {
            (0..2000)
                .map(|_| policy.delay(Attempt::new(n)).as_secs_f64())
                .sum::<f64>()
                / 2000.0
        };
        let means: Vec<f64> = (1..=6).map(mean).collect();
        for pair in means.windows(2) {
            assert!(pair[1] > pair[0], "means should grow: {means:?}");
        }
        // Full jitter: the mean sits near half the ceiling.
        let half = policy.ceiling(Attempt::new(6)).as_secs_f64() / 2.0;
        assert!((means[5] - half).abs() < half * 0.1, "{means:?}");
    }

    #[test]
    fn gives_up_at_max_attempts() {
        let policy = RetryPolicy::default().with_max_attempts(3);
        assert!(matches!(
            policy.decide(Attempt::new(1)),
            RetryDecision::RetryAfter(_)
        ));
        assert!(matches!(
            policy.decide(Attempt::new(2)),
            RetryDecision::RetryAfter(_)
        ));
        assert_eq!(policy.decide(Attempt::new(3)), RetryDecision::GiveUp);
        assert_eq!(
            RetryPolicy::never().decide(Attempt::FIRST),
            RetryDecision::GiveUp
        );
    }
}
