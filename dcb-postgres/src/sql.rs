//! Generates the SQL of reads from a [`Query`]. (Condition checks run inside
//! the `append_batch_v2` function, migration step 4, and the first pages of
//! decision reads in `read_first_pages`, step 5, with the same index
//! shapes.)
//!
//! Every statement binds its values; only the (validated) schema name is
//! spliced into the text. The shapes:
//! - a tagged item probes the `event_tags` primary key with its first tag
//!   (and its types, if any) and re-checks its other tags on `events`;
//! - a type-only item uses the `events (event_type, position)` index;
//! - a match-all item scans `events` by position.

use dcb_core::{Query, QueryItem};
use sqlx::postgres::PgArguments;
use sqlx::query::Query as SqlxQuery;
use sqlx::Postgres;

/// A value bound to a statement.
#[derive(Clone, Debug)]
pub(crate) enum Bind {
    /// A bigint.
    I64(i64),
    /// A text.
    Text(String),
    /// A text array.
    TextArray(Vec<String>),
}

/// SQL text under construction, with its bound values.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sql {
    /// The statement.
    pub(crate) text: String,
    /// The values of `$1..`, in order.
    pub(crate) binds: Vec<Bind>,
}

impl Sql {
    /// Binds `value` and returns its placeholder.
    pub(crate) fn bind(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    /// Appends text.
    pub(crate) fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }
}

/// A PostgreSQL array literal (`{"a","b"}`) of `items`, every element quoted,
/// so any text survives: the function receives per-event and per-item lists
/// as one text each (SQL arrays cannot be ragged) and casts them to `text[]`.
pub(crate) fn array_literal<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from("{");
    for (index, item) in items.into_iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// Whether reads of `query` must be planned with their values on every
/// call rather than run as a cached statement. A type-only item selects by
/// `event_type`, and a cached statement ends up on a generic plan that does
/// not know whether the type is rare: depending on the statistics it walks
/// the primary key and filters instead of probing `events_type_position`.
/// Tagged items (the tag is the selective part) and a match-all read
/// (a position scan) plan the same either way.
pub(crate) fn plan_per_call(query: &Query) -> bool {
    !query.is_all()
        && query
            .items()
            .iter()
            .any(|item| item.tags.is_empty() && !item.types.is_empty())
}

/// Binds `binds` to `query` in order.
pub(crate) fn bind_all<'q>(
    mut query: SqlxQuery<'q, Postgres, PgArguments>,
    binds: &[Bind],
) -> SqlxQuery<'q, Postgres, PgArguments> {
    for bind in binds {
        query = match bind {
            Bind::I64(v) => query.bind(*v),
            Bind::Text(v) => query.bind(v.clone()),
            Bind::TextArray(v) => query.bind(v.clone()),
        };
    }
    query
}

/// A position range, as SQL over placeholders (already bound).
#[derive(Clone, Debug)]
pub(crate) struct Range {
    /// Lowest position, inclusive (placeholder), if bounded.
    pub(crate) min: Option<String>,
    /// Highest position, inclusive (placeholder), if bounded.
    pub(crate) max: Option<String>,
}

impl Range {
    fn predicate(&self, column: &str) -> String {
        let mut parts = Vec::new();
        if let Some(min) = &self.min {
            parts.push(format!("{column} >= {min}"));
        }
        if let Some(max) = &self.max {
            parts.push(format!("{column} <= {max}"));
        }
        if parts.is_empty() {
            "true".to_string()
        } else {
            parts.join(" AND ")
        }
    }
}

fn types_of(item: &QueryItem) -> Vec<String> {
    let mut types: Vec<String> = item.types.iter().map(|t| t.as_str().to_string()).collect();
    types.sort();
    types.dedup();
    types
}

/// `SELECT <position> FROM ... WHERE <item matches> AND <range>` for one
/// item that has tags or types (never a match-all item), restricted to one
/// of its types when `event_type` is given.
///
/// One branch per type: with `event_type = ANY(...)` the index returns the
/// positions of each type in order but not all of them in order, so a page
/// (`ORDER BY position LIMIT n`) had to read and sort every match in the
/// range; with one type per branch each branch walks its index in order and
/// stops after a page.
pub(crate) fn item_positions(
    sql: &mut Sql,
    schema: &str,
    item: &QueryItem,
    event_type: Option<&str>,
    range: &Range,
) -> String {
    let type_predicate = |sql: &mut Sql, column: &str| {
        event_type.map(|t| {
            let p = sql.bind(Bind::Text(t.to_string()));
            format!("{column} = {p}")
        })
    };
    if item.tags.is_empty() {
        let types = type_predicate(sql, "e.event_type").unwrap_or_else(|| "true".into());
        return format!(
            "SELECT e.position FROM {schema}.events e WHERE {types} AND {}",
            range.predicate("e.position")
        );
    }
    let mut tags: Vec<String> = item.tags.iter().map(|t| t.as_str().to_string()).collect();
    tags.sort();
    tags.dedup();
    let probe = sql.bind(Bind::Text(item.tags[0].as_str().to_string()));
    let mut text = format!("SELECT t.position FROM {schema}.event_tags t WHERE t.tag = {probe}");
    if let Some(types) = type_predicate(sql, "t.event_type") {
        text.push_str(" AND ");
        text.push_str(&types);
    }
    text.push_str(" AND ");
    text.push_str(&range.predicate("t.position"));
    if tags.len() > 1 {
        let all = sql.bind(Bind::TextArray(tags));
        text.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM {schema}.events e \
             WHERE e.position = t.position AND e.tags @> {all})"
        ));
    }
    text
}

/// The columns every read selects, in the order `row_to_event` expects.
pub(crate) const EVENT_COLUMNS: &str =
    "e.position, e.event_type, e.tags, e.payload, e.metadata, e.event_id, e.recorded_at";

/// A page of a read: `$1` and `$2` bound the positions (inclusive), `$3` is
/// the page size; the query's own values follow. Returns `None` for a query
/// that matches nothing.
///
/// With `with_head`, the statement also reads the head row, in the same
/// snapshot, and bounds the page by it (`LEAST($2, head)`): every row is
/// `(head, event columns...)`, with one row of NULL event columns when no
/// event matches. That is the first page of a read: one round trip for the
/// head and the events of a small state.
pub(crate) fn read_page(
    schema: &str,
    query: &Query,
    forwards: bool,
    with_head: bool,
) -> Option<Sql> {
    if query.is_none() {
        return None;
    }
    let mut sql = Sql::default();
    let min = sql.bind(Bind::I64(0));
    let max = sql.bind(Bind::I64(0));
    let limit = sql.bind(Bind::I64(0));
    let range = Range {
        min: Some(min),
        max: Some(if with_head {
            format!("LEAST({max}, h.position)")
        } else {
            max
        }),
    };
    let order = if forwards { "ASC" } else { "DESC" };
    let page = if query.is_all() {
        format!(
            "SELECT {EVENT_COLUMNS} FROM {schema}.events e WHERE {} \
             ORDER BY e.position {order} LIMIT {limit}",
            range.predicate("e.position")
        )
    } else {
        let mut branches = Vec::new();
        let mut seen: Vec<&QueryItem> = Vec::new();
        for item in query.items() {
            if seen.contains(&item) {
                continue;
            }
            seen.push(item);
            let types = types_of(item);
            if types.is_empty() {
                let positions = item_positions(&mut sql, schema, item, None, &range);
                branches.push(format!("({positions} ORDER BY 1 {order} LIMIT {limit})"));
            }
            for event_type in &types {
                let positions = item_positions(&mut sql, schema, item, Some(event_type), &range);
                branches.push(format!("({positions} ORDER BY 1 {order} LIMIT {limit})"));
            }
        }
        format!(
            "SELECT {EVENT_COLUMNS} FROM {schema}.events e WHERE e.position IN ({}) \
             ORDER BY e.position {order} LIMIT {limit}",
            branches.join(" UNION ALL ")
        )
    };
    if with_head {
        // The head as a scalar subquery: the outer row is then exactly one
        // row to the planner. Joined as a table, the never-analyzed one-row
        // head is estimated at thousands of rows, which made the generic
        // plan look dearer than a custom one, so every read was planned
        // again (planning cost more than running it). A NULL head (no head
        // row) reaches the caller, which reports it.
        sql.push(&format!(
            "SELECT h.position AS head, p.* \
             FROM (SELECT (SELECT position FROM {schema}.head) AS position) h \
             LEFT JOIN LATERAL ({page}) p ON true ORDER BY p.position {order}"
        ));
    } else {
        sql.push(&page);
    }
    Some(sql)
}

/// One walk of the tag index for a query item, as the reader's and the
/// append batch's functions take it: the item's first tag (none for an item
/// without tags), one of its types (none: any type), and all its tags as an
/// array literal when it has more than one (re-checked on `events`).
pub(crate) struct Probe {
    /// The tag `event_tags` is probed with.
    pub(crate) tag: Option<String>,
    /// The type probed, or none for any type.
    pub(crate) event_type: Option<String>,
    /// All the item's tags, when it has more than one.
    pub(crate) all_tags: Option<String>,
}

/// The probes of `item`: one per distinct type (one for an item without
/// types), so each walks the index in position order.
pub(crate) fn probes(item: &QueryItem) -> Vec<Probe> {
    let mut types: Vec<&str> = item.types.iter().map(|t| t.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    let mut tags: Vec<&str> = item.tags.iter().map(|t| t.as_str()).collect();
    tags.sort_unstable();
    tags.dedup();
    let tag = item.tags.first().map(|t| t.as_str().to_string());
    let all_tags = (tags.len() > 1).then(|| array_literal(tags));
    if types.is_empty() {
        return vec![Probe {
            tag,
            event_type: None,
            all_tags,
        }];
    }
    types
        .into_iter()
        .map(|event_type| Probe {
            tag: tag.clone(),
            event_type: Some(event_type.to_string()),
            all_tags: all_tags.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use dcb_core::{Query, QueryItem, Tag};

    use super::plan_per_call;

    #[test]
    fn reads_with_a_type_only_item_are_planned_per_call() {
        let typed = QueryItem::new().types(["Opened"]);
        let tagged = QueryItem::new()
            .types(["Opened"])
            .tags([Tag::new("acc", 1)]);
        assert!(plan_per_call(&Query::from_items([typed.clone()])));
        assert!(plan_per_call(&Query::from_items([tagged.clone(), typed])));
        assert!(!plan_per_call(&Query::from_items([tagged])));
        assert!(!plan_per_call(&Query::all()));
    }
}
