//! What one measured variant did: counts, attempts and a latency sample.

use std::time::Duration;

/// What one operation reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpOutcome {
    /// Events (or rows) it wrote.
    pub events: u64,
    /// Attempts it took (1 when nothing conflicted; 0 for operations that
    /// have no notion of attempts).
    pub attempts: u32,
    /// It stopped retrying without committing.
    pub gave_up: bool,
}

/// The counts and latencies gathered while measuring one variant.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    /// Operations that completed (committed or gave up) in the window.
    pub ops: u64,
    /// Of those, the ones that gave up.
    pub give_ups: u64,
    /// Events written.
    pub events: u64,
    /// Attempts made in total.
    pub attempts: u64,
    /// Latency of every completed operation.
    pub latencies: Vec<Duration>,
    /// The length of the measuring window.
    pub window: Duration,
}

impl Measured {
    /// Adds one completed operation.
    pub fn record(&mut self, outcome: OpOutcome, latency: Duration) {
        self.ops += 1;
        self.give_ups += u64::from(outcome.gave_up);
        self.events += outcome.events;
        self.attempts += u64::from(outcome.attempts);
        self.latencies.push(latency);
    }

    /// Adds another worker's counts.
    pub fn merge(&mut self, other: Measured) {
        self.ops += other.ops;
        self.give_ups += other.give_ups;
        self.events += other.events;
        self.attempts += other.attempts;
        self.latencies.extend(other.latencies);
    }

    /// Adds a later measuring window of the same variant: counts, samples
    /// and window lengths add up.
    pub fn extend(&mut self, other: Measured) {
        self.window += other.window;
        self.merge(other);
        self.finish();
    }

    /// Committed operations per second (give-ups excluded).
    pub fn ops_per_s(&self) -> f64 {
        per_second(self.ops - self.give_ups, self.window)
    }

    /// Events per second.
    pub fn events_per_s(&self) -> f64 {
        per_second(self.events, self.window)
    }

    /// Failed attempts over all attempts: every attempt beyond an operation's
    /// first failed its append condition (or gave up), so this is
    /// `(attempts - ops) / attempts`. `None` when nothing counted attempts.
    pub fn conflict_rate(&self) -> Option<f64> {
        if self.attempts == 0 {
            return None;
        }
        // A give-up's attempts all failed; a success's attempts all but the last.
        let failed = self.attempts - (self.ops - self.give_ups);
        Some(failed as f64 / self.attempts as f64)
    }

    /// Sorts the latency sample so percentiles can be read.
    pub fn finish(&mut self) {
        self.latencies.sort_unstable();
    }

    /// The `q` quantile (0..=1) of the latencies in milliseconds, nearest rank.
    /// Call [`Measured::finish`] first.
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        percentile(&self.latencies, q).map(|d| d.as_secs_f64() * 1000.0)
    }
}

fn per_second(count: u64, window: Duration) -> f64 {
    if window.is_zero() {
        0.0
    } else {
        count as f64 / window.as_secs_f64()
    }
}

/// The nearest-rank `q` quantile of a sorted sample.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sample: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&sample, 0.5), Some(ms(50)));
        assert_eq!(percentile(&sample, 0.99), Some(ms(99)));
        assert_eq!(percentile(&sample, 1.0), Some(ms(100)));
        assert_eq!(percentile(&sample, 0.0), Some(ms(1)));
        assert_eq!(percentile(&[ms(7)], 0.99), Some(ms(7)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn rates_and_conflicts() {
        let mut m = Measured {
            window: Duration::from_secs(2),
            ..Measured::default()
        };
        // 3 decisions: first try, 2 attempts, 4 attempts then gave up.
        m.record(
            OpOutcome {
                events: 2,
                attempts: 1,
                gave_up: false,
            },
            ms(3),
        );
        m.record(
            OpOutcome {
                events: 1,
                attempts: 2,
                gave_up: false,
            },
            ms(1),
        );
        m.record(
            OpOutcome {
                events: 0,
                attempts: 4,
                gave_up: true,
            },
            ms(2),
        );
        m.finish();
        assert_eq!(m.ops_per_s(), 1.0);
        assert_eq!(m.events_per_s(), 1.5);
        // 7 attempts, 2 of them committed.
        assert_eq!(m.conflict_rate(), Some(5.0 / 7.0));
        assert_eq!(m.percentile_ms(0.5), Some(2.0));
    }

    #[test]
    fn no_attempts_no_conflict_rate() {
        let mut m = Measured::default();
        m.record(
            OpOutcome {
                events: 1,
                attempts: 0,
                gave_up: false,
            },
            ms(1),
        );
        assert_eq!(m.conflict_rate(), None);
    }
}
