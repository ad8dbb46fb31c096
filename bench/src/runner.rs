//! Runs N concurrent callers for a warm-up and a measuring window.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::stats::{Measured, OpOutcome};

/// How long each variant warms up before measuring.
pub const WARMUP: Duration = Duration::from_secs(1);

/// Runs `concurrency` callers, each calling its own operation in a loop, for
/// `warmup + window`. An operation counts when it completes inside the window
/// (one still running when the window closes is finished but not counted).
///
/// `make_caller(i)` builds caller `i`'s operation; it owns whatever state the
/// caller keeps between calls (its current cart, its connection...).
///
/// # Errors
/// The first error any operation returns; the other callers are stopped.
pub async fn run_timed<M, F, Fut>(
    concurrency: usize,
    warmup: Duration,
    window: Duration,
    mut make_caller: M,
) -> Result<Measured, String>
where
    M: FnMut(usize) -> F,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<OpOutcome, String>> + Send,
{
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + window;
    let mut callers = JoinSet::new();
    for i in 0..concurrency {
        let mut op = make_caller(i);
        callers.spawn(async move {
            let mut local = Measured::default();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let outcome = op().await?;
                let t1 = Instant::now();
                if t1 > measure_from && t1 <= end {
                    local.record(outcome, t1 - t0);
                }
            }
            Ok::<_, String>(local)
        });
    }
    let mut total = Measured {
        window,
        ..Measured::default()
    };
    while let Some(joined) = callers.join_next().await {
        let local = joined.map_err(|e| format!("a caller panicked or was cancelled: {e}"))??;
        total.merge(local);
    }
    total.finish();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn counts_only_the_window() {
        let calls = Arc::new(AtomicU64::new(0));
        let m = run_timed(
            4,
            Duration::from_millis(50),
            Duration::from_millis(200),
            |_| {
                let calls = calls.clone();
                move || {
                    let calls = calls.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        calls.fetch_add(1, Ordering::Relaxed);
                        Ok(OpOutcome {
                            events: 1,
                            attempts: 1,
                            gave_up: false,
                        })
                    }
                }
            },
        )
        .await
        .unwrap();
        assert!(m.ops > 0);
        assert!(
            m.ops < calls.load(Ordering::Relaxed),
            "warm-up calls are not counted"
        );
        assert_eq!(m.latencies.len() as u64, m.ops);
        assert_eq!(m.conflict_rate(), Some(0.0));
    }

    #[tokio::test]
    async fn first_error_stops_the_run() {
        let err = run_timed(2, Duration::ZERO, Duration::from_secs(30), |i| {
            move || async move {
                if i == 1 {
                    Err("boom".to_string())
                } else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    Ok(OpOutcome::default())
                }
            }
        })
        .await
        .unwrap_err();
        assert_eq!(err, "boom");
    }
}
