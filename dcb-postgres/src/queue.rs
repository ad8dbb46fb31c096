//! A Postgres work queue for background processors.
//!
//! Jobs live in `{schema}.jobs`. Enqueue them in any transaction (a
//! listener's, a request's) with [`WorkQueue::enqueue`]; run them with
//! [`Workers`], which claim batches with `FOR UPDATE SKIP LOCKED`, hold a
//! lease per job (extended by heartbeats), retry failures with capped
//! exponential backoff and jitter, and record each job's success or final
//! failure event exactly once. Operators list, count, redrive and cancel
//! jobs with [`QueueAdmin`], from any process that has a pool.
//!
//! Which part for which job:
//! - [`WorkQueue`] (`store.queue()`): enqueue, and the claim / heartbeat /
//!   complete / fail protocol (workers use it; so can a custom worker).
//! - [`Workers`] (`store.workers()`): the worker set that runs
//!   [`Processor`]s; [`WorkersHandle`] stops it gracefully.
//! - [`QueueAdmin`] (`store.queue_admin()`, or [`QueueAdmin::new`] with a
//!   pool): jobs by state, counts, the oldest ready job's age, redrive,
//!   cancel, purge, worker sets, and ready jobs no worker serves.
//!
//! ```no_run
//! # async fn example(store: dcb_postgres::PgEventStore) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use async_trait::async_trait;
//! use dcb_postgres::queue::{JobContext, JobError, NewJob, Processor};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Publish { cart_id: String }
//!
//! struct Publisher;
//!
//! #[async_trait]
//! impl Processor for Publisher {
//!     const KIND: &'static str = "publish_cart";
//!     type Payload = Publish;
//!     async fn run(&self, job: &Publish, ctx: &JobContext) -> Result<(), JobError> {
//!         Ok(())
//!     }
//! }
//!
//! let queue = store.queue();
//! queue.migrate().await?;
//!
//! let mut tx = store.pool().begin().await?;
//! // ... the request's own writes ...
//! queue
//!     .enqueue(&mut *tx, &NewJob::for_processor::<Publisher>(&Publish { cart_id: "c1".into() })?
//!         .retry_for(Duration::from_secs(3600))
//!         .dedupe_key("publish:c1"))
//!     .await?;
//! tx.commit().await?;
//!
//! let workers = store.workers()
//!     .register(Publisher)
//!     .concurrency(8)
//!     .start()
//!     .await?;
//! // ...
//! workers.shutdown(Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//! - A job is claimed by one worker at a time. Every claim increments the
//!   attempt and issues a fresh lease token; heartbeat, complete, fail and
//!   release are fenced by both, so a worker that lost its lease (paused past
//!   it, partitioned, or the job was cancelled) gets
//!   [`QueueError::LeaseLost`] and changes nothing.
//! - A job whose worker died is put back as due when its lease expires (any
//!   running worker set reaps expired leases), and runs again within about
//!   one lease period. The crashed attempt counts as an attempt.
//! - `run` is at least once; hook events are exactly once (see
//!   [`append_once`]).
//! - A job that keeps failing ends: after its attempts or its deadline
//!   (every job has one or the other; [`DEFAULT_MAX_ATTEMPTS`] when neither
//!   is set) or at once on a permanent error, it is dead, kept with its last
//!   error until an operator redrives, cancels or purges it.
//!
//! # What does not run
//! - **A payload that does not decode** as the processor's payload type
//!   makes the job dead at once, with the decode error as its last error.
//!   Its failure hook does not run: the hook receives the decoded payload,
//!   and there is none. Fix the producer (or the type) and redrive it.
//! - **A job of a kind no running worker registered** is never claimed
//!   (claims ask only for the kinds a worker set runs): it stays ready.
//!   Every worker set announces its queues and kinds in
//!   `{schema}.job_workers`; [`QueueAdmin::unserved`] lists ready jobs that
//!   no live worker set serves, and running workers log a warning about
//!   them in their own queues.

#[cfg(test)]
mod explain_tests;

mod admin;
mod client;
mod error;
mod job;
mod processor;
mod schema;
mod sql;
mod worker;

pub use admin::{JobFilter, QueueAdmin, QueueSummary, UnservedKind, WorkerSetInfo};
pub use client::{FailOutcome, WorkQueue};
pub use error::QueueError;
pub use job::{
    ClaimedJob, JobId, JobInfo, JobState, NewJob, QueueCounts, DEFAULT_BACKOFF,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, MAX_DEDUPE_KEY_BYTES, MAX_NAME_BYTES,
};
pub use processor::{
    append_once, AppendOnce, JobContext, JobError, JobFailure, Processor, JOB_TAG_KEY,
};
pub use schema::{COMPONENT, STEPS};
pub use worker::{ShutdownReport, Workers, WorkersHandle};
