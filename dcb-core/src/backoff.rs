//! Capped exponential backoff with jitter: the one waiting rule behind every
//! retry in dcb (decisions after a conflict, listeners on a failing event,
//! work-queue jobs, Kafka translators).

use std::time::Duration;

/// The longest wait any backoff returns, whatever its settings: a year.
/// Keeps `Instant + delay` and database interval arithmetic far from overflow.
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Capped exponential backoff with jitter.
///
/// The wait after failed attempt `n` (counted from 1) is
/// `min(initial × multiplierⁿ⁻¹, max)`, of which a random share of up to
/// `jitter` is taken off, so that many failing callers spread out instead of
/// retrying in step: with `jitter = 0.5` the wait lies in `[cap/2, cap]`,
/// with `0.0` it is exactly the cap.
///
/// ```
/// use std::time::Duration;
/// use dcb_core::Backoff;
/// let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(50)).jitter(0.0);
/// assert_eq!(b.delay(1), Duration::from_millis(10));
/// assert_eq!(b.delay(3), Duration::from_millis(40));
/// assert_eq!(b.delay(9), Duration::from_millis(50));
///
/// let jittered = b.jitter(0.5);
/// let d = jittered.delay(3);
/// assert!(d >= Duration::from_millis(20) && d <= Duration::from_millis(40));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The wait after the first failure (before jitter).
    pub initial: Duration,
    /// The longest wait (before jitter).
    pub max: Duration,
    /// The factor between consecutive waits (values below 1 count as 1).
    pub multiplier: f64,
    /// The largest share of a wait taken off at random, from 0.0 (none) to
    /// 1.0 (anything from zero to the cap).
    pub jitter: f64,
}

impl Default for Backoff {
    /// 200 ms, doubling, capped at 30 s, half jitter.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
    }
}

impl Backoff {
    /// From `initial` doubling up to `max`, with half jitter.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            multiplier: 2.0,
            jitter: 0.5,
        }
    }

    /// The same backoff with another jitter share (clamped to `0.0..=1.0`
    /// when used).
    pub const fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// The same backoff with another factor between waits.
    pub const fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The wait after failed attempt `attempt` (from 1) before jitter: the
    /// longest [`delay`](Self::delay) can return.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(1_000) as i32;
        let multiplier = if self.multiplier.is_finite() {
            self.multiplier.max(1.0)
        } else {
            1.0
        };
        let cap = self.max.min(MAX_DELAY);
        let secs = self.initial.as_secs_f64() * multiplier.powi(exponent);
        if !secs.is_finite() || secs >= cap.as_secs_f64() {
            cap
        } else {
            Duration::from_secs_f64(secs.max(0.0)).min(cap)
        }
    }

    /// The wait after failed attempt `attempt` (from 1), jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self.ceiling(attempt);
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if jitter == 0.0 {
            return cap;
        }
        cap.mul_f64(1.0 - jitter * fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_and_never_overflows() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300)).jitter(0.0);
        assert_eq!(b.delay(1), Duration::from_secs(1));
        assert_eq!(b.delay(2), Duration::from_secs(2));
        assert_eq!(b.delay(10), Duration::from_secs(300));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(300));
        let huge = Backoff::new(Duration::MAX, Duration::MAX)
            .multiplier(f64::INFINITY)
            .jitter(0.0);
        assert_eq!(huge.delay(u32::MAX), MAX_DELAY);
        let nan = Backoff::new(Duration::from_millis(1), Duration::from_secs(1))
            .multiplier(f64::NAN)
            .jitter(f64::NAN);
        // A NaN jitter counts as none, a NaN multiplier as 1.
        assert_eq!(nan.delay(5), Duration::from_millis(1));
    }

    #[test]
    fn jitter_stays_within_its_share() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for attempt in 1..8 {
            let cap = b.ceiling(attempt);
            for _ in 0..100 {
                let d = b.delay(attempt);
                assert!(
                    d <= cap && d >= cap / 2,
                    "{d:?} outside [{:?}, {cap:?}]",
                    cap / 2
                );
            }
        }
        let full = b.jitter(1.0);
        assert!((0..100).all(|_| full.delay(3) <= full.ceiling(3)));
    }
}
