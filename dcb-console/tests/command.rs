//! The `dcb` binary against a running cart (in-process, on a fresh
//! database): status, events, listeners, jobs, migrate, and its errors.
//!
//! Needs PostgreSQL: set DATABASE_URL or run `scripts/postgres.sh start`.

mod support;

use std::time::Duration;

use dcb_core::{EventMetadata, EventRecord, EventStore, Tag};
use dcb_postgres::queue::JobState;
use serde_json::Value;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

const HOUR: Duration = Duration::from_secs(3600);

fn listener<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no listener {name} in {status:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_lists_every_cart_listener_with_its_lag_and_the_publication_queue() {
    let cart = start_cart(HOUR).await;
    // Before anything happened: every listener leads, idle, nothing behind.
    let status = eventually("every cart listener led", || async {
        let status = cart.dcb_json(&["status", "--json"]).await;
        match CART_LISTENERS
            .iter()
            .all(|name| listener(&status, name)["leader"].is_string())
        {
            true => Ok(status),
            false => Err(status.to_string()),
        }
    })
    .await;
    for name in CART_LISTENERS {
        assert_eq!(listener(&status, name)["state"], "idle", "{status:#}");
        assert_eq!(listener(&status, name)["lag_events"], 0);
    }

    let id = Uuid::new_v4();
    cart.add_item(id, "a book").await;
    cart.submit(id).await;
    cart.wait_for_job(JobState::Succeeded).await;
    cart.settle().await;
    let head = cart.head().await;

    let status = cart.dcb_json(&["status", "--json"]).await;
    assert_eq!(status["schema"], "dcb");
    assert_eq!(status["head"], head);
    let names: Vec<&str> = status["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, CART_LISTENERS, "{status:#}");
    for name in CART_LISTENERS {
        let l = listener(&status, name);
        assert_eq!(l["position"], head, "{name}: {l}");
        assert_eq!(l["lag_events"], 0, "{name}: {l}");
        assert_eq!(l["lag_seconds"], 0.0, "{name}: {l}");
        assert_eq!(l["parked"], 0, "{name}: {l}");
        assert!(l["leader"].is_string(), "{name}: {l}");
    }
    assert_eq!(listener(&status, "cart-items-db")["mode"], "transactional");
    let queue = &status["queues"][0];
    assert_eq!(queue["name"], "default", "{status:#}");
    assert_eq!(queue["counts"]["succeeded"], 1, "{status:#}");
    assert_eq!(queue["counts"]["dead"], 0);
    assert_eq!(queue["counts"]["ready"], 0);
    assert!(queue["oldest_ready_age_seconds"].is_null());
    assert!(status["kafka"].is_null(), "no Kafka tables without Kafka");

    // The readable table says the same.
    let output = cart.dcb(&["status"]).await;
    assert_success(&output, &["status"]);
    let text = stdout(&output);
    assert!(
        text.contains(&format!("head of the log at position {head}")),
        "{text}"
    );
    for name in CART_LISTENERS {
        assert!(text.lines().any(|l| l.starts_with(name)), "{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("default")), "{text}");

    // A listener that falls behind shows its lag: the cart's read model
    // waits on a lock the test holds while events are appended.
    let mut lock = cart.db.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE cart.carts, cart.cart_items IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let behind = cart.add_item(Uuid::new_v4(), "another").await;
    let status = cart.dcb_json(&["status", "--json"]).await;
    let items = listener(&status, "cart-items-db");
    assert_eq!(items["position"], head, "{items}");
    assert_eq!(items["lag_events"], behind - head, "{items}");
    assert!(items["lag_seconds"].as_f64().unwrap() >= 0.0);
    lock.rollback().await.unwrap();
    eventually("cart-items-db caught up", || async {
        let status = cart.dcb_json(&["status", "--json"]).await;
        match listener(&status, "cart-items-db")["lag_events"] == 0 {
            true => Ok(()),
            false => Err(listener(&status, "cart-items-db").to_string()),
        }
    })
    .await;
    cart.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_are_filtered_by_type_tag_and_position_and_followed() {
    let cart = start_cart(HOUR).await;
    let (one, two) = (Uuid::new_v4(), Uuid::new_v4());
    cart.add_item(one, "first").await;
    cart.add_item(two, "second").await;
    let last = cart.add_item(one, "third").await;

    let lines = |output: &std::process::Output| -> Vec<Value> {
        stdout(output)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
            .collect()
    };
    let tag = format!("cart_id:{one}");
    let output = cart.dcb(&["events", "--tag", &tag, "--json"]).await;
    assert_success(&output, &["events"]);
    let events = lines(&output);
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["CartCreated", "CartItemAdded", "CartItemAdded"]);
    assert_eq!(events[2]["position"], last);
    assert_eq!(events[2]["payload"]["description"], "third");
    assert!(events[2]["event_id"].is_string());

    let output = cart
        .dcb(&[
            "events",
            "--type",
            "CartItemAdded",
            "--after",
            "2",
            "--json",
        ])
        .await;
    let positions: Vec<u64> = lines(&output)
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [4, 5], "{}", stdout(&output));

    let output = cart
        .dcb(&["events", "--backwards", "--limit", "1", "--json"])
        .await;
    let newest = lines(&output);
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0]["position"], last);

    // One line per event by default.
    let output = cart
        .dcb(&["events", "--tag", &tag, "--tag", "nope:x"])
        .await;
    assert_success(&output, &["events"]);
    assert_eq!(stdout(&output), "");
    let output = cart.dcb(&["events", "--limit", "2"]).await;
    let text = stdout(&output);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines().next().unwrap().contains("CartCreated"),
        "{text}"
    );

    // A bad tag is refused by name.
    let output = cart.dcb(&["events", "--tag", "nocolon"]).await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("key:value"), "{}", stderr(&output));

    // --follow prints what is appended after its start, as it comes.
    let from = last.to_string();
    let mut follower = tokio::process::Command::new(env!("CARGO_BIN_EXE_dcb"))
        .args([
            "events", "--follow", "--json", "--tag", &tag, "--after", &from,
        ])
        .env("DATABASE_URL", cart.db.url())
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("dcb events --follow starts");
    let mut out = BufReader::new(follower.stdout.take().unwrap()).lines();
    let appended = cart.add_item(one, "followed").await;
    let line = tokio::time::timeout(EVENTUALLY, out.next_line())
        .await
        .expect("a line within the bound")
        .expect("stdout")
        .expect("a line");
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["position"], appended);
    assert_eq!(event["payload"]["description"], "followed");
    follower.kill().await.unwrap();
    cart.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_from_the_command_replays_the_read_model_with_progress() {
    let cart = start_cart(HOUR).await;
    for _ in 0..5 {
        let id = Uuid::new_v4();
        cart.add_item(id, "x").await;
        cart.add_item(id, "y").await;
    }
    cart.settle().await;
    let head = cart.head().await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cart.cart_items")
            .fetch_one(cart.db.pool())
            .await
            .unwrap()
    };
    assert_eq!(count().await, 10);
    // Damage the read model: only a replay brings the rows back.
    sqlx::query("DELETE FROM cart.cart_items")
        .execute(cart.db.pool())
        .await
        .unwrap();

    let output = cart
        .dcb(&["listeners", "rebuild", "cart-items-db", "--timeout", "60"])
        .await;
    assert_success(&output, &["listeners", "rebuild"]);
    let text = stdout(&output);
    assert!(
        text.contains(&format!(
            "cart-items-db replayed to position {head}: 15 events handled"
        )),
        "{text}"
    );
    // Progress lines, since standard error is not a terminal here.
    assert!(
        stderr(&output).contains(&format!("cart-items-db: position {head} of {head}")),
        "{}",
        stderr(&output)
    );
    assert_eq!(count().await, 10);

    // An unknown listener is an error that names it.
    let output = cart.dcb(&["listeners", "rebuild", "nope"]).await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("nope"), "{}", stderr(&output));
    cart.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parked_event_is_listed_then_skipped_from_the_command() {
    let cart = start_cart(HOUR).await;
    // An event the cart's read models cannot decode: they park it.
    let bad = cart
        .app
        .store()
        .append(
            vec![EventRecord {
                event_type: "CartItemAdded".into(),
                tags: vec![Tag::new("cart_id", Uuid::new_v4())],
                payload: b"not json".to_vec(),
                metadata: EventMetadata::new(),
            }],
            None,
        )
        .await
        .unwrap()
        .last
        .0;
    let parked = eventually("cart-items-db parked the bad event", || async {
        let parked = cart
            .dcb_json(&["listeners", "parked", "cart-items-db", "--json"])
            .await;
        match parked.as_array().is_some_and(|p| !p.is_empty()) {
            true => Ok(parked),
            false => Err(parked.to_string()),
        }
    })
    .await;
    assert_eq!(parked[0]["position"], bad);
    assert_eq!(parked[0]["event_type"], "CartItemAdded");
    let status = cart.dcb_json(&["status", "--json"]).await;
    assert_eq!(listener(&status, "cart-items-db")["parked"], 1);

    // Retrying fails again (it still does not decode), and says why.
    let position = bad.to_string();
    let output = cart
        .dcb(&["listeners", "retry", "cart-items-db", &position])
        .await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("failed"), "{}", stderr(&output));

    let output = cart
        .dcb(&["listeners", "skip", "cart-items-db", &position])
        .await;
    assert_success(&output, &["listeners", "skip"]);
    assert!(stdout(&output).contains("skipped"), "{}", stdout(&output));
    let parked = cart
        .dcb_json(&["listeners", "parked", "cart-items-db", "--json"])
        .await;
    assert_eq!(parked, serde_json::json!([]));
    cart.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_jobs_are_listed_redriven_and_cancelled_from_the_command() {
    let cart = start_cart(Duration::from_millis(300)).await;
    cart.publisher.fail(true);
    let (one, two) = (Uuid::new_v4(), Uuid::new_v4());
    for id in [one, two] {
        cart.add_item(id, "x").await;
        cart.submit(id).await;
    }
    let dead = eventually("two dead publications", || async {
        let dead = cart
            .dcb_json(&["jobs", "list", "--state", "dead", "--json"])
            .await;
        match dead.as_array().map_or(0, Vec::len) {
            2 => Ok(dead),
            _ => Err(dead.to_string()),
        }
    })
    .await;
    assert!(dead
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["kind"] == "publish_cart"
            && j["state"] == "dead"
            && j["last_error"].as_str().unwrap().contains("broker is down")));
    let status = cart.dcb_json(&["status", "--json"]).await;
    assert_eq!(status["queues"][0]["counts"]["dead"], 2);

    cart.publisher.fail(false);
    let first = dead[0]["id"].as_str().unwrap().to_owned();
    let second = dead[1]["id"].as_str().unwrap().to_owned();
    let output = cart.dcb(&["jobs", "redrive", &first]).await;
    assert_success(&output, &["jobs", "redrive"]);
    let output = cart.dcb(&["jobs", "cancel", &second]).await;
    assert_success(&output, &["jobs", "cancel"]);
    eventually("the redriven job succeeded", || async {
        let job = cart.dcb_json(&["jobs", "show", &first, "--json"]).await;
        match job["state"] == "succeeded" {
            true => Ok(()),
            false => Err(job.to_string()),
        }
    })
    .await;
    assert_eq!(cart.publisher.published().len(), 1);
    let job = cart.dcb_json(&["jobs", "show", &second, "--json"]).await;
    assert_eq!(job["state"], "cancelled");

    // Nothing left to do on either: both say why.
    let output = cart.dcb(&["jobs", "redrive", &first]).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("it is succeeded"),
        "{}",
        stderr(&output)
    );
    let output = cart.dcb(&["jobs", "cancel", &second]).await;
    assert!(!output.status.success());
    let output = cart.dcb(&["jobs", "redrive", "--all-dead"]).await;
    assert_success(&output, &["jobs", "redrive", "--all-dead"]);
    assert!(stdout(&output).contains("0 dead jobs redriven"));
    cart.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_or_schema_is_a_clear_error_and_migrate_creates_one() {
    let db = dcb_postgres::testing::TestDatabase::create().await;
    let output = dcb_with(&["status"], &[]).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("DATABASE_URL"),
        "{}",
        stderr(&output)
    );

    let missing = dcb_postgres::testing::with_database(db.url(), "dcb_no_such_database");
    let output = dcb_with(&["status"], &[("DATABASE_URL", &missing)]).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("database \"dcb_no_such_database\" does not exist"),
        "{}",
        stderr(&output)
    );

    let env = [("DATABASE_URL", db.url())];
    let output = dcb_with(&["--schema", "billing", "status"], &env).await;
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("schema \"billing\" does not exist")
            && message.contains("its dcb event store is in schema \"dcb\"")
            && message.contains("dcb migrate --schema billing"),
        "{message}"
    );
    let output = dcb_with(&["--schema", "Bad-Name", "status"], &env).await;
    assert!(stderr(&output).contains("invalid schema name"));

    let output = dcb_with(&["--schema", "billing", "migrate"], &env).await;
    assert_success(&output, &["migrate"]);
    assert!(stdout(&output).contains("kafka"), "{}", stdout(&output));
    let output = dcb_with(&["--schema", "billing", "status", "--json"], &env).await;
    assert_success(&output, &["status"]);
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["schema"], "billing");
    assert_eq!(status["listeners"], serde_json::json!([]));
    assert_eq!(status["kafka"]["dead_records"], 0);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_walks_a_newcomer_through() {
    let output = dcb_with(&["--help"], &[]).await;
    assert_success(&output, &["--help"]);
    let text = stdout(&output);
    for part in [
        "DATABASE_URL",
        "--schema",
        "dcb status",
        "status",
        "events",
        "listeners",
        "jobs",
        "dead-messages",
        "migrate",
        "console",
        "--json",
    ] {
        assert!(text.contains(part), "--help lacks {part}:\n{text}");
    }
    let output = dcb_with(&["listeners", "--help"], &[]).await;
    let text = stdout(&output);
    for part in ["reset", "rebuild", "retry", "skip", "parked"] {
        assert!(
            text.contains(part),
            "listeners --help lacks {part}:\n{text}"
        );
    }
}
