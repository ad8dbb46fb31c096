//! Every statement the console runs itself, beside the operators' APIs of
//! `dcb-postgres`: which components a schema has, lookups in the log that
//! the store's queries do not offer (by event id, by correlation or
//! causation id, recent throughput), and reads of `dcb-kafka`'s tables
//! (dead records and relays), which that crate documents but has no
//! operators' API for. `{schema}` is replaced by a validated schema name.

/// `sql` with `{schema}` replaced (the schema was validated when the store
/// was opened).
pub(crate) fn render(sql: &str, schema: &str) -> String {
    dcb_postgres::migrations::render(sql, schema)
}

/// `$1` schema: whether it exists, and whether it holds an event store.
pub(crate) const SCHEMA_STATE: &str = "
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
       EXISTS (SELECT 1 FROM information_schema.tables
               WHERE table_schema = $1 AND table_name = 'head')";

/// Every schema that holds an event store (a `head` and an `events` table).
pub(crate) const SCHEMAS_WITH_STORE: &str = "
SELECT h.table_schema::text FROM information_schema.tables h
JOIN information_schema.tables e
  ON e.table_schema = h.table_schema AND e.table_name = 'events'
WHERE h.table_name = 'head'
ORDER BY 1";

/// The components migrated in the schema.
pub(crate) const COMPONENTS: &str = "SELECT DISTINCT component FROM {schema}.dcb_migrations";

/// The columns of an event row, as [`crate::events::EventView`] reads
/// them.
const EVENT_COLUMNS: &str = "position, event_type, tags, payload, metadata, event_id, recorded_at";

/// `$1` event id: that event.
pub(crate) fn event_by_id(schema: &str) -> String {
    render(
        &format!("SELECT {EVENT_COLUMNS} FROM {{schema}}.events WHERE event_id = $1"),
        schema,
    )
}

/// `$1` metadata key (`correlation_id` or `causation_id`), `$2` value,
/// `$3` lowest position searched, `$4` limit: matching events, oldest
/// first. The metadata has no index: the search walks the positions from
/// `$3` to the head (the caller bounds the window).
pub(crate) fn events_by_metadata(schema: &str) -> String {
    render(
        &format!(
            "SELECT {EVENT_COLUMNS} FROM {{schema}}.events
             WHERE position >= $3 AND metadata ->> $1 = $2
             ORDER BY position LIMIT $4"
        ),
        schema,
    )
}

/// `$1` lowest position considered: events recorded in the last minute and
/// the last five minutes among those positions (the primary key bounds the
/// walk; `recorded_at` has no index).
pub(crate) fn throughput(schema: &str) -> String {
    render(
        "SELECT count(*) FILTER (WHERE recorded_at > now() - interval '1 minute'),
                count(*) FILTER (WHERE recorded_at > now() - interval '5 minutes')
         FROM {schema}.events WHERE position >= $1",
        schema,
    )
}

/// `$1` group or NULL, `$2` topic or NULL, `$3` limit: dead records,
/// newest first.
pub(crate) fn dead_records(schema: &str) -> String {
    render(
        r#"SELECT group_id, record_key, topic, partition, "offset", key, payload, kind,
                  reason, recorded_at
           FROM {schema}.kafka_dead_messages
           WHERE ($1::text IS NULL OR group_id = $1) AND ($2::text IS NULL OR topic = $2)
           ORDER BY recorded_at DESC, topic, partition, "offset" DESC LIMIT $3"#,
        schema,
    )
}

/// `$1` group, `$2` record key: one dead record.
pub(crate) fn dead_record(schema: &str) -> String {
    render(
        r#"SELECT group_id, record_key, topic, partition, "offset", key, payload, kind,
                  reason, recorded_at
           FROM {schema}.kafka_dead_messages WHERE group_id = $1 AND record_key = $2"#,
        schema,
    )
}

/// Dead records counted by group and topic.
pub(crate) fn dead_record_counts(schema: &str) -> String {
    render(
        "SELECT group_id, topic, count(*) FROM {schema}.kafka_dead_messages
         GROUP BY 1, 2 ORDER BY 1, 2",
        schema,
    )
}

/// `$1` group, `$2` record key: forgets a dead record (once redriven).
pub(crate) fn delete_dead_record(schema: &str) -> String {
    render(
        "DELETE FROM {schema}.kafka_dead_messages WHERE group_id = $1 AND record_key = $2",
        schema,
    )
}

/// Every relay with its checkpoint and lease.
pub(crate) fn relays(schema: &str) -> String {
    render(
        "SELECT relay_id, position, owner,
                COALESCE(lease_until > clock_timestamp(), false) AS live,
                last_error, last_error_at, updated_at
         FROM {schema}.kafka_relays ORDER BY relay_id",
        schema,
    )
}
