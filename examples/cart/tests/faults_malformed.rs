//! Fault 5: a burst of malformed HTTP requests and malformed Kafka messages
//! mixed into normal traffic against two cart servers (real processes).
//! Every malformed request must get a 4xx, every malformed message a dead
//! record, and every invariant must hold (see `faults/mod.rs`).
//! Needs `DATABASE_URL` and `KAFKA_BROKERS` (tansu installed; a private
//! broker is started). `DCB_SOAK=1` sends five times as many.

mod faults;

use std::time::{Duration, Instant};

use dcb_postgres::testing::TestDatabase;
use faults::*;
use uuid::Uuid;

/// (path, content type, body) of malformed requests.
fn malformed_requests() -> Vec<(String, &'static str, Vec<u8>)> {
    let cart = Uuid::new_v4();
    let item = Uuid::new_v4();
    let product = Uuid::new_v4();
    let json = "application/json";
    let good_add = format!(
        r#"{{"item_id":"{item}","product_id":"{product}","description":"d","image":"i","price":"1.00"}}"#
    );
    vec![
        (
            "/additem/not-a-uuid".to_owned(),
            json,
            good_add.clone().into_bytes(),
        ),
        (format!("/additem/{cart}"), json, b"{".to_vec()),
        (format!("/additem/{cart}"), json, b"{}".to_vec()),
        (format!("/additem/{cart}"), json, b"[1,2,3]".to_vec()),
        (
            format!("/additem/{cart}"),
            json,
            good_add.replace(&item.to_string(), "x").into_bytes(),
        ),
        (
            format!("/additem/{cart}"),
            json,
            good_add.replace("\"1.00\"", "\"abc\"").into_bytes(),
        ),
        (format!("/additem/{cart}"), json, vec![b'a'; 20 * 1024]),
        (format!("/additem/{cart}"), json, b"\xff\xfe\xfd".to_vec()),
        // Well-formed, but outside the cart's limits: a NUL no read model
        // could store, a price whose sums would overflow.
        (
            format!("/additem/{cart}"),
            json,
            good_add.replace("\"d\"", "\"a\\u0000b\"").into_bytes(),
        ),
        (
            format!("/additem/{cart}"),
            json,
            good_add.replace("\"i\"", "\"\\u0000\"").into_bytes(),
        ),
        (
            format!("/additem/{cart}"),
            json,
            good_add
                .replace("\"1.00\"", "\"50000000000000000000000000000\"")
                .into_bytes(),
        ),
        (
            format!("/changeprice/{product}"),
            json,
            b"{\"old_price\":\"1\",\"new_price\":\"0.00000001\"}".to_vec(),
        ),
        (format!("/removeitem/{cart}"), json, b"[]".to_vec()),
        (
            format!("/removeitem/{cart}"),
            json,
            b"{\"item_id\":7}".to_vec(),
        ),
        ("/clearcart/%%%".to_owned(), json, Vec::new()),
        ("/submitcart/1234".to_owned(), json, Vec::new()),
        (
            format!("/changeprice/{product}"),
            json,
            b"{\"old_price\":\"x\"}".to_vec(),
        ),
        ("/changeprice/nope".to_owned(), json, b"{}".to_vec()),
        ("/nosuchroute".to_owned(), json, b"{}".to_vec()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_burst_in_normal_traffic() {
    require_database();
    let tansu = Tansu::start();
    tansu.create_topics().await;
    let db = TestDatabase::create().await;
    let mut servers = Servers::start(2, db.url(), Some(&tansu.brokers), &[]).await;
    let kafka = Kafka::new(&tansu.brokers).await;
    let load = Load::new(servers.bases.clone());
    let workers = load.run(3);

    let mut malformed_sent = 0;
    let mut bursts = 0;
    for _ in 0..3 * soak(5) {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        bursts += 1;
        for (path, content_type, body) in malformed_requests() {
            let status = load.post_raw(&path, content_type, body.clone()).await;
            malformed_sent += 1;
            assert!(
                (400..500).contains(&status),
                "malformed POST {path} ({} bytes) answered {status}",
                body.len()
            );
        }
        for _ in 0..5 {
            assert!(kafka.malformed().await, "the broker takes the message");
            assert!(kafka.inventory().await, "the broker takes inventories");
        }
        let product = load.products[bursts % load.products.len()];
        assert!(kafka.price(product).await, "the broker takes price-changes");
    }
    let last_fault = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.stop(workers).await;

    let pool = pool(db.url()).await;
    let expect = Expect {
        load: &load,
        kafka: Some(&kafka),
        dead: kafka.malformed.load(std::sync::atomic::Ordering::Relaxed) as i64,
    };
    let converged = converge(&pool, &expect, last_fault, CONVERGE).await;
    check(&pool, &expect, &converged.fold).await;
    servers.stop_all();
    Summary {
        test: "malformed (HTTP + Kafka bursts)",
        load: &load,
        extra_sent: malformed_sent,
        faults: bursts as u32,
        fold: &converged.fold,
        kafka: Some(&kafka),
        converged_after: converged.after,
    }
    .print();
    pool.close().await;
    drop(servers);
    db.cleanup().await;
}
