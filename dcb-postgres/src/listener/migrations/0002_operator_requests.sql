
ALTER TABLE {schema}.listener_checkpoints
    ADD COLUMN IF NOT EXISTS mode       text,
    ADD COLUMN IF NOT EXISTS generation bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS handled    bigint NOT NULL DEFAULT 0;
ALTER TABLE {schema}.parked_events
    ADD COLUMN IF NOT EXISTS resolved_at timestamptz,
    ADD COLUMN IF NOT EXISTS resolution  text;
CREATE TABLE IF NOT EXISTS {schema}.listener_requests (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    listener_id    text        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('reset', 'rebuild', 'retry', 'skip')),
    position       bigint,
    state          text        NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'running', 'done', 'failed')),
    requested_by   text,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    executed_by    text,
    generation     bigint,
    target         bigint,
    reached        bigint,
    handled_before bigint,
    handled_after  bigint,
    error          text
);
CREATE INDEX IF NOT EXISTS listener_requests_open
    ON {schema}.listener_requests (listener_id, id)
    WHERE state IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS listener_requests_listener
    ON {schema}.listener_requests (listener_id, id DESC);
