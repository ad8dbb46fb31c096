//! The `queue` workload: no-op jobs burnt down by 1 and 4 worker processes,
//! and the enqueue → start latency of jobs woken by NOTIFY.
//!
//! The worker processes are this binary run as
//! `dcb-bench __queue-worker <schema> <jobs-at-once>`: they serve the queue
//! until their stdin closes (the bench holds it open, so they also stop when
//! the bench dies), and print how many jobs they ran (`ran <n>`) as it
//! changes, so the bench follows the burn-down without querying the jobs
//! table while it is measured.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_core::InMemoryEventStore;
use dcb_postgres::queue::{JobContext, JobError, NewJob, Processor, WorkQueue, Workers};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::cli::Args;
use crate::db::Db;
use crate::listener::{sent_latency_row, throughput_row};
use crate::ping::{self, Ping};
use crate::report::Row;
use crate::runner::WARMUP;

const WORKLOAD: &str = "queue";
/// The hidden subcommand that runs a worker process.
pub const WORKER_COMMAND: &str = "__queue-worker";
/// Worker processes of the burn-down variants.
pub const PROCESSES: [usize; 2] = [1, 4];
/// Jobs each worker process runs at once. A no-op job holds its slot only
/// for the round trips around it (its claim, its completion), so many slots
/// keep those statements busy with large batches.
pub const JOBS_PER_PROCESS: usize = 128;
/// Jobs a worker process claims per statement (at most).
pub const CLAIM_BATCH: usize = 64;
/// Jobs the in-process workers of the latency variant run at once.
pub const LATENCY_JOBS_AT_ONCE: usize = 8;
/// At most this many jobs are pre-enqueued for a burn-down.
pub const BURN_DOWN_JOBS: u64 = 100_000;
/// Jobs per `enqueue_many` while pre-enqueueing.
pub const ENQUEUE_BATCH: usize = 2_000;
/// How often worker processes report their runs.
pub const REPORT_EVERY: Duration = Duration::from_millis(10);
/// A burn-down fails when no job finishes for this long.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Jobs per second of the latency variant.
pub const LATENCY_RATE: u32 = 200;

fn say(line: &str) {
    eprintln!("[dcb-bench] {line}");
}

/// An empty job payload.
#[derive(Serialize, Deserialize)]
pub struct Nothing {}

/// Does nothing but count its runs.
#[derive(Clone, Default)]
pub struct NoopJob {
    runs: Arc<AtomicU64>,
}

#[async_trait]
impl Processor for NoopJob {
    const KIND: &'static str = "bench_noop";
    type Payload = Nothing;
    async fn run(&self, _payload: &Nothing, _ctx: &JobContext) -> Result<(), JobError> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Records when each job started, against the time in its payload.
pub struct PingJob {
    seen: Arc<Mutex<Vec<(u64, Duration)>>>,
}

#[async_trait]
impl Processor for PingJob {
    const KIND: &'static str = "bench_ping";
    type Payload = Ping;
    async fn run(&self, payload: &Ping, _ctx: &JobContext) -> Result<(), JobError> {
        let latency = ping::since(payload.sent_us);
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((payload.sent_us, latency));
        Ok(())
    }
}

/// The body of `dcb-bench __queue-worker <schema> <jobs-at-once>`.
///
/// # Errors
/// Bad arguments, or the workers cannot start.
pub async fn worker_process(url: &str, args: &[String]) -> Result<(), String> {
    let [schema, jobs] = args else {
        return Err(format!(
            "usage: dcb-bench {WORKER_COMMAND} <schema> <jobs-at-once>"
        ));
    };
    let jobs: usize = jobs
        .parse()
        .map_err(|_| format!("bad job count {jobs:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The claimer, the ledger (completions and heartbeats, many jobs per
    // statement), the reaper and the LISTEN connection; no-op jobs need no
    // connection of their own.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .connect(url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let queue = WorkQueue::new(pool.clone(), schema.as_str()).map_err(|e| e.to_string())?;
    let noop = NoopJob::default();
    let runs = noop.runs.clone();
    let workers = Workers::new(queue, InMemoryEventStore::new())
        .register(noop)
        .concurrency(jobs)
        .batch_size(CLAIM_BATCH)
        .start()
        .await
        .map_err(|e| format!("start the workers: {e}"))?;
    // Report the runs as they grow.
    let reporter = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        let mut reported = 0;
        loop {
            tokio::time::sleep(REPORT_EVERY).await;
            let n = runs.load(Ordering::Relaxed);
            if n != reported {
                reported = n;
                let line = format!("ran {n}\n");
                if out.write_all(line.as_bytes()).await.is_err() || out.flush().await.is_err() {
                    return;
                }
            }
        }
    });
    // Serve until the bench closes our stdin (or dies).
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    reporter.abort();
    workers.shutdown(Duration::from_secs(5)).await;
    pool.close().await;
    Ok(())
}

/// Runs every variant of the workload.
///
/// # Errors
/// The first failure of any variant.
pub async fn run(db: &Db, args: &Args, rows: &mut Vec<Row>) -> Result<(), String> {
    let jobs = BURN_DOWN_JOBS.min(args.preload.max(1_000));
    for &processes in &PROCESSES {
        let schema = db.new_schema(&format!("queue_p{processes}"));
        let pool = db.pool(2).await?;
        let result = burn_down(&pool, &schema, processes, jobs).await;
        pool.close().await;
        db.drop_schema(&schema).await?;
        rows.push(result?);
    }
    let schema = db.new_schema("queue_latency");
    let pool = db.pool(4).await?;
    let result = notify_latency(&pool, &schema, Duration::from_secs_f64(args.seconds)).await;
    pool.close().await;
    db.drop_schema(&schema).await?;
    rows.push(result?);
    Ok(())
}

async fn new_queue(pool: &sqlx::PgPool, schema: &str) -> Result<WorkQueue, String> {
    sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(pool)
        .await
        .map_err(|e| format!("create schema {schema}: {e}"))?;
    let queue = WorkQueue::new(pool.clone(), schema).map_err(|e| e.to_string())?;
    queue
        .migrate()
        .await
        .map_err(|e| format!("migrate the queue: {e}"))?;
    Ok(queue)
}

async fn burn_down(
    pool: &sqlx::PgPool,
    schema: &str,
    processes: usize,
    jobs: u64,
) -> Result<Row, String> {
    let queue = new_queue(pool, schema).await?;
    say(&format!("queue: enqueueing {jobs} no-op jobs"));
    let mut left = jobs;
    while left > 0 {
        let n = left.min(ENQUEUE_BATCH as u64) as usize;
        let batch: Vec<NewJob> = (0..n)
            .map(|_| NewJob::for_processor::<NoopJob>(&Nothing {}))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        queue
            .enqueue_many(pool, &batch)
            .await
            .map_err(|e| format!("enqueue_many: {e}"))?;
        left -= n as u64;
    }
    sqlx::raw_sql(&format!("VACUUM (ANALYZE) {schema}.jobs"))
        .execute(pool)
        .await
        .map_err(|e| format!("vacuum: {e}"))?;

    say(&format!(
        "queue: burning down {jobs} jobs with {processes} worker process(es) x {JOBS_PER_PROCESS} \
         jobs at once (claims of up to {CLAIM_BATCH})"
    ));
    let exe = std::env::current_exe().map_err(|e| format!("cannot find dcb-bench itself: {e}"))?;
    let t0 = Instant::now();
    let mut children = Vec::new();
    let mut ran = Vec::new();
    for _ in 0..processes {
        let mut child = tokio::process::Command::new(&exe)
            .arg(WORKER_COMMAND)
            .arg(schema)
            .arg(JOBS_PER_PROCESS.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start a worker process: {e}"))?;
        let count = Arc::new(AtomicU64::new(0));
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(follow_runs(stdout, count.clone()));
        }
        ran.push(count);
        children.push(child);
    }
    let result = async {
        // The jobs table is left alone until the processes ran every job:
        // then it is checked (two probes of partial indexes) until the last
        // completions are recorded.
        let (mut last, mut moved) = (0, Instant::now());
        loop {
            tokio::time::sleep(REPORT_EVERY).await;
            let runs: u64 = ran.iter().map(|n| n.load(Ordering::Relaxed)).sum();
            if runs >= jobs && !jobs_left(pool, schema).await? {
                return Ok(t0.elapsed());
            }
            if runs > last {
                (last, moved) = (runs, Instant::now());
            } else if moved.elapsed() > STALL_TIMEOUT {
                return Err(format!(
                    "no job ran for {} s ({last} of {jobs} ran)",
                    STALL_TIMEOUT.as_secs()
                ));
            }
            for child in &mut children {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("a worker process exited early: {status}"));
                }
            }
        }
    }
    .await;
    for mut child in children {
        drop(child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    let elapsed = result?;
    let counts = queue
        .admin()
        .counts(None)
        .await
        .map_err(|e| format!("counts: {e}"))?;
    if counts.succeeded != jobs || counts.dead > 0 {
        return Err(format!(
            "burn-down ended with {} of {jobs} jobs succeeded and {} dead",
            counts.succeeded, counts.dead
        ));
    }
    let r = throughput_row(WORKLOAD, "burn_down", processes, jobs, elapsed);
    say(&format!(
        "  {:.0} jobs/s ({:.1} s)",
        r.ops_per_s,
        elapsed.as_secs_f64()
    ));
    Ok(r)
}

/// Whether any job of the burn-down is ready or running.
async fn jobs_left(pool: &sqlx::PgPool, schema: &str) -> Result<bool, String> {
    sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM {schema}.jobs WHERE state = 'ready')
             OR EXISTS (SELECT 1 FROM {schema}.jobs WHERE state = 'running')"
    ))
    .fetch_one(pool)
    .await
    .map_err(|e| format!("jobs left: {e}"))
}

/// Keeps `count` at the last `ran <n>` a worker process printed.
async fn follow_runs(stdout: tokio::process::ChildStdout, count: Arc<AtomicU64>) {
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(n) = line.strip_prefix("ran ").and_then(|n| n.parse().ok()) {
            count.store(n, Ordering::Relaxed);
        }
    }
}

/// Enqueue → start latency: one job at a time at [`LATENCY_RATE`] jobs/s,
/// run by in-process workers woken by the queue's NOTIFY.
async fn notify_latency(
    pool: &sqlx::PgPool,
    schema: &str,
    window: Duration,
) -> Result<Row, String> {
    say(&format!(
        "queue: enqueue→start latency at {LATENCY_RATE} jobs/s"
    ));
    let queue = new_queue(pool, schema).await?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let workers = Workers::new(queue.clone(), InMemoryEventStore::new())
        .register(PingJob { seen: seen.clone() })
        .concurrency(LATENCY_JOBS_AT_ONCE)
        .start()
        .await
        .map_err(|e| format!("start the workers: {e}"))?;
    let sent = async {
        let mut ticker = tokio::time::interval(Duration::from_secs(1) / LATENCY_RATE);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let from = ping::now_us() + WARMUP.as_micros() as u64;
        let to = from + window.as_micros() as u64;
        let end = Instant::now() + WARMUP + window;
        let mut tasks = tokio::task::JoinSet::new();
        let mut seq = 0;
        loop {
            ticker.tick().await;
            if Instant::now() >= end {
                break;
            }
            seq += 1;
            let queue = queue.clone();
            tasks.spawn(async move {
                let job =
                    NewJob::for_processor::<PingJob>(&Ping::now(seq)).map_err(|e| e.to_string())?;
                queue
                    .enqueue(queue.pool(), &job)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("enqueue: {e}"))
            });
            while let Some(done) = tasks.try_join_next() {
                done.map_err(|e| format!("an enqueue task failed: {e}"))??;
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| format!("an enqueue task failed: {e}"))??;
        }
        // Let the last jobs start.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let counts = queue
                .admin()
                .counts(None)
                .await
                .map_err(|e| format!("counts: {e}"))?;
            if counts.succeeded >= seq {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<_, String>((from, to))
    }
    .await;
    workers.shutdown(Duration::from_secs(5)).await;
    let (from, to) = sent?;
    Ok(sent_latency_row(
        WORKLOAD,
        "notify_latency",
        &seen,
        from..to,
        window,
    ))
}
