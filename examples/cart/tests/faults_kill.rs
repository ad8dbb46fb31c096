//! Fault 1: three cart servers (real processes) behind a client that spreads
//! requests; one is SIGKILLed every few seconds and restarted, under HTTP and
//! Kafka load. Then every invariant is checked (see `faults/mod.rs`).
//! Needs `DATABASE_URL` and `KAFKA_BROKERS` (tansu installed; a private
//! broker is started). `DCB_SOAK=1` runs it five times longer.

mod faults;

use std::time::{Duration, Instant};

use dcb_postgres::testing::TestDatabase;
use faults::*;

/// A SIGKILLed server that held the translators' partitions keeps them until
/// its Kafka session expires (the cart's `session.timeout.ms`, 6 s, see
/// `cart::app::KAFKA_SESSION_TIMEOUT`), so Kafka input waits about that long
/// after the last kill, plus a rebalance.
const KILL_CONVERGE: Duration = CONVERGE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_one_of_three_servers_repeatedly() {
    require_database();
    let tansu = Tansu::start();
    tansu.create_topics().await;
    let db = TestDatabase::create().await;
    let mut servers = Servers::start(3, db.url(), Some(&tansu.brokers), &[]).await;
    let kafka = Kafka::new(&tansu.brokers).await;
    let load = Load::new(servers.bases.clone());
    let workers = load.run(4);

    let rounds = 3 * soak(5);
    let mut last_fault = Instant::now();
    for round in 0..rounds {
        // Kafka traffic between the kills.
        for _ in 0..3 {
            assert!(kafka.inventory().await, "the broker takes inventories");
        }
        let product = load.products[round as usize % load.products.len()];
        assert!(kafka.price(product).await, "the broker takes price-changes");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let victim = round as usize % 3;
        servers.kill(victim);
        last_fault = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        servers.restart(victim).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.stop(workers).await;

    let pool = pool(db.url()).await;
    let expect = Expect {
        load: &load,
        kafka: Some(&kafka),
        dead: 0,
    };
    let converged = converge(&pool, &expect, last_fault, KILL_CONVERGE).await;
    check(&pool, &expect, &converged.fold).await;
    servers.stop_all();
    Summary {
        test: "kill (3 servers, SIGKILL + restart)",
        load: &load,
        extra_sent: 0,
        faults: servers.kills,
        fold: &converged.fold,
        kafka: Some(&kafka),
        converged_after: converged.after,
    }
    .print();
    let (_, accepted, _, _) = load.counts();
    assert!(accepted > 20, "the load got through: {accepted} accepted");
    pool.close().await;
    drop(servers);
    db.cleanup().await;
}
