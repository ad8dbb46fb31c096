//! Every statement of the work queue, rendered once per schema: the
//! worker-facing protocol ([`Statements`]) and the operator's
//! ([`AdminStatements`]).

use crate::migrations::render;

/// The columns of a job as the operations API reports it.
pub(super) const JOB_COLUMNS: &str = "id, queue, kind, payload, state, priority, run_at, attempt, \
    max_attempts, deadline, dedupe_key, triggered_by_event, last_error, locked_by, lease_until, \
    created_at, updated_at, finished_at";

/// The statements workers and enqueuers run.
#[derive(Debug)]
pub(super) struct Statements {
    /// One job: `$1`..`$13` its columns, `$14` the NOTIFY channel.
    pub(super) enqueue: String,
    /// [`enqueue`](Self::enqueue) with `$15` the job's trace context.
    pub(super) enqueue_traced: String,
    /// Many jobs: the same columns as arrays, `$14` the channel.
    pub(super) enqueue_many: String,
    /// [`enqueue_many`](Self::enqueue_many) with `$15` the trace contexts.
    pub(super) enqueue_many_traced: String,
    /// `$1`/`$2` (queue, kind) pairs, `$3` limit, `$4` lease seconds, `$5`
    /// worker id.
    pub(super) claim: String,
    /// Puts jobs whose lease expired back as due.
    pub(super) reap: String,
    /// `$1` id, `$2` attempt, `$3` token, `$4` lease seconds.
    pub(super) heartbeat: String,
    /// `$1`..`$3` fence arrays, `$4` lease seconds.
    pub(super) heartbeat_many: String,
    /// `$1` id, `$2` attempt, `$3` token.
    pub(super) complete: String,
    /// `$1`..`$3` fence arrays.
    pub(super) complete_many: String,
    /// `$1`..`$3` fence, `$4` delay seconds, `$5` error.
    pub(super) retry: String,
    /// `$1`..`$3` fence, `$4` error.
    pub(super) doom: String,
    /// `$1`..`$3` fence, `$4` error.
    pub(super) dead: String,
    /// `$1`..`$3` fence, `$4` channel.
    pub(super) release: String,
    /// `$1`..`$3` fence arrays, `$4` channel.
    pub(super) release_many: String,
    /// `$1`/`$2` (queue, kind) pairs: seconds until the next is due.
    pub(super) next_due: String,
    /// `$1` worker id, `$2` queues, `$3` kinds, `$4` seconds it counts as
    /// alive: records a worker set (and forgets long-gone ones).
    pub(super) announce: String,
    /// `$1` worker id: forgets a worker set that stopped.
    pub(super) retire: String,
}

/// The statement enqueueing one job; with `traced`, it writes the `trace`
/// column too. Jobs without a trace context leave the column out, so an
/// application that does not trace writes what a queue migrated before the
/// column existed accepts.
fn enqueue_one(traced: bool) -> String {
    let (column, value) = if traced {
        (", trace", ", $15::jsonb")
    } else {
        ("", "")
    };
    format!(
        "WITH ins AS (
            INSERT INTO {{schema}}.jobs (id, queue, kind, payload, priority, run_at,
                max_attempts, deadline, dedupe_key, triggered_by_event,
                triggered_by_position{column})
            VALUES ($1, $2, $3, $4, $5,
                COALESCE($6, now() + make_interval(secs => COALESCE($7::float8, 0))),
                $8, COALESCE($9, now() + make_interval(secs => $10::float8)), $11, $12, $13{value})
            ON CONFLICT DO NOTHING
            RETURNING id, queue)
        SELECT id, pg_notify($14, queue)::text AS notified FROM ins"
    )
}

/// The statement enqueueing many jobs (see [`enqueue_one`]).
fn enqueue_many(traced: bool) -> String {
    let (column, array, alias) = if traced {
        (", trace", ", $15::jsonb[]", ", trace")
    } else {
        ("", "", "")
    };
    format!(
        "WITH ins AS (
            INSERT INTO {{schema}}.jobs (id, queue, kind, payload, priority, run_at,
                max_attempts, deadline, dedupe_key, triggered_by_event,
                triggered_by_position{column})
            SELECT id, queue, kind, payload, priority,
                COALESCE(run_at, now() + make_interval(secs => COALESCE(run_after, 0))),
                max_attempts, COALESCE(deadline, now() + make_interval(secs => retry_for)),
                dedupe_key, triggered_by_event, triggered_by_position{column}
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int4[],
                $6::timestamptz[], $7::float8[], $8::int4[], $9::timestamptz[],
                $10::float8[], $11::text[], $12::uuid[], $13::int8[]{array})
                AS t(id, queue, kind, payload, priority, run_at, run_after, max_attempts,
                     deadline, retry_for, dedupe_key, triggered_by_event,
                     triggered_by_position{alias})
            ON CONFLICT DO NOTHING
            RETURNING id, queue)
        SELECT id, pg_notify($14, queue)::text AS notified FROM ins"
    )
}

impl Statements {
    pub(super) fn new(schema: &str) -> Self {
        let r = |s: &str| render(s, schema);
        Statements {
            enqueue: r(&enqueue_one(false)),
            enqueue_traced: r(&enqueue_one(true)),
            enqueue_many: r(&enqueue_many(false)),
            enqueue_many_traced: r(&enqueue_many(true)),
            // One walk of `jobs_claim` per (queue, kind) pair, in claim
            // order, locking at most a batch each; the merge keeps the
            // batch's best. The ids go to the UPDATE as an array so it finds
            // them through the primary key whatever the planner guesses for
            // their number; it needs no `state` test, the subquery locked
            // them as ready. With several pairs, rows locked but not kept
            // stay locked only until this statement ends (other claimers
            // skip them meanwhile).
            claim: r("UPDATE {schema}.jobs j
                SET state = 'running', attempt = j.attempt + 1,
                    lease_token = gen_random_uuid(),
                    lease_until = now() + make_interval(secs => $4::float8),
                    locked_by = $5, updated_at = now()
                WHERE j.id = ANY(ARRAY(
                    SELECT c.id
                    FROM unnest($1::text[], $2::text[]) AS p(queue, kind)
                    CROSS JOIN LATERAL (
                        SELECT r.id, r.priority, r.run_at FROM {schema}.jobs r
                        WHERE r.state = 'ready' AND r.queue = p.queue AND r.kind = p.kind
                          AND r.run_at <= now()
                        ORDER BY r.priority DESC, r.run_at, r.id
                        LIMIT $3
                        FOR UPDATE SKIP LOCKED) c
                    ORDER BY c.priority DESC, c.run_at, c.id
                    LIMIT $3))
                RETURNING j.id, j.queue, j.kind, j.payload, j.priority, j.run_at, j.attempt,
                    j.max_attempts, j.deadline, j.dedupe_key, j.triggered_by_event,
                    j.triggered_by_position, j.last_error, j.doomed, j.created_at,
                    j.lease_token, j.trace"),
            reap: r("WITH expired AS (
                    SELECT id FROM {schema}.jobs
                    WHERE state = 'running' AND lease_until < now()
                    LIMIT 1000
                    FOR UPDATE SKIP LOCKED)
                UPDATE {schema}.jobs j
                SET state = 'ready', run_at = now(), lease_token = NULL, lease_until = NULL,
                    last_error = left('lease expired during attempt ' || j.attempt
                        || ' (worker ' || COALESCE(j.locked_by, '?') || ' lost)'
                        || COALESCE('; before: ' || j.last_error, ''), 2000),
                    updated_at = now()
                FROM expired WHERE j.id = expired.id
                RETURNING j.id, j.queue, j.kind, j.attempt, j.locked_by"),
            heartbeat: r("UPDATE {schema}.jobs
                SET lease_until = now() + make_interval(secs => $4::float8), updated_at = now()
                WHERE id = $1 AND attempt = $2 AND lease_token = $3 AND state = 'running'"),
            // The batch statements below find their rows through the
            // primary key (`j.id = ANY($1)`), whatever the planner thinks of
            // the arrays' size, and test no `state`: a lease token is set
            // exactly while a job runs, and a `state = 'running'` test would
            // let the planner walk `jobs_leases` instead, which until the
            // next vacuum also holds an entry for every finished job.
            heartbeat_many: r("UPDATE {schema}.jobs j
                SET lease_until = now() + make_interval(secs => $4::float8), updated_at = now()
                FROM unnest($1::uuid[], $2::int4[], $3::uuid[]) AS b(id, attempt, lease_token)
                WHERE j.id = ANY($1) AND j.id = b.id AND j.attempt = b.attempt
                  AND j.lease_token = b.lease_token
                RETURNING j.id, b.attempt"),
            complete: r("UPDATE {schema}.jobs
                SET state = 'succeeded', lease_token = NULL, lease_until = NULL,
                    finished_at = now(), updated_at = now()
                WHERE id = $1 AND attempt = $2 AND lease_token = $3 AND state = 'running'"),
            complete_many: r("UPDATE {schema}.jobs j
                SET state = 'succeeded', lease_token = NULL, lease_until = NULL,
                    finished_at = now(), updated_at = now()
                FROM unnest($1::uuid[], $2::int4[], $3::uuid[]) AS b(id, attempt, lease_token)
                WHERE j.id = ANY($1) AND j.id = b.id AND j.attempt = b.attempt
                  AND j.lease_token = b.lease_token
                RETURNING j.id, b.attempt"),
            retry: r("UPDATE {schema}.jobs
                SET state = 'ready', lease_token = NULL, lease_until = NULL,
                    run_at = now() + make_interval(secs => $4::float8), last_error = $5,
                    updated_at = now()
                WHERE id = $1 AND attempt = $2 AND lease_token = $3 AND state = 'running'
                RETURNING run_at"),
            doom: r("UPDATE {schema}.jobs
                SET doomed = true, last_error = $4, updated_at = now()
                WHERE id = $1 AND attempt = $2 AND lease_token = $3 AND state = 'running'"),
            dead: r("UPDATE {schema}.jobs
                SET state = 'dead', lease_token = NULL, lease_until = NULL, last_error = $4,
                    finished_at = now(), updated_at = now()
                WHERE id = $1 AND attempt = $2 AND lease_token = $3 AND state = 'running'"),
            release: r("WITH released AS (
                    UPDATE {schema}.jobs
                    SET state = 'ready', attempt = attempt - 1, lease_token = NULL,
                        lease_until = NULL, run_at = now(), updated_at = now()
                    WHERE id = $1 AND attempt = $2 AND lease_token = $3 AND state = 'running'
                    RETURNING queue)
                SELECT pg_notify($4, queue)::text FROM released"),
            release_many: r("WITH released AS (
                    UPDATE {schema}.jobs j
                    SET state = 'ready', attempt = j.attempt - 1, lease_token = NULL,
                        lease_until = NULL, run_at = now(), updated_at = now()
                    FROM unnest($1::uuid[], $2::int4[], $3::uuid[]) AS b(id, attempt, lease_token)
                    WHERE j.id = ANY($1) AND j.id = b.id AND j.attempt = b.attempt
                      AND j.lease_token = b.lease_token
                    RETURNING j.id, b.attempt, j.queue)
                SELECT id, attempt, pg_notify($4, queue)::text AS notified FROM released"),
            // The earliest run_at of each pair is the first entry of its
            // range in `jobs_ready_at`.
            next_due: r("SELECT EXTRACT(EPOCH FROM (min(n.run_at) - now()))::float8
                FROM unnest($1::text[], $2::text[]) AS p(queue, kind)
                CROSS JOIN LATERAL (
                    SELECT r.run_at FROM {schema}.jobs r
                    WHERE r.state = 'ready' AND r.queue = p.queue AND r.kind = p.kind
                    ORDER BY r.run_at
                    LIMIT 1) n"),
            announce: r("WITH gone AS (
                    DELETE FROM {schema}.job_workers
                    WHERE expires_at < now() - interval '1 hour')
                INSERT INTO {schema}.job_workers (worker_id, queues, kinds, expires_at)
                VALUES ($1, $2, $3, now() + make_interval(secs => $4::float8))
                ON CONFLICT (worker_id) DO UPDATE
                SET queues = EXCLUDED.queues, kinds = EXCLUDED.kinds, seen_at = now(),
                    expires_at = EXCLUDED.expires_at"),
            retire: r("DELETE FROM {schema}.job_workers WHERE worker_id = $1"),
        }
    }
}

/// Every (queue, kind) pair with ready jobs, one probe of `jobs_claim` per
/// pair (a loose index scan), in order.
const READY_PAIRS: &str = "WITH RECURSIVE pairs(queue, kind) AS (
        (SELECT queue, kind FROM {schema}.jobs WHERE state = 'ready'
         ORDER BY queue, kind LIMIT 1)
        UNION ALL
        SELECT n.queue, n.kind FROM pairs p
        CROSS JOIN LATERAL (
            SELECT j.queue, j.kind FROM {schema}.jobs j
            WHERE j.state = 'ready' AND (j.queue, j.kind) > (p.queue, p.kind)
            ORDER BY j.queue, j.kind LIMIT 1) n)";

/// The statements of the operations API.
#[derive(Debug)]
pub(super) struct AdminStatements {
    /// `$1` queue or NULL: jobs per state (ready split into due and later).
    pub(super) counts: String,
    /// Jobs per queue and state, every queue.
    pub(super) counts_by_queue: String,
    /// `$1` queue or NULL: seconds the oldest due job has waited.
    pub(super) oldest_ready: String,
    /// `$1` state, `$2` queue, `$3` kind (each NULL for any), `$4` limit,
    /// `$5` offset: jobs, most recently changed first.
    pub(super) jobs: String,
    /// `$1` id.
    pub(super) job: String,
    /// `$1` id, `$2` default attempts, `$3` channel.
    pub(super) redrive: String,
    /// `$1` queue or NULL, `$2` default attempts: every dead job.
    pub(super) redrive_all: String,
    /// `$1` id.
    pub(super) cancel: String,
    /// `$1` age seconds, `$2` dead ones too.
    pub(super) purge: String,
    /// Ready jobs of (queue, kind) pairs no live worker set serves.
    pub(super) unserved: String,
    /// The worker sets recorded.
    pub(super) worker_sets: String,
}

impl AdminStatements {
    pub(super) fn new(schema: &str) -> Self {
        let r = |s: &str| render(s, schema);
        AdminStatements {
            counts: r(
                "SELECT state, (state = 'ready' AND run_at > now()) AS later, count(*) AS n
                FROM {schema}.jobs WHERE ($1::text IS NULL OR queue = $1)
                GROUP BY 1, 2",
            ),
            counts_by_queue: r(
                "SELECT queue, state, (state = 'ready' AND run_at > now()) AS later,
                    count(*) AS n
                FROM {schema}.jobs GROUP BY 1, 2, 3 ORDER BY 1",
            ),
            // The first entry of each pair's range in `jobs_ready_at` is its
            // oldest ready job.
            oldest_ready: r(&format!(
                "{READY_PAIRS}
                SELECT EXTRACT(EPOCH FROM (now() - min(n.run_at)))::float8
                FROM pairs p
                CROSS JOIN LATERAL (
                    SELECT r.run_at FROM {{schema}}.jobs r
                    WHERE r.state = 'ready' AND r.queue = p.queue AND r.kind = p.kind
                    ORDER BY r.run_at LIMIT 1) n
                WHERE ($1::text IS NULL OR p.queue = $1) AND n.run_at <= now()"
            )),
            jobs: r(&format!(
                "SELECT {JOB_COLUMNS} FROM {{schema}}.jobs
                WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR queue = $2)
                  AND ($3::text IS NULL OR kind = $3)
                ORDER BY updated_at DESC, id LIMIT $4 OFFSET $5"
            )),
            job: r(&format!(
                "SELECT {JOB_COLUMNS} FROM {{schema}}.jobs WHERE id = $1"
            )),
            redrive: r("WITH redriven AS (
                    UPDATE {schema}.jobs
                    SET state = 'ready', attempt = 0, doomed = false, run_at = now(),
                        deadline = NULL, finished_at = NULL, updated_at = now(),
                        max_attempts = COALESCE(max_attempts, $2)
                    WHERE id = $1 AND state = 'dead'
                    RETURNING queue)
                SELECT pg_notify($3, queue)::text FROM redriven"),
            redrive_all: r("WITH redriven AS (
                    UPDATE {schema}.jobs
                    SET state = 'ready', attempt = 0, doomed = false, run_at = now(),
                        deadline = NULL, finished_at = NULL, updated_at = now(),
                        max_attempts = COALESCE(max_attempts, $2)
                    WHERE state = 'dead' AND ($1::text IS NULL OR queue = $1)
                    RETURNING queue)
                SELECT queue, count(*) AS n FROM redriven GROUP BY queue"),
            cancel: r("UPDATE {schema}.jobs
                SET state = 'cancelled', lease_token = NULL, lease_until = NULL,
                    finished_at = now(), updated_at = now()
                WHERE id = $1 AND state IN ('ready', 'running', 'dead')"),
            purge: r("DELETE FROM {schema}.jobs
                WHERE (state IN ('succeeded', 'cancelled') OR ($2 AND state = 'dead'))
                  AND finished_at < now() - make_interval(secs => $1::float8)"),
            // Counted up to 10,000 per pair: the point is that they exist.
            unserved: r(&format!(
                "{READY_PAIRS}
                SELECT p.queue, p.kind,
                    (SELECT count(*) FROM (
                        SELECT 1 FROM {{schema}}.jobs r
                        WHERE r.state = 'ready' AND r.queue = p.queue AND r.kind = p.kind
                        LIMIT 10000) c) AS ready,
                    (SELECT r.run_at FROM {{schema}}.jobs r
                     WHERE r.state = 'ready' AND r.queue = p.queue AND r.kind = p.kind
                     ORDER BY r.run_at LIMIT 1) AS oldest
                FROM pairs p
                WHERE NOT EXISTS (
                    SELECT 1 FROM {{schema}}.job_workers w
                    WHERE w.expires_at > now() AND p.queue = ANY (w.queues)
                      AND p.kind = ANY (w.kinds))
                ORDER BY 1, 2"
            )),
            worker_sets: r("SELECT worker_id, queues, kinds, started_at, seen_at,
                    expires_at > now() AS alive
                FROM {schema}.job_workers ORDER BY worker_id"),
        }
    }
}
