
CREATE TABLE IF NOT EXISTS {schema}.kafka_dead_messages (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   int         NOT NULL,
    "offset"    bigint      NOT NULL,
    key         bytea,
    payload     bytea,
    kind        text        NOT NULL,
    reason      text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition, "offset")
);
