//! The crate's tables, migrated with `dcb_postgres::migrations::run` under
//! the component name [`COMPONENT`].

/// The migration component name of this crate's tables.
pub const COMPONENT: &str = "kafka";

/// The steps, in order. Never edit a released step; append a new one.
pub const STEPS: &[&str] = &[
    // 1: messages a translator recorded instead of deciding on them.
    r#"
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
"#,
    // 2: a dead record is one per record, not per offset: after a topic is
    // created again, a new record at a reused offset is a different message
    // and must get its own record. `record_key` is `crate::record_key`; rows
    // from before carry the offset-only key they were deduped by.
    r#"
ALTER TABLE {schema}.kafka_dead_messages ADD COLUMN record_key text;
UPDATE {schema}.kafka_dead_messages
   SET record_key = 'kafka:' || topic || ':' || partition || ':' || "offset";
ALTER TABLE {schema}.kafka_dead_messages ALTER COLUMN record_key SET NOT NULL;
ALTER TABLE {schema}.kafka_dead_messages DROP CONSTRAINT kafka_dead_messages_pkey;
ALTER TABLE {schema}.kafka_dead_messages ADD PRIMARY KEY (group_id, record_key);
"#,
];

/// Applies this crate's steps to `schema`.
pub(crate) async fn migrate(pool: &sqlx::PgPool, schema: &str) -> Result<(), sqlx::Error> {
    dcb_postgres::migrations::run(pool, schema, COMPONENT, STEPS)
        .await
        .map_err(sqlx::Error::from)
}

pub(crate) fn render(sql: &str, schema: &str) -> String {
    dcb_postgres::migrations::render(sql, schema)
}
