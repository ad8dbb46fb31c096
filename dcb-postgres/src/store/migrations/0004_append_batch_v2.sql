
CREATE OR REPLACE FUNCTION {schema}.append_batch_v2(
    c_request  int[],     -- $1  per probe (one per condition item and type of
                          --     it): its request (1-based)
    c_after    bigint[],  -- $2  per probe: its request's `after` (0: none)
    c_probe    text[],    -- $3  per probe: its item's first tag; NULL when none
    c_type     text[],    -- $4  per probe: one type of its item; NULL: any type
    c_tags     text[],    -- $5  per probe: all its item's tags, an array literal,
                          --     when it has more than one; else NULL
    r_after    bigint[],  -- $6  per request: its `after` (0: none)
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
    channel    text,      -- $19 NOTIFY channel
    check_ids  boolean    -- $20 look stored event ids up first; without it a
                          --     stored id fails the call (unique violation),
                          --     and the caller calls again with it
) RETURNS TABLE (outcome int, first_position bigint, last_position bigint, duplicate uuid)
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

    -- Requests whose condition matches a stored event after their `after`:
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

    -- Each request in order: its stored check (above), then the requests of
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
