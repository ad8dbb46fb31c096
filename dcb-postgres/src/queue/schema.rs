//! The work queue's tables: its migration component and steps.

/// The migration component name of the work queue.
pub const COMPONENT: &str = "work_queue";

/// The work queue's migration steps. Never edit a released step; append one.
pub const STEPS: &[&str] = &[
    // 1: the jobs table, the dedupe index over live jobs, and the indexes
    //    that claiming, reaping and the operations API use.
    include_str!("migrations/0001_jobs.sql"),
    // 2: claims without a sort: `jobs_claim` is walked once per (queue,
    //    kind) a claim serves, already in claim order, stopping after the
    //    batch; `jobs_ready_at` answers "when is the next job due" without
    //    reading a backlog of scheduled jobs. Both hold ready jobs only. The
    //    table churns (every job is updated at least twice), so it is
    //    vacuumed early: until then, the entries of claimed jobs stay at the
    //    head of `jobs_claim`, where every claim steps over them.
    include_str!("migrations/0002_claim_indexes.sql"),
    // 3: the worker sets running now, with the queues and kinds they serve,
    //    so that an operator (and every worker set) can tell ready jobs
    //    that no running worker will ever claim.
    include_str!("migrations/0003_worker_sets.sql"),
    // 4: the trace context of the span that enqueued a job, continued by
    //    each of its attempts.
    include_str!("migrations/0004_job_trace.sql"),
];

/// The NOTIFY channel of the queue in `schema`; the payload is a queue name.
pub(crate) fn channel(schema: &str) -> String {
    format!("dcb_jobs.{schema}")
}
