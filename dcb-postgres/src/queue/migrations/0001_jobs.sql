
CREATE TABLE IF NOT EXISTS {schema}.jobs (
    id                    uuid        PRIMARY KEY,
    queue                 text        NOT NULL,
    kind                  text        NOT NULL,
    payload               jsonb       NOT NULL,
    state                 text        NOT NULL DEFAULT 'ready'
                          CHECK (state IN ('ready', 'running', 'succeeded', 'dead', 'cancelled')),
    priority              integer     NOT NULL DEFAULT 0,
    run_at                timestamptz NOT NULL DEFAULT now(),
    attempt               integer     NOT NULL DEFAULT 0,
    max_attempts          integer     CHECK (max_attempts IS NULL OR max_attempts > 0),
    deadline              timestamptz,
    dedupe_key            text,
    triggered_by_event    uuid,
    triggered_by_position bigint,
    lease_token           uuid,
    lease_until           timestamptz,
    locked_by             text,
    doomed                boolean     NOT NULL DEFAULT false,
    last_error            text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    finished_at           timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_dedupe ON {schema}.jobs (kind, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND state IN ('ready', 'running', 'dead');
CREATE INDEX IF NOT EXISTS jobs_due ON {schema}.jobs (queue, priority DESC, run_at, id)
    WHERE state = 'ready';
CREATE INDEX IF NOT EXISTS jobs_leases ON {schema}.jobs (lease_until)
    WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_finished ON {schema}.jobs (state, finished_at)
    WHERE state IN ('succeeded', 'dead', 'cancelled');
