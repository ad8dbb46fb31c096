//! At a million events, the SQL of a decision's read and of its condition
//! check must be index scans (no sequential scan of `events` or
//! `event_tags`). Each statement runs under `EXPLAIN (ANALYZE, BUFFERS)`,
//! with its values and as the generic plan a cached statement ends up on:
//! the index it is meant to use must be probed with an index condition (not
//! walked whole), and the buffers it touches must stay far below the size of
//! the tables (about 30,000 pages), so a plan that reads much more than the
//! rows it returns fails.

use std::time::Instant;

use dcb_core::{AppendCondition, Position, Query, QueryItem, Tag};
use sqlx::{Executor, Row};

use crate::migrations::{render, EVENT_STORE_STEPS};
use crate::sql::{self, bind_all, Bind, Sql};
use crate::testing::TestDatabase;
use crate::writer::batch::Batch;

const EVENTS: i64 = 1_000_000;

// The most buffers each statement may touch, against about 27,000 pages of
// `events` and `event_tags` (a walk of the primary key filtering by type
// touched 18,600). The reads return a page of 1,000 events, most of them of
// the rare type, each on a page of its own: 4,100-5,200 buffers measured.
// The whole log's page, the checks, the tagged reads and the probes return
// a handful of rows (21, 77-126, 106-121 and 4-6 buffers measured).
const READ_BUFFERS: i64 = 8_000;
const PAGE_BUFFERS: i64 = 200;
const CHECK_BUFFERS: i64 = 1_000;
const PROBE_BUFFERS: i64 = 100;

/// Calls `visit` with every node of a JSON plan (shared with the work
/// queue's plan tests).
pub(crate) fn visit_plan_nodes(
    plan: &serde_json::Value,
    visit: &mut dyn FnMut(&serde_json::Map<String, serde_json::Value>),
) {
    match plan {
        serde_json::Value::Object(map) => {
            if map.contains_key("Node Type") {
                visit(map);
            }
            for value in map.values() {
                visit_plan_nodes(value, visit);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| visit_plan_nodes(v, visit)),
        _ => {}
    }
}

/// Every `(node type, relation)` in a JSON plan, asserting that none is a
/// sequential scan of `events` or `event_tags`; `text` names the statement
/// in the failure.
fn log_scans(plan: &serde_json::Value, text: &str) -> Vec<(String, String)> {
    let field = |map: &serde_json::Map<String, serde_json::Value>, name: &str| {
        map.get(name)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let mut out = Vec::new();
    visit_plan_nodes(plan, &mut |map| {
        out.push((field(map, "Node Type"), field(map, "Relation Name")));
    });
    assert!(
        !out.iter().any(|(node, relation)| node == "Seq Scan"
            && (relation == "events" || relation == "event_tags")),
        "sequential scan in the plan of\n{text}\n{plan:#}"
    );
    out
}

/// What one statement did under `EXPLAIN (ANALYZE, BUFFERS)`.
struct Analyzed {
    /// Every `(node type, relation)` of the plan.
    nodes: Vec<(String, String)>,
    /// The indexes probed with an index condition.
    probed: Vec<String>,
    /// Shared buffers the execution touched (hit or read).
    buffers: i64,
    /// The plan, for failure messages.
    plan: serde_json::Value,
}

impl Analyzed {
    fn of(plan: serde_json::Value, text: &str) -> Analyzed {
        let nodes = log_scans(&plan, text);
        let mut probed = Vec::new();
        visit_plan_nodes(&plan, &mut |map| {
            if map.contains_key("Index Cond") {
                if let Some(index) = map.get("Index Name").and_then(|v| v.as_str()) {
                    probed.push(index.to_string());
                }
            }
        });
        let top = &plan[0]["Plan"];
        let buffers = top["Shared Hit Blocks"].as_i64().unwrap_or(0)
            + top["Shared Read Blocks"].as_i64().unwrap_or(0);
        Analyzed {
            nodes,
            probed,
            buffers,
            plan,
        }
    }

    /// Asserts that each of `indexes` was probed with an index condition
    /// and that at most `max_buffers` buffers were touched.
    fn require(&self, what: &str, indexes: &[&str], max_buffers: i64) {
        for index in indexes {
            assert!(
                self.probed.iter().any(|p| p == index),
                "{what}: {index} is not probed with an index condition (probed: {:?})\n{:#}",
                self.probed,
                self.plan
            );
        }
        assert!(
            self.buffers <= max_buffers,
            "{what}: touched {} buffers, more than {max_buffers}\n{:#}",
            self.buffers,
            self.plan
        );
        eprintln!("{what}: {} buffers, probed {:?}", self.buffers, self.probed);
    }
}

/// Runs `text` under `EXPLAIN (ANALYZE, BUFFERS)` in a transaction rolled
/// back afterwards.
async fn analyze<'q>(
    conn: &mut sqlx::PgConnection,
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    text: &str,
) -> Analyzed {
    conn.execute("BEGIN").await.unwrap();
    let row = query
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN failed: {e}\n{text}"));
    conn.execute("ROLLBACK").await.unwrap();
    Analyzed::of(row.get(0), text)
}

const ANALYZE: &str = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)";

async fn explain(db: &TestDatabase, statement: &Sql, binds: &[Bind]) -> Analyzed {
    let text = format!("{ANALYZE} {}", statement.text);
    let mut conn = db.pool().acquire().await.unwrap();
    analyze(
        &mut conn,
        bind_all(sqlx::query(&text), binds),
        &statement.text,
    )
    .await
}

/// A SQL literal of `bind` and its type, for `PREPARE ... EXECUTE`.
fn literal(bind: &Bind) -> (String, &'static str) {
    let quote = |v: &str| format!("'{}'", v.replace('\'', "''"));
    match bind {
        Bind::I64(v) => (v.to_string(), "bigint"),
        Bind::Text(v) => (quote(v), "text"),
        Bind::TextArray(v) => (
            format!(
                "ARRAY[{}]::text[]",
                v.iter().map(|x| quote(x)).collect::<Vec<_>>().join(",")
            ),
            "text[]",
        ),
    }
}

/// The scans of the GENERIC plan of `text` (what a cached plan runs once
/// the planner stops re-planning per call, and what `append_batch_v2` uses from
/// the first call), asserting it never scans `events` or `event_tags`
/// sequentially. `seqscan` mirrors the session setting the statement runs
/// under (off inside `append_batch_v2`: an index path must then exist).
async fn explain_generic(
    db: &TestDatabase,
    text: &str,
    args: &[(String, &'static str)],
    seqscan: bool,
) -> Analyzed {
    let mut conn = db.pool().acquire().await.unwrap();
    let types: Vec<&str> = args.iter().map(|(_, t)| *t).collect();
    let values: Vec<&str> = args.iter().map(|(v, _)| v.as_str()).collect();
    conn.execute(
        format!(
            "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = {seqscan};
             PREPARE generic_check({}) AS {text}",
            types.join(", ")
        )
        .as_str(),
    )
    .await
    .unwrap_or_else(|e| panic!("PREPARE failed: {e}\n{text}"));
    let explain = format!("{ANALYZE} EXECUTE generic_check({})", values.join(", "));
    let analyzed = analyze(
        &mut conn,
        sqlx::query(&explain),
        &format!("(generic) {text}"),
    )
    .await;
    conn.execute("DEALLOCATE generic_check; RESET plan_cache_mode; RESET enable_seqscan")
        .await
        .unwrap();
    analyzed
}

/// Asserts that `function` runs with the settings the generic-plan checks
/// assume: forced generic plans, no sequential scans, no JIT.
async fn assert_plan_settings(db: &TestDatabase, function: &str) {
    let config: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(proconfig) FROM pg_proc WHERE oid = $1::regproc ORDER BY 1",
    )
    .bind(function)
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(
        config,
        [
            "enable_seqscan=off",
            "jit=off",
            "plan_cache_mode=force_generic_plan"
        ],
        "{function}"
    );
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
        explain(&db, &page, &binds).await.require(
            &format!("a later page (forwards: {forwards})"),
            &["event_tags_pkey", "events_type_position"],
            READ_BUFFERS,
        );
    }
    // The first page of a read (with the head, in one statement), both ways,
    // with its values and, for the tagged items, as the generic plan a
    // cached statement ends up on. Not for a type-only item: a generic plan
    // does not know whether the type is rare, and depending on the
    // statistics it walks the primary key instead of `events_type_position`
    // (18,000-35,000 buffers seen here), so reads with type-only items are
    // planned with their values on every call (`sql::plan_per_call`).
    let tagged = Query::from_items([
        QueryItem::new()
            .types(["Opened", "Deposited", "Withdrawn"])
            .tags([Tag::new("acc", 4242)]),
        QueryItem::new().tags([Tag::new("acc", 77), Tag::new("kind", 0)]),
    ]);
    for forwards in [true, false] {
        let what = format!("the first page (forwards: {forwards})");
        let page = sql::read_page("dcb", &query, forwards, true).unwrap();
        let mut binds = page.binds.clone();
        binds[0] = Bind::I64(1);
        binds[1] = Bind::I64(i64::MAX);
        binds[2] = Bind::I64(1000);
        explain(&db, &page, &binds).await.require(
            &what,
            &["event_tags_pkey", "events_type_position"],
            READ_BUFFERS,
        );
        let page = sql::read_page("dcb", &tagged, forwards, true).unwrap();
        let mut binds = page.binds.clone();
        binds[0] = Bind::I64(1);
        binds[1] = Bind::I64(i64::MAX);
        binds[2] = Bind::I64(1000);
        let args: Vec<_> = binds.iter().map(literal).collect();
        explain_generic(&db, &page.text, &args, true).await.require(
            &format!("{what} of tagged items, generic plan"),
            &["event_tags_pkey", "events_pkey"],
            CHECK_BUFFERS,
        );
    }
    // The whole log, one page.
    let page = sql::read_page("dcb", &Query::all(), true, false).unwrap();
    let mut binds = page.binds.clone();
    binds[0] = Bind::I64(500_000);
    binds[1] = Bind::I64(EVENTS);
    binds[2] = Bind::I64(1000);
    explain(&db, &page, &binds).await.require(
        "a page of the whole log",
        &["events_pkey"],
        PAGE_BUFFERS,
    );

    // The batch check: the very statement `append_batch_v2` runs (cut out
    // of the migration step that installs it), with a batch of conditions
    // bound the way the writer binds them.
    let step = render(EVENT_STORE_STEPS[3], "dcb");
    let begin = step.find("-- condition check: begin").unwrap();
    let end = step.find("-- condition check: end").unwrap();
    let check = Sql {
        text: step[begin..end].to_string(),
        binds: Vec::new(),
    };
    let with_after = AppendCondition::not_after(query.clone(), Some(Position(990_000)));
    let uniqueness = AppendCondition::never_matched(Query::tags([Tag::new("acc", 12)]));
    let by_type = AppendCondition::not_after(Query::types(["RatesChanged"]), Some(Position(1)));
    let two_tags =
        AppendCondition::never_matched(Query::tags([Tag::new("acc", 13), Tag::new("kind", 7)]));
    // acc:4242's last event is at 904,242 (an `Opened`).
    let account_since = AppendCondition::not_after(
        Query::from_items([QueryItem::new()
            .types(["Opened", "Deposited"])
            .tags([Tag::new("acc", 4242)])]),
        Some(Position(900_000)),
    );
    let event = dcb_core::EventRecord {
        event_type: "Opened".into(),
        tags: vec![],
        payload: vec![],
        metadata: dcb_core::EventMetadata::new(),
    };
    let events = [event];
    let batch = Batch::from_parts(&[
        (&events[..], Some(&with_after)),
        (&events[..], Some(&uniqueness)),
        (&events[..], Some(&by_type)),
        (&events[..], Some(&two_tags)),
        (&events[..], Some(&account_since)),
    ]);
    fn bind<'q>(
        text: &'q str,
        batch: &Batch,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(text)
            .bind(batch.c_request.clone())
            .bind(batch.c_after.clone())
            .bind(batch.c_probe.clone())
            .bind(batch.c_type.clone())
            .bind(batch.c_tags.clone())
    }
    let explain_text = format!("{ANALYZE} {}", check.text);
    let mut conn = db.pool().acquire().await.unwrap();
    let analyzed = analyze(&mut conn, bind(&explain_text, &batch), &check.text).await;
    drop(conn);
    for relation in ["event_tags", "events"] {
        assert!(
            analyzed
                .nodes
                .iter()
                .any(|(n, r)| n.starts_with("Index") && r == relation),
            "no index scan of {relation}: {:?}",
            analyzed.nodes
        );
    }
    analyzed.require(
        "the batch's condition check",
        &["event_tags_pkey", "events_pkey"],
        CHECK_BUFFERS,
    );
    // And it actually runs fast, and finds what it should: the uniqueness
    // check (acc:12 exists) and acc:4242 since 900,000 fail; acc:4242 since
    // 990,000 does not (its RatesChanged item is a type-only item, checked
    // apart); acc:13 is probed but no event of it has kind:7 (the re-check
    // of the other tag).
    let t = Instant::now();
    let mut failed: Vec<i32> = bind(&check.text, &batch)
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    eprintln!(
        "batch check took {:?}; whole test {:?}",
        t.elapsed(),
        started.elapsed()
    );
    failed.sort_unstable();
    assert_eq!(failed, vec![2, 5]);

    // The same check as the function runs it: its generic plan, with scans
    // ruled out (the function's own settings), so an index path must exist.
    let array =
        |items: Vec<String>, ty: &'static str| (format!("ARRAY[{}]::{ty}", items.join(",")), ty);
    let text_items = |items: &[Option<String>]| {
        items
            .iter()
            .map(|v| {
                v.as_ref().map_or("NULL".to_string(), |v| {
                    format!("'{}'", v.replace('\'', "''"))
                })
            })
            .collect::<Vec<_>>()
    };
    let check_args = [
        array(
            batch.c_request.iter().map(|v| v.to_string()).collect(),
            "int[]",
        ),
        array(
            batch.c_after.iter().map(|v| v.to_string()).collect(),
            "bigint[]",
        ),
        array(text_items(&batch.c_probe), "text[]"),
        array(text_items(&batch.c_type), "text[]"),
        array(text_items(&batch.c_tags), "text[]"),
    ];
    explain_generic(&db, &check.text, &check_args, false)
        .await
        .require(
            "the batch's condition check, generic plan",
            &["event_tags_pkey", "events_pkey"],
            CHECK_BUFFERS,
        );
    // The settings the checks above assume are the function's own.
    assert_plan_settings(&db, "dcb.append_batch_v2").await;
    // The reader's statement (cut out of `read_first_pages`), generic, as
    // the function runs it: the probes of acc:4242 by type, of acc:77 with
    // kind:0 re-checked, and of acc:12 with any type, from position 1 and
    // from 900,000, walk the tag index; events are fetched by position.
    let reads = render(EVENT_STORE_STEPS[4], "dcb");
    let begin = reads.find("-- first pages: begin").unwrap();
    let end = reads.find("-- first pages: end").unwrap();
    let first_pages = &reads[begin..end];
    let pages_args = [
        ("ARRAY[1, 1, 2, 3]".to_string(), "int[]"),
        (
            "ARRAY['acc:4242', 'acc:4242', 'acc:77', 'acc:12']".to_string(),
            "text[]",
        ),
        (
            "ARRAY['Opened', 'Deposited', NULL, NULL]".to_string(),
            "text[]",
        ),
        (
            "ARRAY[NULL, NULL, '{\"acc:77\",\"kind:0\"}', NULL]".to_string(),
            "text[]",
        ),
        ("ARRAY[1, 1, 900000, 1]::bigint[]".to_string(), "bigint[]"),
        (
            "ARRAY[1000, 1000, 1000, 1000]::bigint[]".to_string(),
            "bigint[]",
        ),
    ];
    explain_generic(&db, first_pages, &pages_args, false)
        .await
        .require(
            "the reader's first pages, generic plan",
            &["event_tags_pkey", "events_pkey"],
            READ_BUFFERS,
        );
    assert_plan_settings(&db, "dcb.read_first_pages").await;
    // And it finds what it should: acc:4242's Opened and Deposited events
    // (positions 4242 + k * 100,000; types cycle by position % 3), acc:77's
    // events of kind 0 after 900,000, every event of acc:12.
    let rows: Vec<(Option<i32>, Option<i64>)> = sqlx::query_as(
        "SELECT req, position FROM dcb.read_first_pages(
             ARRAY[1, 1, 2, 3], ARRAY['acc:4242', 'acc:4242', 'acc:77', 'acc:12'],
             ARRAY['Opened', 'Deposited', NULL, NULL],
             ARRAY[NULL, NULL, '{\"acc:77\",\"kind:0\"}', NULL],
             ARRAY[1, 1, 900000, 1]::bigint[], ARRAY[1000, 1000, 1000, 1000]::bigint[])
         ORDER BY req, position",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let of = |req: i32| -> Vec<i64> {
        rows.iter()
            .filter(|(r, _)| *r == Some(req))
            .filter_map(|(_, p)| *p)
            .collect()
    };
    let expected_4242: Vec<i64> = (0..10)
        .map(|k| 4242 + k * 100_000)
        .filter(|p| p % 1000 != 0 && p % 3 != 2)
        .collect();
    assert_eq!(of(1), expected_4242);
    let expected_77: Vec<i64> = (0..10)
        .map(|k| 77 + k * 100_000)
        .filter(|p| *p >= 900_000 && p % 7 == 0)
        .collect();
    assert_eq!(of(2), expected_77);
    assert_eq!(
        of(3),
        (0..10).map(|k| 12 + k * 100_000).collect::<Vec<i64>>()
    );

    // The event-id check: one probe of the unique index per id, generic.
    let begin = step.find("-- id check: begin").unwrap();
    let end = step.find("-- id check: end").unwrap();
    let ids = step[begin..end]
        .lines()
        .nth(1)
        .unwrap()
        .replace("$13", "$1");
    explain_generic(
        &db,
        &ids,
        &[(
            "ARRAY[gen_random_uuid(), gen_random_uuid()]".to_string(),
            "uuid[]",
        )],
        false,
    )
    .await
    .require(
        "the event-id check, generic plan",
        &["events_event_id_key"],
        PROBE_BUFFERS,
    );

    // Type-only items: the statement the function EXECUTEs per item (planned
    // with its values), with a rare type and a recent `after`.
    let begin = step.find("-- type check: begin").unwrap();
    let end = step.find("-- type check: end").unwrap();
    let quoted = step[begin..end].lines().nth(1).unwrap().trim();
    let by_type = Sql {
        text: quoted.trim_matches('\'').to_string(),
        binds: Vec::new(),
    };
    let text = format!("{ANALYZE} {}", by_type.text);
    let mut conn = db.pool().acquire().await.unwrap();
    let query = sqlx::query(&text).bind("RatesChanged").bind(990_000i64);
    let analyzed = analyze(&mut conn, query, &by_type.text).await;
    drop(conn);
    assert!(
        !analyzed.nodes.iter().any(|(n, _)| n == "Seq Scan"),
        "{}\n{:#}",
        by_type.text,
        analyzed.plan
    );
    analyzed.require(
        "a type-only condition item",
        &["events_type_position"],
        PROBE_BUFFERS,
    );
    db.cleanup().await;
}
