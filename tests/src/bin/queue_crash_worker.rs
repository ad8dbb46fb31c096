//! A work queue worker process for the crash tests (`tests/queue_crash.rs`).
//!
//! Usage: `queue_crash_worker <database url> <mode>`, where mode is
//! - `hang`: the `crash_job` processor prints `RUNNING <job id> <attempt>`
//!   and then never finishes, so the test can SIGKILL the process mid-job;
//! - `die_after_success_event`: the job succeeds; right after its success
//!   event is appended (before the job is marked complete) the process
//!   SIGKILLs itself.
//!
//! Lease 2 s, heartbeat every 500 ms.

use std::io::Write;
use std::time::Duration;

use async_trait::async_trait;
use dcb_core::{
    AppendCondition, AppendResult, EventMetadata, EventRecord, EventStore, EventType, Query,
    ReadOptions, ReadResult, StoreError,
};
use dcb_postgres::queue::{JobContext, JobError, Processor, Workers};
use dcb_postgres::PgEventStore;

/// The success event's type.
const DONE: &str = "CrashJobDone";

#[derive(serde::Serialize, serde::Deserialize)]
struct CrashJob {
    name: String,
}

struct Hang;

#[async_trait]
impl Processor for Hang {
    const KIND: &'static str = "crash_job";
    type Payload = CrashJob;

    async fn run(&self, _job: &CrashJob, ctx: &JobContext) -> Result<(), JobError> {
        say(&format!("RUNNING {} {}", ctx.job_id(), ctx.attempt()));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    }
}

struct Succeed;

#[async_trait]
impl Processor for Succeed {
    const KIND: &'static str = "crash_job";
    type Payload = CrashJob;

    async fn run(&self, _job: &CrashJob, ctx: &JobContext) -> Result<(), JobError> {
        say(&format!("RUNNING {} {}", ctx.job_id(), ctx.attempt()));
        Ok(())
    }

    async fn on_success(
        &self,
        job: &CrashJob,
        _ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        Ok(vec![done_event(&job.name)])
    }
}

fn done_event(name: &str) -> EventRecord {
    EventRecord {
        event_type: EventType::from(DONE),
        tags: vec![dcb_core::Tag::new("item", name)],
        payload: b"{}".to_vec(),
        metadata: EventMetadata::new(),
    }
}

/// Kills this process with SIGKILL as soon as an append with a `DONE`
/// event succeeded.
struct DieAfterDone<S>(S);

#[async_trait]
impl<S: EventStore> EventStore for DieAfterDone<S> {
    async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult, StoreError> {
        self.0.read(query, options).await
    }

    async fn append(
        &self,
        events: Vec<EventRecord>,
        condition: Option<AppendCondition>,
    ) -> Result<AppendResult, StoreError> {
        let done = events.iter().any(|e| e.event_type == DONE);
        let result = self.0.append(events, condition).await?;
        if done {
            say("APPENDED");
            let pid = std::process::id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status();
            // `kill` should not return; if it is missing, crash anyway.
            std::process::abort();
        }
        Ok(result)
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(mode)) = (args.next(), args.next()) else {
        eprintln!("usage: queue_crash_worker <database url> <hang|die_after_success_event>");
        std::process::exit(2);
    };
    let store = PgEventStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let queue = store.queue();
    queue.migrate().await.expect("migrate the work queue");
    let workers = match mode.as_str() {
        "hang" => store.workers().register(Hang),
        "die_after_success_event" => Workers::new(queue, DieAfterDone(store)).register(Succeed),
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    };
    let _handle = workers
        .worker_id(format!("child-{}", std::process::id()))
        .lease(Duration::from_secs(2))
        .heartbeat(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(100))
        .start()
        .await
        .expect("start workers");
    say("STARTED");
    // Run until killed.
    std::future::pending::<()>().await;
}
