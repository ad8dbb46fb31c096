//! At 100k due jobs (and 100k finished ones, and backlogs of another kind
//! and of scheduled jobs), the work queue's hot statements must not read
//! the table: the claim walks `jobs_claim` in claim order, the batch
//! statements find their rows through the primary key, the next-due probe
//! reads `jobs_ready_at`. Each is run under `EXPLAIN (ANALYZE, BUFFERS)`
//! (in a transaction rolled back afterwards), with its parameters bound (a
//! custom plan) and as a generic plan, which the plan cache may switch to
//! after a few executions: the named index must be probed with an index
//! condition (not walked whole), no node may scan `jobs`, and the buffers
//! the statement touches must stay far below the table's size.

use sqlx::{Executor, Row};

use super::client::pairs;
use super::WorkQueue;
use crate::testing::TestDatabase;

const DUE: i64 = 100_000;

/// Calls `visit` on every plan node of a JSON plan.
fn visit(plan: &serde_json::Value, f: &mut dyn FnMut(&serde_json::Map<String, serde_json::Value>)) {
    match plan {
        serde_json::Value::Object(map) => {
            if map.contains_key("Node Type") {
                f(map);
            }
            map.values().for_each(|v| visit(v, f));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| visit(v, f)),
        _ => {}
    }
}

/// What one statement's analyzed plan must show.
struct Expect {
    /// The index it must probe with an index condition.
    index: &'static str,
    /// The most buffers (hit or read) it may touch.
    max_buffers: i64,
}

/// Checks an `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` result; returns the
/// buffers touched.
fn check(what: &str, explained: &serde_json::Value, expect: &Expect) -> i64 {
    let mut seq_scans = Vec::new();
    let mut probed = false;
    visit(explained, &mut |node| {
        let field = |name: &str| node.get(name).and_then(|v| v.as_str()).unwrap_or("");
        if field("Node Type") == "Seq Scan" {
            seq_scans.push(field("Relation Name").to_string());
        }
        if field("Index Name") == expect.index && node.contains_key("Index Cond") {
            probed = true;
        }
    });
    assert!(
        !seq_scans.iter().any(|r| r == "jobs"),
        "{what}: sequential scan of jobs\n{explained:#}"
    );
    assert!(
        probed,
        "{what}: {} is not probed with an index condition\n{explained:#}",
        expect.index
    );
    let top = &explained[0]["Plan"];
    let buffers = top["Shared Hit Blocks"].as_i64().unwrap_or(0)
        + top["Shared Read Blocks"].as_i64().unwrap_or(0);
    assert!(
        buffers <= expect.max_buffers,
        "{what}: touched {buffers} buffers, more than {}\n{explained:#}",
        expect.max_buffers
    );
    buffers
}

type Bind = for<'q> fn(
    sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    &'q Params,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// The values the statements are run with.
struct Params {
    pair_queues: Vec<String>,
    pair_kinds: Vec<String>,
    ids: Vec<uuid::Uuid>,
    attempts: Vec<i32>,
    tokens: Vec<uuid::Uuid>,
}

/// Runs `sql` under `EXPLAIN (ANALYZE, BUFFERS)` with `bind`'s parameters,
/// then as a generic plan with `literal` as its parameters, each in a
/// transaction rolled back afterwards.
async fn explain_both(
    conn: &mut sqlx::PgConnection,
    what: &str,
    sql: &str,
    params: &Params,
    bind: Bind,
    literal: &str,
    expect: &Expect,
) {
    conn.execute("BEGIN").await.unwrap();
    let text = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}");
    let row = bind(sqlx::query(&text), params)
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN {what} failed: {e}"));
    let custom = check(what, &row.get::<serde_json::Value, _>(0), expect);
    conn.execute("ROLLBACK").await.unwrap();

    conn.execute("BEGIN").await.unwrap();
    conn.execute(format!("PREPARE generic_check AS {sql}").as_str())
        .await
        .unwrap_or_else(|e| panic!("PREPARE {what} failed: {e}"));
    conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    let row = sqlx::query(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE generic_check({literal})"
    ))
    .fetch_one(&mut *conn)
    .await
    .unwrap_or_else(|e| panic!("EXPLAIN EXECUTE {what} failed: {e}"));
    let generic = check(
        &format!("{what} (generic plan)"),
        &row.get::<serde_json::Value, _>(0),
        expect,
    );
    conn.execute("ROLLBACK").await.unwrap();
    conn.execute("DEALLOCATE generic_check").await.unwrap();
    eprintln!("{what}: {custom} buffers (custom plan), {generic} (generic plan)");
}

fn uuids(ids: &[uuid::Uuid]) -> String {
    let inner: Vec<String> = ids.iter().map(ToString::to_string).collect();
    format!("'{{{}}}'", inner.join(","))
}

#[tokio::test]
async fn hot_statements_probe_their_indexes_at_100k_jobs() {
    let db = TestDatabase::create().await;
    let queue = WorkQueue::new(db.pool().clone(), "dcb").unwrap();
    queue.migrate().await.unwrap();
    let mut conn = db.pool().acquire().await.unwrap();
    // Due jobs of the kind claimed, finished ones, and a backlog of
    // another kind and of scheduled jobs that claims must not wade through.
    conn.execute(
        format!(
            "INSERT INTO dcb.jobs (id, queue, kind, payload, state, run_at, finished_at)
             SELECT gen_random_uuid(), 'default', 'hot', '{{}}', 'ready',
                    now() - interval '1 hour' + i * interval '1 ms', NULL
             FROM generate_series(1, {DUE}) i;
             INSERT INTO dcb.jobs (id, queue, kind, payload, state, run_at, finished_at)
             SELECT gen_random_uuid(), 'default', 'hot', '{{}}', 'succeeded',
                    now() - interval '2 hours', now() - interval '1 hour'
             FROM generate_series(1, {DUE}) i;
             INSERT INTO dcb.jobs (id, queue, kind, payload, state, run_at)
             SELECT gen_random_uuid(), 'default', 'cold', '{{}}', 'ready', now() - interval '3 hours'
             FROM generate_series(1, 20000) i;
             INSERT INTO dcb.jobs (id, queue, kind, payload, state, run_at)
             SELECT gen_random_uuid(), 'default', 'hot', '{{}}', 'ready', now() + interval '1 day'
             FROM generate_series(1, 20000) i;"
        )
        .as_str(),
    )
    .await
    .unwrap();
    conn.execute("VACUUM ANALYZE dcb.jobs").await.unwrap();
    let table_pages: i64 = sqlx::query_scalar(
        "SELECT relpages::bigint FROM pg_class WHERE oid = 'dcb.jobs'::regclass",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert!(
        table_pages > 2_000,
        "the table is big enough to tell: {table_pages} pages"
    );
    eprintln!("jobs: {table_pages} pages");
    let queues = vec!["default".to_string()];
    let kinds = vec!["hot".to_string()];
    let running = queue
        .claim(
            &queues,
            &kinds,
            64,
            std::time::Duration::from_secs(30),
            "explain",
        )
        .await
        .unwrap();
    assert_eq!(running.len(), 64);
    let (pair_queues, pair_kinds) = pairs(&queues, &kinds);
    let params = Params {
        pair_queues,
        pair_kinds,
        ids: running.iter().map(|j| j.id).collect(),
        attempts: running.iter().map(|j| j.attempt as i32).collect(),
        tokens: running.iter().map(|j| j.lease_token).collect(),
    };
    let attempts_literal = format!(
        "'{{{}}}'",
        params
            .attempts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let fences = format!(
        "{}, {attempts_literal}, {}",
        uuids(&params.ids),
        uuids(&params.tokens)
    );
    let sql = &queue.sql;

    // A claim of 32 walks the index past the 64 claimed entries to 32 due
    // ones, reads and updates their rows (and their index entries).
    explain_both(
        &mut conn,
        "claim",
        &sql.claim,
        &params,
        |q, p| {
            q.bind(&p.pair_queues)
                .bind(&p.pair_kinds)
                .bind(32_i64)
                .bind(30.0_f64)
                .bind("explain")
        },
        "'{default}', '{hot}', 32, 30.0, 'explain'",
        &Expect {
            index: "jobs_claim",
            max_buffers: 1_000,
        },
    )
    .await;
    explain_both(
        &mut conn,
        "next due",
        &sql.next_due,
        &params,
        |q, p| q.bind(&p.pair_queues).bind(&p.pair_kinds),
        "'{default}', '{hot}'",
        &Expect {
            index: "jobs_ready_at",
            max_buffers: 50,
        },
    )
    .await;
    // 64 rows found through the primary key, each read, updated and
    // indexed anew: about 20 buffers a row, far below the table's pages.
    let fenced = Expect {
        index: "jobs_pkey",
        max_buffers: 2_500,
    };
    assert!(
        fenced.max_buffers < table_pages,
        "a scan would fit the bound"
    );
    explain_both(
        &mut conn,
        "complete_many",
        &sql.complete_many,
        &params,
        |q, p| q.bind(&p.ids).bind(&p.attempts).bind(&p.tokens),
        &fences,
        &fenced,
    )
    .await;
    explain_both(
        &mut conn,
        "heartbeat_many",
        &sql.heartbeat_many,
        &params,
        |q, p| {
            q.bind(&p.ids)
                .bind(&p.attempts)
                .bind(&p.tokens)
                .bind(30.0_f64)
        },
        &format!("{fences}, 30.0"),
        &fenced,
    )
    .await;
    explain_both(
        &mut conn,
        "release_many",
        &sql.release_many,
        &params,
        |q, p| {
            q.bind(&p.ids)
                .bind(&p.attempts)
                .bind(&p.tokens)
                .bind("chan")
        },
        &format!("{fences}, 'chan'"),
        &fenced,
    )
    .await;
    drop(conn);
    db.cleanup().await;
}
