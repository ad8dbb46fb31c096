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
];

/// Applies this crate's steps to `schema`.
pub(crate) async fn migrate(pool: &sqlx::PgPool, schema: &str) -> Result<(), sqlx::Error> {
    dcb_postgres::migrations::run(pool, schema, COMPONENT, STEPS).await
}

pub(crate) fn render(sql: &str, schema: &str) -> String {
    dcb_postgres::migrations::render(sql, schema)
}
