
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
