//! The listener tables and the statements the runner uses, rendered once per
//! schema.

/// The migration component name of the listener tables.
pub const COMPONENT: &str = "listeners";

/// The listener tables' migration steps, in order. Never edit a released
/// step; append a new one.
pub const STEPS: &[&str] = &[
    // 1: checkpoints (with the lease and the last failure) and parked events.
    include_str!("migrations/0001_checkpoints.sql"),
];

/// Every statement, with the schema filled in.
#[derive(Debug)]
pub(crate) struct Statements {
    /// `$1` id: creates the checkpoint row if missing.
    pub(crate) ensure: String,
    /// `$1` id, `$2` owner, `$3` lease ms: takes the lease if free, expired or
    /// already ours, without waiting for a row lock; returns the position.
    pub(crate) acquire: String,
    /// `$1` id, `$2` owner, `$3` lease ms: extends our lease; no row when it
    /// is not ours any more.
    pub(crate) renew: String,
    /// `$1` id, `$2` owner, `$3` idle-in-transaction timeout (ms, text):
    /// inside a batch transaction, locks the row if our lease is live and
    /// returns the position.
    pub(crate) fence_lock: String,
    /// `$1` id, `$2` owner: the position if our lease is live (no lock).
    pub(crate) fence_read: String,
    /// `$1` id, `$2` owner, `$3` lease ms, `$4` new position, `$5` state:
    /// advances the locked row (transactional batches and parking).
    pub(crate) advance_locked: String,
    /// `$1` id, `$2` owner, `$3` lease ms, `$4` new position, `$5` state, `$6`
    /// expected old position: advances if our lease is live and nobody reset
    /// the row meanwhile (at-least-once batches).
    pub(crate) advance_fenced: String,
    /// `$1` id, `$2` owner, `$3` state, `$4` attempts, `$5` failing position,
    /// `$6` error text: records a handler failure.
    pub(crate) record_failure: String,
    /// `$1` id, `$2` position, `$3` type, `$4` event id, `$5` error, `$6`
    /// attempts: parks an event.
    pub(crate) park: String,
    /// `$1` id, `$2` owner: gives the lease up.
    pub(crate) release: String,
    /// `$1` id: the status columns and the parked count.
    pub(crate) status: String,
    /// `$1` id: the position (no lock).
    pub(crate) position: String,
    /// `$1` id: locks the row for a reset.
    pub(crate) lock_for_reset: String,
    /// `$1` id: rewinds the checkpoint and clears failures.
    pub(crate) reset: String,
    /// `$1` id: forgets the parked events.
    pub(crate) reset_parked: String,
    /// `$1` id: the parked events, oldest first.
    pub(crate) parked: String,
}

impl Statements {
    pub(crate) fn new(schema: &str) -> Self {
        let cp = format!("{schema}.listener_checkpoints");
        let parked = format!("{schema}.parked_events");
        let lease = "clock_timestamp() + $3::bigint * interval '1 millisecond'";
        Statements {
            ensure: format!(
                "INSERT INTO {cp} (listener_id) VALUES ($1) ON CONFLICT (listener_id) DO NOTHING"
            ),
            acquire: format!(
                "UPDATE {cp} SET owner = $2, lease_until = {lease}, updated_at = clock_timestamp() \
                 WHERE listener_id = (SELECT listener_id FROM {cp} WHERE listener_id = $1 \
                   AND (owner IS NULL OR owner = $2 OR lease_until IS NULL \
                        OR lease_until < clock_timestamp()) \
                   FOR UPDATE SKIP LOCKED) \
                 RETURNING position"
            ),
            renew: format!(
                "UPDATE {cp} SET lease_until = {lease} \
                 WHERE listener_id = $1 AND owner = $2 RETURNING position"
            ),
            fence_lock: format!(
                "SELECT position, set_config('idle_in_transaction_session_timeout', $3, true) \
                 FROM {cp} WHERE listener_id = $1 AND owner = $2 \
                   AND lease_until > clock_timestamp() FOR UPDATE"
            ),
            fence_read: format!(
                "SELECT position FROM {cp} WHERE listener_id = $1 AND owner = $2 \
                   AND lease_until > clock_timestamp()"
            ),
            advance_locked: format!(
                "UPDATE {cp} SET position = $4, lease_until = {lease}, state = $5, attempts = 0, \
                   error_position = NULL, updated_at = clock_timestamp() \
                 WHERE listener_id = $1 AND owner = $2"
            ),
            advance_fenced: format!(
                "UPDATE {cp} SET position = $4, lease_until = {lease}, state = $5, attempts = 0, \
                   error_position = NULL, updated_at = clock_timestamp() \
                 WHERE listener_id = $1 AND owner = $2 AND lease_until > clock_timestamp() \
                   AND position = $6 RETURNING position"
            ),
            record_failure: format!(
                "UPDATE {cp} SET state = $3, attempts = $4, error_position = $5, last_error = $6, \
                   last_error_at = clock_timestamp(), updated_at = clock_timestamp() \
                 WHERE listener_id = $1 AND owner = $2"
            ),
            park: format!(
                "INSERT INTO {parked} (listener_id, position, event_type, event_id, error, attempts) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (listener_id, position) DO UPDATE SET event_type = EXCLUDED.event_type, \
                   event_id = EXCLUDED.event_id, error = EXCLUDED.error, \
                   attempts = EXCLUDED.attempts, parked_at = clock_timestamp()"
            ),
            release: format!(
                "UPDATE {cp} SET owner = NULL, lease_until = NULL, state = 'stopped', \
                   updated_at = clock_timestamp() \
                 WHERE listener_id = $1 AND owner = $2"
            ),
            status: format!(
                "SELECT c.position, c.owner, COALESCE(c.lease_until > clock_timestamp(), false), \
                   c.state, c.attempts, c.error_position, c.last_error, c.last_error_at, \
                   (SELECT count(*) FROM {parked} p WHERE p.listener_id = c.listener_id) \
                 FROM {cp} c WHERE c.listener_id = $1"
            ),
            position: format!("SELECT position FROM {cp} WHERE listener_id = $1"),
            lock_for_reset: format!(
                "SELECT position FROM {cp} WHERE listener_id = $1 FOR UPDATE"
            ),
            reset: format!(
                "UPDATE {cp} SET position = 0, attempts = 0, error_position = NULL, \
                   last_error = NULL, last_error_at = NULL, updated_at = clock_timestamp(), \
                   state = CASE WHEN owner IS NULL THEN state ELSE 'running' END \
                 WHERE listener_id = $1"
            ),
            reset_parked: format!("DELETE FROM {parked} WHERE listener_id = $1"),
            parked: format!(
                "SELECT position, event_type, event_id, error, attempts, parked_at \
                 FROM {parked} WHERE listener_id = $1 ORDER BY position"
            ),
        }
    }
}
