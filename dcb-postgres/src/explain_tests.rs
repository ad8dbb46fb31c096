//! At a million events, the SQL of a decision's read and of its condition
//! check must be index scans (no sequential scan of `events` or
//! `event_tags`).

use std::time::Instant;

use dcb_core::{AppendCondition, Position, Query, QueryItem, Tag};
use sqlx::{Executor, Row};

use crate::sql::{self, bind_all, Bind, Sql};
use crate::testing::TestDatabase;
use crate::writer::check_statement;

const EVENTS: i64 = 1_000_000;

/// Every `(node type, relation)` in a JSON plan.
fn scans(plan: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match plan {
        serde_json::Value::Object(map) => {
            if let Some(node) = map.get("Node Type").and_then(|v| v.as_str()) {
                let relation = map
                    .get("Relation Name")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string();
                out.push((node.to_string(), relation));
            }
            for value in map.values() {
                scans(value, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| scans(v, out)),
        _ => {}
    }
}

async fn explain(db: &TestDatabase, statement: &Sql, binds: &[Bind]) -> Vec<(String, String)> {
    let text = format!("EXPLAIN (FORMAT JSON) {}", statement.text);
    let row = bind_all(sqlx::query(&text), binds)
        .fetch_one(db.pool())
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN failed: {e}\n{text}"));
    let plan: serde_json::Value = row.get(0);
    let mut out = Vec::new();
    scans(&plan, &mut out);
    assert!(
        !out.iter().any(|(node, relation)| node == "Seq Scan"
            && (relation == "events" || relation == "event_tags")),
        "sequential scan in the plan of\n{}\n{plan:#}",
        statement.text
    );
    out
}

#[tokio::test]
async fn decision_read_and_condition_check_use_indexes_at_a_million_events() {
    let db = TestDatabase::create().await;
    let started = Instant::now();
    // A million events over 100k accounts: every event carries its account
    // and one of 7 kinds; types cycle through three names, plus a rare one.
    // Loading into indexed tables row by row is slow on a small machine, so
    // the indexes are dropped and rebuilt (in bulk) from their own
    // definitions around the load.
    let mut conn = db.pool().acquire().await.unwrap();
    let constraints: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid)
         FROM pg_constraint
         WHERE conrelid IN ('dcb.events'::regclass, 'dcb.event_tags'::regclass)
           AND contype IN ('p', 'u')",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname::text, indexdef FROM pg_indexes
         WHERE schemaname = 'dcb' AND tablename IN ('events', 'event_tags')
           AND indexname NOT IN (SELECT conname FROM pg_constraint
                                 WHERE connamespace = 'dcb'::regnamespace)",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    for (name, _) in &indexes {
        conn.execute(format!("DROP INDEX dcb.{name}").as_str())
            .await
            .unwrap();
    }
    for (table, name, _) in &constraints {
        conn.execute(format!("ALTER TABLE {table} DROP CONSTRAINT {name}").as_str())
            .await
            .unwrap();
    }
    conn.execute(
        format!(
            "SET maintenance_work_mem = '128MB';
             INSERT INTO dcb.events (position, event_type, tags, payload, metadata, event_id)
             SELECT g,
                    CASE WHEN g % 1000 = 0 THEN 'RatesChanged'
                         WHEN g % 3 = 0 THEN 'Opened'
                         WHEN g % 3 = 1 THEN 'Deposited'
                         ELSE 'Withdrawn' END,
                    ARRAY['acc:' || (g % 100000), 'kind:' || (g % 7)],
                    '\\x7b7d'::bytea, '{{}}'::jsonb, gen_random_uuid()
             FROM generate_series(1, {EVENTS}) g;
             INSERT INTO dcb.event_tags (tag, event_type, position)
             SELECT unnest(tags), event_type, position FROM dcb.events;
             UPDATE dcb.head SET position = {EVENTS};"
        )
        .as_str(),
    )
    .await
    .unwrap();
    eprintln!("inserted rows after {:?}", started.elapsed());
    for (table, name, definition) in &constraints {
        conn.execute(format!("ALTER TABLE {table} ADD CONSTRAINT {name} {definition}").as_str())
            .await
            .unwrap();
    }
    for (_, definition) in &indexes {
        conn.execute(definition.as_str()).await.unwrap();
    }
    conn.execute("ANALYZE dcb.events; ANALYZE dcb.event_tags;")
        .await
        .unwrap();
    drop(conn);
    eprintln!("loaded {EVENTS} events in {:?}", started.elapsed());

    // A decision's state: one account's events, plus a rare global type.
    let query = Query::from_items([
        QueryItem::new()
            .types(["Opened", "Deposited", "Withdrawn"])
            .tags([Tag::new("acc", 4242)]),
        QueryItem::new().types(["RatesChanged"]),
        QueryItem::new().tags([Tag::new("acc", 77), Tag::new("kind", 0)]),
    ]);
    for forwards in [true, false] {
        let page = sql::read_page("dcb", &query, forwards, false).unwrap();
        let mut binds = page.binds.clone();
        binds[0] = Bind::I64(1);
        binds[1] = Bind::I64(EVENTS);
        binds[2] = Bind::I64(1000);
        let plan = explain(&db, &page, &binds).await;
        assert!(
            plan.iter()
                .any(|(n, r)| (n.contains("Index") || n.starts_with("Bitmap")) && r == "event_tags"),
            "{plan:?}"
        );
    }
    // The first page of a read (with the head, in one statement), both ways.
    for forwards in [true, false] {
        let page = sql::read_page("dcb", &query, forwards, true).unwrap();
        let mut binds = page.binds.clone();
        binds[0] = Bind::I64(1);
        binds[1] = Bind::I64(i64::MAX);
        binds[2] = Bind::I64(1000);
        explain(&db, &page, &binds).await;
    }
    // The whole log, one page.
    let page = sql::read_page("dcb", &Query::all(), true, false).unwrap();
    let mut binds = page.binds.clone();
    binds[0] = Bind::I64(500_000);
    binds[1] = Bind::I64(EVENTS);
    binds[2] = Bind::I64(1000);
    explain(&db, &page, &binds).await;

    // The batch check: two conditions (with and without `after`) and ids.
    let with_after = AppendCondition::not_after(query.clone(), Some(Position(990_000)));
    let uniqueness = AppendCondition::never_matched(Query::tags([Tag::new("acc", 12)]));
    let check = check_statement(
        "dcb",
        &[(0, &with_after), (1, &uniqueness)],
        vec![uuid::Uuid::new_v4(), uuid::Uuid::new_v4()],
    );
    let plan = explain(&db, &check, &check.binds).await;
    assert!(plan.iter().any(|(n, _)| n.contains("Index")), "{plan:?}");
    // And it actually runs fast.
    let t = Instant::now();
    check.query().fetch_all(db.pool()).await.unwrap();
    eprintln!(
        "batch check took {:?}; whole test {:?}",
        t.elapsed(),
        started.elapsed()
    );
    db.cleanup().await;
}
