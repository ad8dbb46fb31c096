
CREATE TABLE IF NOT EXISTS {schema}.listener_checkpoints (
    listener_id    text        PRIMARY KEY,
    position       bigint      NOT NULL DEFAULT 0,
    owner          text,
    lease_until    timestamptz,
    state          text        NOT NULL DEFAULT 'stopped',
    attempts       integer     NOT NULL DEFAULT 0,
    error_position bigint,
    last_error     text,
    last_error_at  timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {schema}.parked_events (
    listener_id text        NOT NULL,
    position    bigint      NOT NULL,
    event_type  text        NOT NULL,
    event_id    uuid,
    error       text        NOT NULL,
    attempts    integer     NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (listener_id, position)
);
