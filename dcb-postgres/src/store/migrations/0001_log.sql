
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
