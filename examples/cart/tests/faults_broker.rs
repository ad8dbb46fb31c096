//! Fault 2: the Kafka broker stopped for longer than the publisher's
//! backoff, then started again, under HTTP and Kafka load against two cart
//! servers (real processes). Carts submitted meanwhile must be published
//! once the broker is back (`CartPublished` exactly once, no
//! `CartPublicationFailed` within the one-hour deadline), the translators
//! must carry on, and every invariant must hold (see `faults/mod.rs`).
//! Needs `DATABASE_URL` and `KAFKA_BROKERS` (tansu installed; a private
//! broker is started). `DCB_SOAK=1` runs more rounds and outages.
//!
//! The broker is tansu with memory storage: a restart loses every topic,
//! message and committed offset, the way a topic deleted and created again
//! does. So:
//! - the topics are created again after each restart (tansu does not
//!   create them on first use);
//! - `published-carts` is read until everything on it was seen before the
//!   broker stops (the servers are frozen with SIGSTOP for that moment, so
//!   nothing is written that the reader could miss), and read again from
//!   its start after the restart; "on the topic at least once" is checked
//!   over the union of both lifetimes;
//! - the `inventories` / `price-changes` messages produced before the stop
//!   are decided before it; the first message after the restart reuses
//!   offset 0, which the translators must decide, not take for a
//!   redelivery of the old offset 0 (see `dcb_kafka::record_key`).

mod faults;

use std::time::{Duration, Instant};

use dcb_postgres::testing::TestDatabase;
use faults::*;
use sqlx::PgPool;

/// One publication attempt waits this long for the broker's
/// acknowledgement (`CART_PUBLISH_TIMEOUT_MS`; 30 s by default).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// The publisher's backoff: from this (`CART_PUBLISH_RETRY_MIN_MS`)...
const RETRY_MIN: Duration = Duration::from_millis(500);
/// ...doubling up to this (`CART_PUBLISH_RETRY_MAX_MS`).
const RETRY_MAX: Duration = Duration::from_secs(4);
/// How long the broker stays down: longer than an attempt plus the longest
/// backoff, so each publication pending meanwhile fails and is retried
/// (after the longest backoff) at least once.
const OUTAGE: Duration = Duration::from_secs(15);

/// (publish jobs, jobs that took more than one attempt, most attempts).
async fn publish_attempts(pool: &PgPool) -> (i64, i64, i32) {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE attempt > 1), coalesce(max(attempt), 0) \
         FROM dcb.jobs WHERE kind = 'publish_cart'",
    )
    .fetch_one(pool)
    .await
    .expect("the jobs table")
}

/// Jobs failed and waiting for their next attempt.
async fn failed_publications(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM dcb.jobs \
         WHERE kind = 'publish_cart' AND state = 'ready' AND last_error IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .expect("the jobs table")
}

/// Produces some stock reports and a price change; asserts the broker took
/// them.
async fn kafka_round(kafka: &Kafka, load: &Load, round: usize) {
    for _ in 0..3 {
        assert!(kafka.inventory().await, "the broker takes inventories");
    }
    let product = load.products[round % load.products.len()];
    assert!(kafka.price(product).await, "the broker takes price-changes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_longer_than_the_backoff_then_started() {
    require_database();
    let tansu = Tansu::start();
    tansu.create_topics().await;
    let db = TestDatabase::create().await;
    let timeout = PUBLISH_TIMEOUT.as_millis().to_string();
    let retry_min = RETRY_MIN.as_millis().to_string();
    let retry_max = RETRY_MAX.as_millis().to_string();
    let mut servers = Servers::start(
        2,
        db.url(),
        Some(&tansu.brokers),
        &[
            ("CART_PUBLISH_TIMEOUT_MS", timeout.as_str()),
            ("CART_PUBLISH_RETRY_MIN_MS", retry_min.as_str()),
            ("CART_PUBLISH_RETRY_MAX_MS", retry_max.as_str()),
        ],
    )
    .await;
    let kafka = Kafka::new(&tansu.brokers).await;
    let load = Load::new(servers.bases.clone());
    let workers = load.run(3);
    let pool = pool(db.url()).await;

    let mut round = 0;
    let mut outages = 0;
    let mut last_fault = Instant::now();
    let mut submitted_during_outages = 0;
    for _ in 0..soak(3) {
        // Traffic while the broker is up.
        for _ in 0..2 {
            kafka_round(&kafka, &load, round).await;
            round += 1;
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }

        // Everything produced so far is decided and everything published
        // so far is read: the broker is about to lose it all.
        wait_kafka_input_decided(&pool, &kafka, CONVERGE).await;
        servers.pause_all();
        let deadline = Instant::now() + Duration::from_secs(60);
        // Twice in a row: a produce request the servers sent just before
        // they froze may land after the first look.
        let mut caught_up = 0;
        while caught_up < 2 {
            caught_up = if kafka.read_all().await {
                caught_up + 1
            } else {
                0
            };
            if Instant::now() > deadline {
                servers.resume_all();
                panic!("published-carts not read to its end within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        kafka.stop_reading();
        tansu.stop();
        servers.resume_all();
        outages += 1;
        let stopped = Instant::now();
        let submitted_before = submitted(&load);

        // The outage: HTTP load goes on, publications fail and are retried.
        while stopped.elapsed() < OUTAGE {
            servers.assert_running();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let failed = failed_publications(&pool).await;
        submitted_during_outages += submitted(&load) - submitted_before;
        assert!(
            failed > 0 || submitted(&load) == submitted_before,
            "no publication failed during a {OUTAGE:?} outage"
        );

        tansu.up();
        tansu.create_topics().await;
        kafka.reread();
        last_fault = Instant::now();
        eprintln!(
            "broker back after {:.1}s ({failed} publications waiting to be retried)",
            stopped.elapsed().as_secs_f64()
        );

        // The first message of each topic after the restart reuses offset
        // 0: it must be decided, i.e. the translators found their way back
        // to the new log (the group's old position lies past its end) and
        // did not take it for the old offset 0. One message per topic until
        // then: a new log that grew past the old position first would hide
        // its start from any consumer.
        let deadline = Instant::now() + CONVERGE;
        while !kafka.inventory().await {
            // The test's producer, like the servers', times out once on the
            // restarted broker and is replaced (see `dcb_kafka::Publisher`).
            assert!(
                Instant::now() < deadline,
                "the restarted broker takes no input"
            );
        }
        let product = load.products[round % load.products.len()];
        while !kafka.price(product).await {
            assert!(
                Instant::now() < deadline,
                "the restarted broker takes no price-changes"
            );
        }
        wait_kafka_input_decided(&pool, &kafka, CONVERGE).await;
        eprintln!(
            "translators decide again {:.1}s after the restart",
            last_fault.elapsed().as_secs_f64()
        );
        kafka_round(&kafka, &load, round).await;
        round += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop(workers).await;
    servers.assert_running();

    let expect = Expect {
        load: &load,
        kafka: Some(&kafka),
        dead: 0,
    };
    let converged = converge(&pool, &expect, last_fault, CONVERGE).await;
    check(&pool, &expect, &converged.fold).await;
    let (jobs, retried, most) = publish_attempts(&pool).await;
    servers.stop_all();
    Summary {
        test: "broker (stopped longer than the publisher's backoff, then started)",
        load: &load,
        extra_sent: 0,
        faults: outages,
        fold: &converged.fold,
        kafka: Some(&kafka),
        converged_after: converged.after,
    }
    .print();
    println!(
        "SUMMARY broker details: {outages} outage(s) of {:.0}s (publish attempt timeout {:.1}s, \
         backoff {:.1}s..{:.1}s); {submitted_during_outages} carts submitted during outages; \
         {jobs} publish jobs, {retried} retried, at most {most} attempts; \
         {} carts seen on published-carts",
        OUTAGE.as_secs_f64(),
        PUBLISH_TIMEOUT.as_secs_f64(),
        RETRY_MIN.as_secs_f64(),
        RETRY_MAX.as_secs_f64(),
        kafka.published.lock().unwrap().len()
    );
    assert!(
        retried > 0,
        "no publication was retried: the outage did not exercise the backoff"
    );
    pool.close().await;
    drop(servers);
    db.cleanup().await;
}

/// Carts submitted so far (200 answers to SubmitCart).
fn submitted(load: &Load) -> usize {
    load.records
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.kind == Kind::Submit && r.status == 200)
        .count()
}
