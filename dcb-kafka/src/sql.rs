//! The crate's tables and every statement on them, migrated with
//! `dcb_postgres::migrations::run` under the component name [`COMPONENT`].
//!
//! - `{schema}.kafka_dead_messages`: messages a translator recorded instead of
//!   deciding on them ([`dead_records`](self::dead_records)).
//! - `{schema}.kafka_relays`: each relay's checkpoint and lease
//!   ([`relays`](self::relays)).

pub(crate) mod dead_records;
pub(crate) mod relays;

/// The migration component name of this crate's tables.
pub const COMPONENT: &str = "kafka";

/// The steps, in order. Never edit a released step; append a new one.
pub const STEPS: &[&str] = &[
    // 1: messages a translator recorded instead of deciding on them.
    include_str!("sql/migrations/0001_dead_messages.sql"),
    // 2: a dead record is one per record, not per offset: after a topic is
    // created again, a new record at a reused offset is a different message
    // and must get its own record. `record_key` is `crate::record_key`; rows
    // from before carry the offset-only key they were deduped by.
    include_str!("sql/migrations/0002_dead_messages_record_key.sql"),
    // 3: the relays' checkpoints and leases (one row per relay name).
    include_str!("sql/migrations/0003_relays.sql"),
];

/// Applies this crate's steps to `schema`.
pub(crate) async fn migrate(pool: &sqlx::PgPool, schema: &str) -> Result<(), sqlx::Error> {
    dcb_postgres::migrations::run(pool, schema, COMPONENT, STEPS)
        .await
        .map_err(sqlx::Error::from)
}

/// `sql` with `{schema}` replaced, after checking that `schema` is a plain
/// identifier (it is spliced into the statement unquoted).
pub(crate) fn render(sql: &str, schema: &str) -> Result<String, sqlx::Error> {
    dcb_postgres::migrations::validate_schema(schema)?;
    Ok(dcb_postgres::migrations::render(sql, schema))
}

/// `text` as PostgreSQL can store it in a `text` column: NUL, the one
/// character it refuses, is written as the six characters `\u0000`. For
/// texts the crate writes itself (reasons, errors) from whatever a message or
/// a library put into them.
///
/// ```ignore
/// assert_eq!(storable_text("a\0b"), "a\\u0000b");
/// ```
pub(crate) fn storable_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\\u0000"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_steps_keep_their_text() {
        // The first two steps were released as inline strings; moving them
        // to files must not change a byte.
        assert!(STEPS[0].starts_with("\nCREATE TABLE IF NOT EXISTS {schema}.kafka_dead_messages ("));
        assert!(STEPS[1]
            .starts_with("\nALTER TABLE {schema}.kafka_dead_messages ADD COLUMN record_key text;"));
        assert!(STEPS[1].ends_with("ADD PRIMARY KEY (group_id, record_key);\n"));
    }

    #[test]
    fn nul_is_escaped_and_other_text_kept() {
        assert_eq!(storable_text("a\0b\0"), "a\\u0000b\\u0000");
        assert!(matches!(
            storable_text("plain ü"),
            std::borrow::Cow::Borrowed("plain ü")
        ));
    }

    #[test]
    fn a_bad_schema_is_refused() {
        assert!(render("SELECT 1 FROM {schema}.t", "x; DROP TABLE y").is_err());
        assert_eq!(render("{schema}.t", "dcb").unwrap(), "dcb.t");
    }
}
