//! The listener tables and every statement the runner and the operators'
//! API use, rendered once per schema.

/// The migration component name of the listener tables.
pub const COMPONENT: &str = "listeners";

/// The listener tables' migration steps, in order. Never edit a released
/// step; append a new one.
pub const STEPS: &[&str] = &[
    // 1: checkpoints (with the lease and the last failure) and parked events.
    include_str!("migrations/0001_checkpoints.sql"),
    // 2: what operators see and ask through the database: each listener's
    //    delivery mode, a generation bumped by every reset (so progress is
    //    never read across a reset), a count of handled events; parked
    //    events kept once resolved (retried or skipped); and the requests
    //    (reset, rebuild, retry, skip) the leader carries out.
    include_str!("migrations/0002_operator_requests.sql"),
];

/// The NOTIFY channel operators' requests are announced on (the payload is
/// the listener id).
pub(crate) fn request_channel(schema: &str) -> String {
    format!("dcb_listeners.{schema}")
}

/// Every statement, with the schema filled in.
#[derive(Debug)]
pub(crate) struct Statements {
    /// `$1` id, `$2` mode: creates the checkpoint row if missing and records
    /// the delivery mode.
    pub(crate) ensure: String,
    /// `$1` id, `$2` owner, `$3` lease ms: takes the lease if free, expired or
    /// already ours, without waiting for a row lock; returns the position
    /// and the generation.
    pub(crate) acquire: String,
    /// `$1` id, `$2` owner, `$3` lease ms: extends our lease; no row when it
    /// is not ours any more.
    pub(crate) renew: String,
    /// `$1` id, `$2` owner, `$3` idle-in-transaction timeout (ms, text):
    /// inside a batch transaction, locks the row if our lease is live and
    /// returns the position and the generation.
    pub(crate) fence_lock: String,
    /// `$1` id, `$2` owner: the position, if our lease is live, and whether
    /// requests wait (no lock).
    pub(crate) fence_read: String,
    /// `$1` id, `$2` owner, `$3` lease ms, `$4` new position, `$5` state,
    /// `$6` events handled: advances the locked row (transactional batches
    /// and parking).
    pub(crate) advance_locked: String,
    /// `$1` id, `$2` owner, `$3` lease ms, `$4` new position, `$5` state, `$6`
    /// expected old position, `$7` events handled: advances if our lease is
    /// live and nobody reset the row meanwhile (at-least-once batches).
    pub(crate) advance_fenced: String,
    /// `$1` id, `$2` owner, `$3` state, `$4` attempts, `$5` failing position,
    /// `$6` error text: records a handler failure.
    pub(crate) record_failure: String,
    /// `$1` id, `$2` position, `$3` type, `$4` event id, `$5` error, `$6`
    /// attempts, `$7` resolution (NULL: unresolved): parks an event.
    pub(crate) park: String,
    /// `$1` id, `$2` owner: gives the lease up.
    pub(crate) release: String,
    /// `$1` id (NULL: every listener): the status columns and the parked
    /// count, by id.
    pub(crate) status: String,
    /// `$1` position: seconds since the event there was recorded.
    pub(crate) lag_time: String,
    /// The head of the log in this schema.
    pub(crate) head: String,
    /// `$1` id: the position (no lock).
    pub(crate) position: String,
    /// `$1` id, `$2` owner: on the locked row, rewinds the checkpoint, bumps
    /// the generation and clears failures; returns the new generation and
    /// the handled count.
    pub(crate) reset: String,
    /// `$1` id: forgets the parked events.
    pub(crate) reset_parked: String,
    /// `$1` id: the unresolved parked events, oldest first.
    pub(crate) parked: String,
    /// `$1` id, `$2` position: one unresolved parked event.
    pub(crate) parked_one: String,
    /// `$1` id, `$2` position, `$3` resolution: resolves a parked event.
    pub(crate) resolve_parked: String,
    /// `$1` id, `$2` position, `$3` error: a retry of a parked event failed.
    pub(crate) parked_failed_again: String,
    /// `$1` id, `$2` kind, `$3` position, `$4` requested by, `$5` channel:
    /// records a request for a known listener and announces it.
    pub(crate) request: String,
    /// `$1` id: pending requests, oldest first.
    pub(crate) pending: String,
    /// `$1` request, `$2` state, `$3` executed by, `$4` generation, `$5`
    /// target, `$6` handled before: a reset or rebuild carried out.
    pub(crate) start_request: String,
    /// `$1` request, `$2` state, `$3` executed by, `$4` error: a request
    /// done or failed.
    pub(crate) finish_request: String,
    /// `$1` request, `$2` position reached: a rebuild done.
    pub(crate) finish_rebuild: String,
    /// `$1` id, `$2` error: fails the running rebuilds of a listener
    /// (a later reset supersedes them).
    pub(crate) supersede: String,
    /// `$1` id: the running rebuild, if any.
    pub(crate) running_rebuild: String,
    /// `$1` request: the request and its listener's checkpoint.
    pub(crate) request_by_id: String,
    /// `$1` id, `$2` limit: the listener's requests, newest first.
    pub(crate) requests: String,
    /// `$1` age seconds: forgets finished requests older than that.
    pub(crate) purge_requests: String,
}

/// The columns [`Statements::request_by_id`] and [`Statements::requests`]
/// return.
const REQUEST_COLUMNS: &str = "r.id, r.listener_id, r.kind, r.position, r.state, r.requested_by, \
    r.requested_at, r.started_at, r.finished_at, r.executed_by, r.generation, r.target, \
    r.reached, r.handled_before, r.handled_after, r.error, \
    EXTRACT(EPOCH FROM (COALESCE(r.finished_at, clock_timestamp()) - r.started_at))::float8 \
        AS elapsed, \
    c.position AS checkpoint, c.generation AS checkpoint_generation, c.handled";

impl Statements {
    pub(crate) fn new(schema: &str) -> Self {
        let cp = format!("{schema}.listener_checkpoints");
        let parked = format!("{schema}.parked_events");
        let rq = format!("{schema}.listener_requests");
        let lease = "clock_timestamp() + $3::bigint * interval '1 millisecond'";
        Statements {
            ensure: format!(
                "INSERT INTO {cp} AS c (listener_id, mode) VALUES ($1, $2) \
                 ON CONFLICT (listener_id) DO UPDATE SET mode = EXCLUDED.mode \
                 WHERE c.mode IS DISTINCT FROM EXCLUDED.mode"
            ),
            acquire: format!(
                "UPDATE {cp} SET owner = $2, lease_until = {lease}, updated_at = clock_timestamp() \
                 WHERE listener_id = (SELECT listener_id FROM {cp} WHERE listener_id = $1 \
                   AND (owner IS NULL OR owner = $2 OR lease_until IS NULL \
                        OR lease_until < clock_timestamp()) \
                   FOR UPDATE SKIP LOCKED) \
                 RETURNING position, generation"
            ),
            renew: format!(
                "UPDATE {cp} SET lease_until = {lease} \
                 WHERE listener_id = $1 AND owner = $2 RETURNING position"
            ),
            fence_lock: format!(
                "SELECT position, generation, \
                   set_config('idle_in_transaction_session_timeout', $3, true) \
                 FROM {cp} WHERE listener_id = $1 AND owner = $2 \
                   AND lease_until > clock_timestamp() FOR UPDATE"
            ),
            fence_read: format!(
                "SELECT c.position, EXISTS (SELECT 1 FROM {rq} r \
                   WHERE r.listener_id = c.listener_id AND r.state = 'pending') \
                 FROM {cp} c WHERE c.listener_id = $1 AND c.owner = $2 \
                   AND c.lease_until > clock_timestamp()"
            ),
            advance_locked: format!(
                "UPDATE {cp} SET position = $4, lease_until = {lease}, state = $5, attempts = 0, \
                   error_position = NULL, handled = handled + $6, updated_at = clock_timestamp() \
                 WHERE listener_id = $1 AND owner = $2"
            ),
            advance_fenced: format!(
                "UPDATE {cp} SET position = $4, lease_until = {lease}, state = $5, attempts = 0, \
                   error_position = NULL, handled = handled + $7, updated_at = clock_timestamp() \
                 WHERE listener_id = $1 AND owner = $2 AND lease_until > clock_timestamp() \
                   AND position = $6 RETURNING position"
            ),
            record_failure: format!(
                "UPDATE {cp} SET state = $3, attempts = $4, error_position = $5, last_error = $6, \
                   last_error_at = clock_timestamp(), updated_at = clock_timestamp() \
                 WHERE listener_id = $1 AND owner = $2"
            ),
            park: format!(
                "INSERT INTO {parked} (listener_id, position, event_type, event_id, error, attempts, \
                   resolved_at, resolution) \
                 VALUES ($1, $2, $3, $4, $5, $6, \
                   CASE WHEN $7::text IS NULL THEN NULL ELSE clock_timestamp() END, $7) \
                 ON CONFLICT (listener_id, position) DO UPDATE SET event_type = EXCLUDED.event_type, \
                   event_id = EXCLUDED.event_id, error = EXCLUDED.error, \
                   attempts = EXCLUDED.attempts, parked_at = clock_timestamp(), \
                   resolved_at = EXCLUDED.resolved_at, resolution = EXCLUDED.resolution"
            ),
            release: format!(
                "UPDATE {cp} SET owner = NULL, lease_until = NULL, state = 'stopped', \
                   updated_at = clock_timestamp() \
                 WHERE listener_id = $1 AND owner = $2"
            ),
            status: format!(
                "SELECT c.listener_id, c.position, c.owner, \
                   COALESCE(c.lease_until > clock_timestamp(), false) AS leased, \
                   c.state, c.attempts, c.error_position, c.last_error, c.last_error_at, \
                   c.mode, c.generation, c.handled, c.updated_at, \
                   (SELECT count(*) FROM {parked} p \
                    WHERE p.listener_id = c.listener_id AND p.resolved_at IS NULL) AS parked \
                 FROM {cp} c WHERE $1::text IS NULL OR c.listener_id = $1 \
                 ORDER BY c.listener_id"
            ),
            lag_time: format!(
                "SELECT EXTRACT(EPOCH FROM (clock_timestamp() - recorded_at))::float8 \
                 FROM {schema}.events WHERE position = $1"
            ),
            head: format!("SELECT position FROM {schema}.head"),
            position: format!("SELECT position FROM {cp} WHERE listener_id = $1"),
            reset: format!(
                "UPDATE {cp} SET position = 0, generation = generation + 1, attempts = 0, \
                   error_position = NULL, last_error = NULL, last_error_at = NULL, \
                   state = 'running', updated_at = clock_timestamp() \
                 WHERE listener_id = $1 AND owner = $2 RETURNING generation, handled"
            ),
            reset_parked: format!("DELETE FROM {parked} WHERE listener_id = $1"),
            parked: format!(
                "SELECT position, event_type, event_id, error, attempts, parked_at \
                 FROM {parked} WHERE listener_id = $1 AND resolved_at IS NULL ORDER BY position"
            ),
            parked_one: format!(
                "SELECT position, event_type, event_id, error, attempts, parked_at \
                 FROM {parked} WHERE listener_id = $1 AND position = $2 AND resolved_at IS NULL"
            ),
            resolve_parked: format!(
                "UPDATE {parked} SET resolved_at = clock_timestamp(), resolution = $3 \
                 WHERE listener_id = $1 AND position = $2 AND resolved_at IS NULL"
            ),
            parked_failed_again: format!(
                "UPDATE {parked} SET error = $3, attempts = attempts + 1, \
                   parked_at = clock_timestamp() \
                 WHERE listener_id = $1 AND position = $2"
            ),
            request: format!(
                "WITH ins AS ( \
                   INSERT INTO {rq} (listener_id, kind, position, requested_by) \
                   SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM {cp} WHERE listener_id = $1) \
                   RETURNING id) \
                 SELECT id, pg_notify($5, $1)::text FROM ins"
            ),
            pending: format!(
                "SELECT id, kind, position FROM {rq} \
                 WHERE listener_id = $1 AND state = 'pending' ORDER BY id LIMIT 16"
            ),
            start_request: format!(
                "UPDATE {rq} SET state = $2, started_at = clock_timestamp(), \
                   finished_at = CASE WHEN $2 = 'running' THEN NULL ELSE clock_timestamp() END, \
                   executed_by = $3, generation = $4, target = $5, handled_before = $6, \
                   reached = CASE WHEN $2 = 'running' THEN NULL ELSE 0 END, \
                   handled_after = CASE WHEN $2 = 'running' THEN NULL ELSE $6 END \
                 WHERE id = $1"
            ),
            finish_request: format!(
                "UPDATE {rq} SET state = $2, finished_at = clock_timestamp(), \
                   started_at = COALESCE(started_at, clock_timestamp()), \
                   executed_by = COALESCE(executed_by, $3), error = $4 \
                 WHERE id = $1 AND state IN ('pending', 'running')"
            ),
            finish_rebuild: format!(
                "UPDATE {rq} r SET state = 'done', finished_at = clock_timestamp(), reached = $2, \
                   handled_after = c.handled \
                 FROM {cp} c \
                 WHERE r.id = $1 AND r.state = 'running' AND c.listener_id = r.listener_id \
                   AND c.generation = r.generation AND c.position >= r.target"
            ),
            supersede: format!(
                "UPDATE {rq} SET state = 'failed', finished_at = clock_timestamp(), error = $2 \
                 WHERE listener_id = $1 AND kind = 'rebuild' AND state = 'running'"
            ),
            running_rebuild: format!(
                "SELECT id, target, generation FROM {rq} \
                 WHERE listener_id = $1 AND kind = 'rebuild' AND state = 'running' \
                 ORDER BY id DESC LIMIT 1"
            ),
            request_by_id: format!(
                "SELECT {REQUEST_COLUMNS} FROM {rq} r \
                 JOIN {cp} c ON c.listener_id = r.listener_id WHERE r.id = $1"
            ),
            requests: format!(
                "SELECT {REQUEST_COLUMNS} FROM {rq} r \
                 JOIN {cp} c ON c.listener_id = r.listener_id \
                 WHERE r.listener_id = $1 ORDER BY r.id DESC LIMIT $2"
            ),
            purge_requests: format!(
                "DELETE FROM {rq} WHERE state IN ('done', 'failed') \
                   AND finished_at < clock_timestamp() - make_interval(secs => $1::float8)"
            ),
        }
    }
}
