//! Versioned, idempotent schema migrations, shared by every dcb component
//! that keeps tables in Postgres (the event store, listeners, the work queue).
//!
//! Each component owns an ordered list of steps. Step `i` (0-based) is
//! version `i + 1`. [`run`] applies the steps not yet recorded in
//! `{schema}.dcb_migrations`, in order, each in the same transaction as its
//! record, under a transaction-scoped advisory lock, so several processes
//! starting at once neither race nor apply a step twice.
//!
//! Steps are plain SQL (several statements are fine). Every `{schema}` in a
//! step is replaced by the schema name, which [`run`] first checks is a plain
//! lower-case identifier (`[a-z_][a-z0-9_]*`, at most 50 bytes), so it can be
//! used unquoted both as an identifier and inside string literals.
//!
//! For DBA-run DDL, call [`migrate_store`] (or [`run`] with a component's
//! steps) from a deployment tool and start the store with
//! `migrate_on_start(false)`.

use sqlx::{Executor, PgPool};
use tracing::Instrument;

/// The event store's migration component name.
pub const EVENT_STORE_COMPONENT: &str = "event_store";

/// The event store's steps, in order. Never edit a released step; append a
/// new one.
pub const EVENT_STORE_STEPS: &[&str] = &[
    // 1: the log, its tag index and the head row.
    r#"
CREATE TABLE IF NOT EXISTS {schema}.events (
    position    bigint      PRIMARY KEY,
    event_type  text        NOT NULL,
    tags        text[]      NOT NULL,
    payload     bytea       NOT NULL,
    metadata    jsonb       NOT NULL,
    event_id    uuid        NOT NULL UNIQUE,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS events_type_position ON {schema}.events (event_type, position);
CREATE TABLE IF NOT EXISTS {schema}.event_tags (
    tag        text   NOT NULL,
    event_type text   NOT NULL,
    position   bigint NOT NULL,
    PRIMARY KEY (tag, event_type, position)
);
CREATE TABLE IF NOT EXISTS {schema}.head (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    position bigint  NOT NULL
);
INSERT INTO {schema}.head (id, position) VALUES (true, 0) ON CONFLICT (id) DO NOTHING;
"#,
    // 2: an append batch as one server-side call (see writer.rs): one round
    // trip per batch, statements planned once per session.
    APPEND_BATCH_FUNCTION,
    // 3: the same function again, for databases that ran an earlier step 2
    // whose event-id check could be planned as a scan of the whole log.
    APPEND_BATCH_FUNCTION,
    // 4: the function the writer calls now (see the constant).
    APPEND_BATCH_V2_FUNCTION,
    // 5: the reader's function (see the constant).
    READ_FIRST_PAGES_FUNCTION,
    // 6: tags and types compare bytewise. Under a database's own collation
    // (en_US.UTF-8, C.UTF-8, ...) every comparison in the tag and type
    // indexes copied both strings and called the C library's collation;
    // "C" compares bytes. Equality is the same either way, and no query
    // orders by these columns. Rebuilds the indexes on them (no rewrite of
    // the tables), under an exclusive lock: on a large log, run it in a
    // quiet moment.
    r#"
ALTER TABLE {schema}.event_tags
    ALTER COLUMN tag TYPE text COLLATE "C",
    ALTER COLUMN event_type TYPE text COLLATE "C";
ALTER TABLE {schema}.events
    ALTER COLUMN event_type TYPE text COLLATE "C";
"#,
];

// The parts every version of the batch function shares, as macros so that
// `concat!` can put each version's whole text together at compile time (a
// released step's text must never change, so each version keeps its own
// constant).

/// The arguments after the condition items: requests, events, in-batch
/// matches and repeated ids.
macro_rules! batch_function_events_arguments {
    () => {
        r#"    r_after    bigint[],  -- $6  per request: its `after` (0: none)
    r_last     int[],     -- $7  per request: the ordinal of its last event
    e_request  int[],     -- $8  per event (grouped by request, in order): its request
    e_type     text[],    -- $9
    e_tags     text[],    -- $10 per event: its tags, an array literal
    e_payload  bytea[],   -- $11
    e_metadata text[],    -- $12 JSON text
    e_id       uuid[],    -- $13
    d_request  int[],     -- $14 per (request, earlier request of the batch with an
    d_event    int[],     -- $15 event its condition matches), sorted by request:
                          --     the request and the last such event
    u_request  int[],     -- $16 per event id also in an earlier request, sorted
    u_event    int[],     -- $17 by request: the request, its event with that id,
    u_other    int[],     -- $18 and the earlier request
"#
    };
}

/// From the return type to the head lock: declarations, the isolation
/// check, the lock.
macro_rules! batch_function_prologue {
    () => {
        r#") RETURNS TABLE (outcome int, first_position bigint, last_position bigint, duplicate uuid)
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    n int := coalesce(cardinality(r_last), 0);
    nd int := coalesce(cardinality(d_request), 0);
    nu int := coalesce(cardinality(u_request), 0);
    head_position bigint;
    next_position bigint;
    failed int[];
    taken uuid[];
    is_failed boolean[] := array_fill(false, ARRAY[n]);
    out_outcome int[] := array_fill(0, ARRAY[n]);
    out_first bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    out_last bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    out_dup uuid[] := array_fill(NULL::uuid, ARRAY[n]);
    first_event int := 1;
    conflict boolean;
    dup int;
    other int;
    j int;
    x int;
    item int;
    type_hit boolean;
    d int := 1;
    u int := 1;
BEGIN
    -- The checks below rely on each statement taking a fresh snapshot, which
    -- is what READ COMMITTED does inside a VOLATILE function.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'append_batch needs READ COMMITTED, not %',
            current_setting('transaction_isolation');
    END IF;
    -- Lock the head row FIRST: every writer of every process takes this lock
    -- before assigning positions. The holder before us released it only
    -- after its commit became visible, and in READ COMMITTED every later
    -- statement of this VOLATILE function takes a new snapshot, so the
    -- checks below see every event committed before we got the lock; the
    -- locked row read here is the latest head.
    SELECT h.position INTO head_position FROM {schema}.head h FOR UPDATE;
    IF head_position IS NULL THEN
        RAISE EXCEPTION '{schema}.head has no row';
    END IF;

"#
    };
}

/// From the in-order pass over the requests to the end: outcomes, inserts,
/// head, notify, and the function's plan settings.
macro_rules! batch_function_epilogue {
    () => {
        r#"    -- Each request in order: its stored check (above), then the requests of
    -- this batch accepted before it, then its event ids. A rejected request
    -- gets its own outcome and takes no position.
    next_position := head_position + 1;
    FOR j IN 1..n LOOP
        conflict := is_failed[j];
        WHILE d <= nd AND d_request[d] = j LOOP
            x := d_event[d];
            other := e_request[x];
            IF out_first[other] IS NOT NULL
               AND out_first[other] + (x - coalesce(r_last[other - 1], 0) - 1) > r_after[j] THEN
                conflict := true;
            END IF;
            d := d + 1;
        END LOOP;
        dup := NULL;
        IF taken IS NOT NULL THEN
            FOR x IN first_event..r_last[j] LOOP
                IF e_id[x] = ANY (taken) THEN
                    dup := x;
                    EXIT;
                END IF;
            END LOOP;
        END IF;
        WHILE u <= nu AND u_request[u] = j LOOP
            IF out_first[u_other[u]] IS NOT NULL AND (dup IS NULL OR u_event[u] < dup) THEN
                dup := u_event[u];
            END IF;
            u := u + 1;
        END LOOP;
        IF conflict THEN
            out_outcome[j] := 1;
        ELSIF dup IS NOT NULL THEN
            out_outcome[j] := 2;
            out_dup[j] := e_id[dup];
        ELSE
            out_first[j] := next_position;
            next_position := next_position + (r_last[j] - first_event + 1);
            out_last[j] := next_position - 1;
        END IF;
        first_event := r_last[j] + 1;
    END LOOP;

    IF next_position > head_position + 1 THEN
        WITH ev AS (
            SELECT out_first[v.request] + (v.ord - coalesce(r_last[v.request - 1], 0) - 1)
                       AS position,
                   v.event_type, v.tags::text[] AS tags, v.payload, v.metadata, v.event_id
            FROM unnest(e_request, e_type, e_tags, e_payload, e_metadata, e_id)
                 WITH ORDINALITY AS v(request, event_type, tags, payload, metadata, event_id, ord)
            WHERE out_first[v.request] IS NOT NULL
        ), inserted AS (
            INSERT INTO {schema}.events (position, event_type, tags, payload, metadata, event_id)
            SELECT ev.position, ev.event_type, ev.tags, ev.payload, ev.metadata::jsonb, ev.event_id
            FROM ev
        )
        INSERT INTO {schema}.event_tags (tag, event_type, position)
        SELECT DISTINCT t.tag, ev.event_type, ev.position
        FROM ev CROSS JOIN LATERAL unnest(ev.tags) AS t(tag);
        UPDATE {schema}.head SET position = next_position - 1;
        PERFORM pg_notify(channel, (next_position - 1)::text);
    END IF;
    RETURN QUERY SELECT * FROM unnest(out_outcome, out_first, out_last, out_dup);
END
$fn$
-- Plans: the statements above take arrays, so the planner's estimates say
-- little about a batch, and left to itself it re-plans them (a custom plan)
-- on nearly every call, which cost more than running them. So their
-- generic plans are used from the first call, and, since such a plan
-- outlives the log's growth, a sequential scan (a walk of the whole log on
-- the writer's serial path) is ruled out: every lookup here has an index.
-- No JIT either: the penalty that rules scans out inflates plan costs past
-- `jit_above_cost`, and compiling costs far more than these statements run.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off;
"#
    };
}

/// The `{schema}.append_batch` function the writer called once per batch
/// before step 4 (steps 2 and 3: `CREATE OR REPLACE` makes a re-run
/// harmless).
const APPEND_BATCH_FUNCTION: &str = concat!(
    r#"
CREATE OR REPLACE FUNCTION {schema}.append_batch(
    c_request  int[],     -- $1  per condition item: its request (1-based)
    c_after    bigint[],  -- $2  per item: its request's `after` (0: none)
    c_probe    text[],    -- $3  per item: its first tag; NULL when it has none
    c_types    text[],    -- $4  per item: its types, an array literal; NULL: any type
    c_tags     text[],    -- $5  per item: all its tags, an array literal, when
                          --     it has more than one; else NULL
"#,
    batch_function_events_arguments!(),
    r#"    channel    text       -- $19 NOTIFY channel
"#,
    batch_function_prologue!(),
    r#"    -- Requests whose condition matches a stored event after their `after`:
    -- tagged and match-all items here, in one statement. Its plan is
    -- generic (the items are rows of an unnest), so every branch is written
    -- so that only an index path makes sense whatever the estimates: a
    -- tagged item probes the event_tags primary key with its first tag (per
    -- type when it has types) and re-checks its other tags on events; a
    -- match-all item compares the last position.
    SELECT array_agg(DISTINCT f.request) INTO failed FROM (
-- condition check: begin
SELECT c.request
FROM unnest($1, $2, $3, $4, $5) AS c(request, after, probe, types, tags)
WHERE CASE
    WHEN c.probe IS NOT NULL AND c.types IS NOT NULL THEN EXISTS (
        SELECT 1 FROM unnest(c.types::text[]) AS ty(name)
        CROSS JOIN LATERAL (
            SELECT 1 FROM {schema}.event_tags t
            WHERE t.tag = c.probe AND t.event_type = ty.name AND t.position > c.after
              AND (c.tags IS NULL OR EXISTS (
                  SELECT 1 FROM {schema}.events e
                  WHERE e.position = t.position AND e.tags @> c.tags::text[]))
            LIMIT 1) AS hit)
    WHEN c.probe IS NOT NULL THEN EXISTS (
        SELECT 1 FROM {schema}.event_tags t
        WHERE t.tag = c.probe AND t.position > c.after
          AND (c.tags IS NULL OR EXISTS (
              SELECT 1 FROM {schema}.events e
              WHERE e.position = t.position AND e.tags @> c.tags::text[])))
    WHEN c.types IS NULL THEN (SELECT max(e.position) FROM {schema}.events e) > c.after
    ELSE false
END
-- condition check: end
    ) f;
    IF failed IS NOT NULL THEN
        FOREACH j IN ARRAY failed LOOP
            is_failed[j] := true;
        END LOOP;
    END IF;
    -- Type-only items (rare), one by one: a generic plan cannot tell a rare
    -- type or a recent `after` from a common one and may walk the log, so
    -- each is planned with its values (EXECUTE), like a custom plan.
    FOR item IN 1..coalesce(cardinality(c_request), 0) LOOP
        IF c_probe[item] IS NULL AND c_types[item] IS NOT NULL
           AND NOT is_failed[c_request[item]] THEN
            EXECUTE
-- type check: begin
'SELECT EXISTS (SELECT 1 FROM {schema}.events e WHERE e.event_type = ANY ($1) AND e.position > $2)'
-- type check: end
            INTO type_hit USING c_types[item]::text[], c_after[item];
            IF type_hit THEN
                is_failed[c_request[item]] := true;
            END IF;
        END IF;
    END LOOP;

    -- Event ids already stored: one probe of the unique index per id.
    SELECT array_agg(e.event_id) INTO taken FROM (
-- id check: begin
SELECT e.event_id FROM unnest($13) AS i(id) JOIN {schema}.events e ON e.event_id = i.id
-- id check: end
    ) e;

"#,
    batch_function_epilogue!(),
);

/// Step 5: `{schema}.read_first_pages`, the reader's one statement for the
/// first pages of many tagged forward reads (see `reader.rs`), with the head,
/// in one snapshot.
///
/// Arguments, one element per probe: the read it belongs to (1-based), the
/// tag it probes, one of its item's types (NULL: any type), all the item's
/// tags as an array literal when it has more than one (else NULL), the
/// lowest position, the page size. An item with several types is one probe
/// per type, so every probe walks the `event_tags` primary key in position
/// order and stops after a page.
///
/// Rows: `(head, req, event columns...)`; a position matched by several
/// items of a read comes once per item. With no match at all, one row of
/// the head and NULLs.
///
/// A function for its plan settings: as a plain statement it was planned
/// again on a good share of calls (the planner's guess at the generic plan
/// lost to its custom plans), and planning it cost more than running it.
const READ_FIRST_PAGES_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION {schema}.read_first_pages(
    p_req   int[],
    p_probe text[],
    p_type  text[],
    p_tags  text[],
    p_low   bigint[],
    p_page  bigint[]
) RETURNS TABLE (head bigint, req int, "position" bigint, event_type text, tags text[],
                 payload bytea, metadata jsonb, event_id uuid, recorded_at timestamptz)
LANGUAGE plpgsql STABLE
AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
-- first pages: begin
SELECT h.position AS head, r.*
FROM (SELECT (SELECT position FROM {schema}.head) AS position) h
LEFT JOIN LATERAL (
    SELECT p.req, e.position, e.event_type, e.tags, e.payload, e.metadata, e.event_id, e.recorded_at
    FROM unnest($1, $2, $3, $4, $5, $6) AS p(req, probe, probe_type, all_tags, low, page)
    CROSS JOIN LATERAL (
        (SELECT t.position FROM {schema}.event_tags t
         WHERE p.probe_type IS NOT NULL AND t.tag = p.probe AND t.event_type = p.probe_type
           AND t.position >= p.low AND t.position <= h.position
           AND (p.all_tags IS NULL OR EXISTS (
               SELECT 1 FROM {schema}.events f
               WHERE f.position = t.position AND f.tags @> p.all_tags::text[]))
         ORDER BY t.position LIMIT p.page)
        UNION ALL
        (SELECT t.position FROM {schema}.event_tags t
         WHERE p.probe_type IS NULL AND t.tag = p.probe
           AND t.position >= p.low AND t.position <= h.position
           AND (p.all_tags IS NULL OR EXISTS (
               SELECT 1 FROM {schema}.events f
               WHERE f.position = t.position AND f.tags @> p.all_tags::text[]))
         ORDER BY t.position LIMIT p.page)
    ) x
    JOIN {schema}.events e ON e.position = x.position
) r ON true
-- first pages: end
    ;
END
$fn$
-- Generic plans from the first call (no planning per call), no scans of
-- the log whatever the estimates were when the plan was made (it outlives
-- the log's growth), no JIT (see append_batch).
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off;
"#;

/// Step 4: `{schema}.append_batch_v2`, what the writer calls now. Unlike
/// `append_batch` (kept for instances of an older release during a rolling
/// upgrade; both take the same head lock), it probes the tag index once per
/// (item, type), so every probe is a plain index lookup, and it looks stored
/// event ids up only when asked.
const APPEND_BATCH_V2_FUNCTION: &str = concat!(
    r#"
CREATE OR REPLACE FUNCTION {schema}.append_batch_v2(
    c_request  int[],     -- $1  per probe (one per condition item and type of
                          --     it): its request (1-based)
    c_after    bigint[],  -- $2  per probe: its request's `after` (0: none)
    c_probe    text[],    -- $3  per probe: its item's first tag; NULL when none
    c_type     text[],    -- $4  per probe: one type of its item; NULL: any type
    c_tags     text[],    -- $5  per probe: all its item's tags, an array literal,
                          --     when it has more than one; else NULL
"#,
    batch_function_events_arguments!(),
    r#"    channel    text,      -- $19 NOTIFY channel
    check_ids  boolean    -- $20 look stored event ids up first; without it a
                          --     stored id fails the call (unique violation),
                          --     and the caller calls again with it
"#,
    batch_function_prologue!(),
    r#"    -- Requests whose condition matches a stored event after their `after`:
    -- tagged and match-all items here, in one statement. Its plan is
    -- generic (the items are rows of an unnest), so every branch is written
    -- so that only an index path makes sense whatever the estimates: a
    -- tagged item probes the event_tags primary key with its first tag (per
    -- type when it has types) and re-checks its other tags on events; a
    -- match-all item compares the last position.
    SELECT array_agg(DISTINCT f.request) INTO failed FROM (
-- condition check: begin
SELECT c.request
FROM unnest($1, $2, $3, $4, $5) AS c(request, after, probe, probe_type, tags)
WHERE CASE
    WHEN c.probe IS NOT NULL AND c.probe_type IS NOT NULL THEN EXISTS (
        SELECT 1 FROM {schema}.event_tags t
        WHERE t.tag = c.probe AND t.event_type = c.probe_type AND t.position > c.after
          AND (c.tags IS NULL OR EXISTS (
              SELECT 1 FROM {schema}.events e
              WHERE e.position = t.position AND e.tags @> c.tags::text[])))
    WHEN c.probe IS NOT NULL THEN EXISTS (
        SELECT 1 FROM {schema}.event_tags t
        WHERE t.tag = c.probe AND t.position > c.after
          AND (c.tags IS NULL OR EXISTS (
              SELECT 1 FROM {schema}.events e
              WHERE e.position = t.position AND e.tags @> c.tags::text[])))
    WHEN c.probe_type IS NULL THEN (SELECT max(e.position) FROM {schema}.events e) > c.after
    ELSE false
END
-- condition check: end
    ) f;
    IF failed IS NOT NULL THEN
        FOREACH j IN ARRAY failed LOOP
            is_failed[j] := true;
        END LOOP;
    END IF;
    -- Type-only probes (rare), one by one: a generic plan cannot tell a rare
    -- type or a recent `after` from a common one and may walk the log, so
    -- each is planned with its values (EXECUTE), like a custom plan.
    FOR item IN 1..coalesce(cardinality(c_request), 0) LOOP
        IF c_probe[item] IS NULL AND c_type[item] IS NOT NULL
           AND NOT is_failed[c_request[item]] THEN
            EXECUTE
-- type check: begin
'SELECT EXISTS (SELECT 1 FROM {schema}.events e WHERE e.event_type = $1 AND e.position > $2)'
-- type check: end
            INTO type_hit USING c_type[item], c_after[item];
            IF type_hit THEN
                is_failed[c_request[item]] := true;
            END IF;
        END IF;
    END LOOP;

    -- Event ids already stored, when asked: one probe of the unique index
    -- per id. Most batches have none, and then the unique index finds them
    -- anyway, on insert; so the caller asks only after such a failure.
    IF check_ids THEN
    SELECT array_agg(e.event_id) INTO taken FROM (
-- id check: begin
SELECT e.event_id FROM unnest($13) AS i(id) JOIN {schema}.events e ON e.event_id = i.id
-- id check: end
    ) e;
    END IF;

"#,
    batch_function_epilogue!(),
);

/// Checks that `schema` is a plain lower-case identifier safe to splice into
/// SQL unquoted.
///
/// # Errors
/// [`sqlx::Error::Configuration`] naming the bad value.
pub fn validate_schema(schema: &str) -> Result<(), sqlx::Error> {
    let mut chars = schema.chars();
    let ok = schema.len() <= 50
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(sqlx::Error::Configuration(
            format!(
                "invalid schema name {schema:?}: use a lower-case identifier \
                 ([a-z_][a-z0-9_]*, at most 50 bytes)"
            )
            .into(),
        ))
    }
}

/// Replaces every `{schema}` in `sql` with `schema`.
pub fn render(sql: &str, schema: &str) -> String {
    sql.replace("{schema}", schema)
}

/// Runs `steps` (SQL, may contain `{schema}` placeholders, applied in order,
/// each step once) for `component`, tracking applied versions in
/// `{schema}.dcb_migrations(component text, version int, applied_at
/// timestamptz, primary key(component, version))`, under a
/// transaction-scoped advisory lock so concurrent starters don't race.
/// Idempotent. Creates the schema if it does not exist.
///
/// # Errors
/// An invalid schema name ([`sqlx::Error::Configuration`]), or whatever the
/// database reports; a failed step rolls back with its record.
pub async fn run(
    pool: &PgPool,
    schema: &str,
    component: &str,
    steps: &[&str],
) -> Result<(), sqlx::Error> {
    validate_schema(schema)?;
    let span = tracing::debug_span!("dcb.pg.migrate", schema, component);
    run_locked(pool, schema, component, steps)
        .instrument(span)
        .await
}

async fn run_locked(
    pool: &PgPool,
    schema: &str,
    component: &str,
    steps: &[&str],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // One lock per schema: every component of a schema migrates in turn,
    // which also serializes the CREATE SCHEMA / CREATE TABLE below.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('dcb_migrations'), hashtext($1))")
        .bind(schema)
        .execute(&mut *tx)
        .await?;
    tx.execute(sqlx::raw_sql(&render(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.dcb_migrations (
             component  text        NOT NULL,
             version    int         NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (component, version)
         );",
        schema,
    )))
    .await?;
    let applied: Vec<i32> = sqlx::query_scalar(&render(
        "SELECT version FROM {schema}.dcb_migrations WHERE component = $1",
        schema,
    ))
    .bind(component)
    .fetch_all(&mut *tx)
    .await?;
    for (index, step) in steps.iter().enumerate() {
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        if applied.contains(&version) {
            continue;
        }
        tracing::info!(schema, component, version, "applying migration");
        tx.execute(sqlx::raw_sql(&render(step, schema))).await?;
        sqlx::query(&render(
            "INSERT INTO {schema}.dcb_migrations (component, version) VALUES ($1, $2)",
            schema,
        ))
        .bind(component)
        .bind(version)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Applies the event store's own steps (component `"event_store"`) to
/// `schema`.
///
/// # Errors
/// See [`run`].
pub async fn migrate_store(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    run(pool, schema, EVENT_STORE_COMPONENT, EVENT_STORE_STEPS).await
}
