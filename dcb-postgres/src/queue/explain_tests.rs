//! At 100k due jobs (and 100k finished ones), the work queue's hot
//! statements must not read the table: the claim walks `jobs_claim` in
//! claim order, the batch statements find their rows through the primary
//! key, the next-due probe reads `jobs_ready_at`. Checked with the
//! parameters bound (a custom plan) and as a generic plan, which the plan
//! cache may switch to after a few executions.

use sqlx::{Executor, Row};

use super::{pairs, WorkQueue};
use crate::testing::TestDatabase;

const DUE: i64 = 100_000;

/// Every `(node type, index or else relation)` in a JSON plan.
fn nodes(plan: &serde_json::Value, out: &mut Vec<(String, String)>) {
    crate::explain_tests::visit_plan_nodes(plan, &mut |map| {
        let field = |name: &str| map.get(name).and_then(|v| v.as_str());
        out.push((
            field("Node Type").unwrap_or("").to_string(),
            field("Index Name")
                .or_else(|| field("Relation Name"))
                .unwrap_or("")
                .to_string(),
        ));
    });
}

fn check(what: &str, plan: &serde_json::Value, index: &str) {
    let mut found = Vec::new();
    nodes(plan, &mut found);
    assert!(
        !found
            .iter()
            .any(|(node, target)| node == "Seq Scan" && target == "jobs"),
        "{what}: sequential scan of jobs\n{plan:#}"
    );
    assert!(
        found.iter().any(|(_, target)| target == index),
        "{what}: {index} not used\n{plan:#}"
    );
}

/// `literal` renders the statement's parameters as SQL literals, for the
/// generic plan of a prepared statement.
async fn explain_both(
    conn: &mut sqlx::PgConnection,
    what: &str,
    sql: &str,
    bind: impl for<'q> FnOnce(
        sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    )
        -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    literal: &str,
    index: &str,
) {
    let text = format!("EXPLAIN (FORMAT JSON) {sql}");
    let row = bind(sqlx::query(&text))
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN {what} failed: {e}"));
    check(what, &row.get::<serde_json::Value, _>(0), index);

    conn.execute(format!("PREPARE generic_check AS {sql}").as_str())
        .await
        .unwrap_or_else(|e| panic!("PREPARE {what} failed: {e}"));
    conn.execute("SET plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    let row = sqlx::query(&format!(
        "EXPLAIN (FORMAT JSON) EXECUTE generic_check({literal})"
    ))
    .fetch_one(&mut *conn)
    .await
    .unwrap_or_else(|e| panic!("EXPLAIN EXECUTE {what} failed: {e}"));
    check(
        &format!("{what} (generic plan)"),
        &row.get::<serde_json::Value, _>(0),
        index,
    );
    conn.execute("DEALLOCATE generic_check; RESET plan_cache_mode")
        .await
        .unwrap();
}

fn uuids(ids: &[uuid::Uuid]) -> String {
    let inner: Vec<String> = ids.iter().map(ToString::to_string).collect();
    format!("'{{{}}}'", inner.join(","))
}

#[tokio::test]
async fn hot_statements_use_their_indexes_at_100k_jobs() {
    let db = TestDatabase::create().await;
    let queue = WorkQueue::new(db.pool().clone(), "dcb");
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
             FROM generate_series(1, 20000) i;
             ANALYZE dcb.jobs;"
        )
        .as_str(),
    )
    .await
    .unwrap();
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
    let ids: Vec<uuid::Uuid> = running.iter().map(|j| j.id).collect();
    let attempts: Vec<i32> = running.iter().map(|j| j.attempt as i32).collect();
    let tokens: Vec<uuid::Uuid> = running.iter().map(|j| j.lease_token).collect();
    let attempts_literal = format!(
        "'{{{}}}'",
        attempts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let fences = format!("{}, {attempts_literal}, {}", uuids(&ids), uuids(&tokens));
    let (pair_queues, pair_kinds) = pairs(&queues, &kinds);
    let sql = &queue.sql;

    explain_both(
        &mut conn,
        "claim",
        &sql.claim,
        |q| {
            q.bind(pair_queues.clone())
                .bind(pair_kinds.clone())
                .bind(32_i64)
                .bind(30.0_f64)
                .bind("explain")
        },
        "'{default}', '{hot}', 32, 30.0, 'explain'",
        "jobs_claim",
    )
    .await;
    explain_both(
        &mut conn,
        "next due",
        &sql.next_due,
        |q| q.bind(pair_queues.clone()).bind(pair_kinds.clone()),
        "'{default}', '{hot}'",
        "jobs_ready_at",
    )
    .await;
    for (what, statement, extra) in [
        ("complete_many", &sql.complete_many, ""),
        ("heartbeat_many", &sql.heartbeat_many, ", 30.0"),
        ("release_many", &sql.release_many, ", 'chan'"),
    ] {
        explain_both(
            &mut conn,
            what,
            statement,
            |q| {
                let q = q
                    .bind(ids.clone())
                    .bind(attempts.clone())
                    .bind(tokens.clone());
                match extra {
                    "" => q,
                    ", 30.0" => q.bind(30.0_f64),
                    _ => q.bind("chan"),
                }
            },
            &format!("{fences}{extra}"),
            "jobs_pkey",
        )
        .await;
    }
    drop(conn);
    db.cleanup().await;
}
