
CREATE TABLE IF NOT EXISTS {schema}.job_workers (
    worker_id  text        PRIMARY KEY,
    queues     text[]      NOT NULL,
    kinds      text[]      NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
