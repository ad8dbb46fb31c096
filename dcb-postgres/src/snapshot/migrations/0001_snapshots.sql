
CREATE TABLE IF NOT EXISTS {schema}.snapshots (
    key      text        PRIMARY KEY,
    position bigint      NOT NULL,
    payload  bytea       NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now()
);
