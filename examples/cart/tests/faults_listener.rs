//! Fault 4: the Inventories listener's handler fails on one event (the
//! cart's test hook `CART_FAIL_LISTENER_ON=<product id>`), blocking the read
//! model while HTTP and Kafka load goes on; then the servers are restarted
//! without the hook (the fix) and every invariant must hold (see
//! `faults/mod.rs`). Needs `DATABASE_URL` and `KAFKA_BROKERS` (tansu
//! installed; a private broker is started).

mod faults;

use std::time::{Duration, Instant};

use dcb_postgres::testing::TestDatabase;
use faults::*;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_listener_then_fixed() {
    require_database();
    let tansu = Tansu::start();
    tansu.create_topics().await;
    let db = TestDatabase::create().await;
    let poison = Uuid::new_v4();
    let hook = poison.to_string();
    let mut servers = Servers::start(
        2,
        db.url(),
        Some(&tansu.brokers),
        &[("CART_FAIL_LISTENER_ON", hook.as_str())],
    )
    .await;
    let kafka = Kafka::new(&tansu.brokers).await;
    let load = Load::new(servers.bases.clone());
    let workers = load.run(3);
    let pool = pool(db.url()).await;

    // Some good reports, the poisoned one, more good ones.
    for _ in 0..3 {
        assert!(kafka.inventory().await);
    }
    let poison_payload = serde_json::json!({"product_uuid": poison, "inventory": 99}).to_string();
    assert!(
        kafka
            .send_raw("inventories", poison_payload.into_bytes())
            .await
    );
    kafka.inventories.lock().unwrap().push((poison, 99));
    for _ in 0..3 {
        assert!(kafka.inventory().await);
    }

    // The hook fires: the event is in the log, the read model is stuck
    // before it.
    let deadline = Instant::now() + CONVERGE;
    loop {
        let fired = !servers.log_lines("CART_FAIL_LISTENER_ON").is_empty();
        let logged: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM dcb.events WHERE event_type = 'InventoryChanged'",
        )
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
        if fired && logged >= 7 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hook did not fire (fired {fired}, {logged} InventoryChanged logged)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stuck: Option<i64> =
        sqlx::query_scalar("SELECT inventory FROM cart.inventories WHERE product_id = $1")
            .bind(poison)
            .fetch_optional(&pool)
            .await
            .unwrap();
    assert_eq!(stuck, None, "the failing event is not in the read model");

    // The fix: restart every server without the hook, one at a time.
    servers.set_env("CART_FAIL_LISTENER_ON", None);
    for i in 0..2 {
        servers.terminate(i);
        servers.restart(i).await;
    }
    let last_fault = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop(workers).await;

    let expect = Expect {
        load: &load,
        kafka: Some(&kafka),
        dead: 0,
    };
    let converged = converge(&pool, &expect, last_fault, CONVERGE).await;
    check(&pool, &expect, &converged.fold).await;
    assert_eq!(converged.fold.inventories.get(&poison), Some(&99));
    servers.stop_all();
    Summary {
        test: "listener (handler fails on one event, then fixed)",
        load: &load,
        extra_sent: 0,
        faults: 1,
        fold: &converged.fold,
        kafka: Some(&kafka),
        converged_after: converged.after,
    }
    .print();
    pool.close().await;
    drop(servers);
    db.cleanup().await;
}
