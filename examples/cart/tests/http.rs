//! HTTP integration tests: the real server on a free port, real PostgreSQL
//! (`DATABASE_URL`; `scripts/postgres.sh start` runs one).

mod common;

use std::sync::Arc;

use cart::slices::archive_item::ARCHIVE_AUTOMATION_ID;
use cart::slices::cart_items_db::CartItemsDbListener;
use cart::slices::carts_with_products::CartsWithProductsListener;
use common::*;
use dcb_core::EventStore;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_flow() {
    let t = start().await;
    let (cart, p1, p2) = (new_id(), new_id(), new_id());
    let (i1, i2, i3) = (new_id(), new_id(), new_id());

    let (status, body) = t.add(cart, i1, p1, "9.99").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], json!(["CartCreated", "CartItemAdded"]));
    assert_eq!(t.add(cart, i2, p2, "0.01").await.0, 200);
    let (status, _) = t
        .post(
            &format!("/additem/{cart}"),
            Some(json!({"cart_id": cart, "item_id": i3, "product_id": p1,
                        "description": "d", "image": "i", "price": 5})),
        )
        .await;
    assert_eq!(status, 200);

    let (status, live) = t.get(&format!("/{cart}/cartitems")).await;
    assert_eq!(status, 200);
    assert_eq!(live["total_price"], "15.00");
    assert_eq!(live["items"].as_array().unwrap().len(), 3);
    assert_eq!(live["items"][0]["price"], "9.99");
    assert!(live["items"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("fp-"));

    let (status, _) = t
        .post(&format!("/removeitem/{cart}"), Some(json!({"item_id": i2})))
        .await;
    assert_eq!(status, 200);

    t.settle(CartItemsDbListener::ID).await;
    t.settle(CartsWithProductsListener::ID).await;
    let (status, live) = t.get(&format!("/{cart}/cartitems")).await;
    assert_eq!(status, 200);
    let (status, from_db) = t.get(&format!("/{cart}/cartitemsfromdb")).await;
    assert_eq!(status, 200);
    assert_eq!(live, from_db);
    assert_eq!(live["total_price"], "14.99");
    let (_, rows) = t.get(&format!("/cartswithproducts/{p1}")).await;
    assert_eq!(rows.as_array().unwrap().len(), 2);

    let (status, submitted) = t.post(&format!("/submitcart/{cart}"), None).await;
    assert_eq!(status, 200, "{submitted}");
    assert_eq!(submitted["events"], json!(["CartSubmitted"]));
    t.settle(CartsWithProductsListener::ID).await;
    let (_, rows) = t.get(&format!("/cartswithproducts/{p1}")).await;
    assert_eq!(rows, json!([]));

    let (status, health) = t.get("/healthcheck").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_status_of_the_spec() {
    let t = start().await;
    let (cart, product) = (new_id(), new_id());
    let unknown = new_id();
    let code = |v: &Value| v["error"].as_str().unwrap_or_default().to_owned();

    // 404: no cart.
    let (s, b) = t
        .post(
            &format!("/removeitem/{unknown}"),
            Some(json!({"item_id": new_id()})),
        )
        .await;
    assert_eq!((s, code(&b).as_str()), (404, "CartDoesNotExist"));
    let (s, b) = t.post(&format!("/clearcart/{unknown}"), None).await;
    assert_eq!((s, code(&b).as_str()), (404, "CartDoesNotExist"));
    let (s, b) = t.post(&format!("/submitcart/{unknown}"), None).await;
    assert_eq!((s, code(&b).as_str()), (404, "CartDoesNotExist"));
    let (s, b) = t.get(&format!("/{unknown}/cartitems")).await;
    assert_eq!((s, code(&b).as_str()), (404, "CartDoesNotExist"));
    let (s, b) = t.get(&format!("/{unknown}/cartitemsfromdb")).await;
    assert_eq!((s, code(&b).as_str()), (404, "CartDoesNotExist"));
    let (s, _) = t.get(&format!("/inventories/{unknown}")).await;
    assert_eq!(s, 404);

    // 409: the rules.
    let items: Vec<_> = (0..3).map(|_| new_id()).collect();
    for item in &items {
        assert_eq!(t.add(cart, *item, product, "1").await.0, 200);
    }
    let (s, b) = t.add(cart, new_id(), product, "1").await;
    assert_eq!((s, code(&b).as_str()), (409, "CartFull"));
    let (s, b) = t
        .post(
            &format!("/removeitem/{cart}"),
            Some(json!({"item_id": items[2]})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = t.add(cart, items[0], product, "1").await;
    assert_eq!((s, code(&b).as_str()), (409, "ItemAlreadyInCart"));
    let (s, b) = t
        .post(
            &format!("/removeitem/{cart}"),
            Some(json!({"item_id": items[2]})),
        )
        .await;
    assert_eq!((s, code(&b).as_str()), (409, "ItemNotInCart"));

    let empty = new_id();
    assert_eq!(t.add(empty, new_id(), product, "1").await.0, 200);
    assert_eq!(t.post(&format!("/clearcart/{empty}"), None).await.0, 200);
    let (s, b) = t.post(&format!("/submitcart/{empty}"), None).await;
    assert_eq!((s, code(&b).as_str()), (409, "CannotSubmitEmptyCart"));

    let (s, _) = t
        .post(
            &format!("/submitcart/{cart}"),
            Some(json!({"cart_id": cart})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, b) = t.post(&format!("/submitcart/{cart}"), None).await;
    assert_eq!((s, code(&b).as_str()), (409, "CannotSubmitCartTwice"));
    let (s, b) = t.add(cart, new_id(), product, "1").await;
    assert_eq!((s, code(&b).as_str()), (409, "CartCannotBeAltered"));
    let (s, b) = t
        .post(
            &format!("/removeitem/{cart}"),
            Some(json!({"item_id": items[0]})),
        )
        .await;
    assert_eq!((s, code(&b).as_str()), (409, "CartCannotBeAltered"));
    let (s, b) = t.post(&format!("/clearcart/{cart}"), None).await;
    assert_eq!((s, code(&b).as_str()), (409, "CartCannotBeAltered"));
    assert!(b["message"].as_str().is_some());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_never_a_500() {
    let t = start().await;
    let cart = new_id();
    let good = json!({"item_id": new_id(), "product_id": new_id(),
                      "description": "d", "image": "i", "price": "1.00"});
    let add = format!("/additem/{cart}");
    let cases: Vec<(String, String, u16, &str)> = vec![
        (add.clone(), "{not json".into(), 400, "MalformedBody"),
        (add.clone(), "".into(), 400, "MalformedBody"),
        (add.clone(), "[]".into(), 400, "MalformedBody"),
        (
            add.clone(),
            r#"{"item_id":"x"}"#.into(),
            400,
            "MalformedBody",
        ),
        (
            add.clone(),
            json!({"item_id": "not-a-uuid", "product_id": new_id(), "description": "d",
                   "image": "i", "price": "1"})
            .to_string(),
            400,
            "MalformedBody",
        ),
        (
            add.clone(),
            json!({"item_id": new_id(), "product_id": new_id(), "description": "d",
                   "image": "i", "price": "one euro"})
            .to_string(),
            400,
            "MalformedBody",
        ),
        (
            add.clone(),
            json!({"item_id": new_id(), "product_id": new_id(), "description": "d",
                   "image": "i", "price": "-1"})
            .to_string(),
            400,
            "InvalidPrice",
        ),
        (
            add.clone(),
            {
                let mut b = good.clone();
                b["cart_id"] = json!(new_id());
                b.to_string()
            },
            400,
            "IdMismatch",
        ),
        (
            "/additem/not-a-uuid".into(),
            good.to_string(),
            400,
            "InvalidId",
        ),
        ("/additem/%FF%FE".into(), good.to_string(), 400, "InvalidId"),
        ("/removeitem/123".into(), "{}".into(), 400, "InvalidId"),
        (
            format!("/removeitem/{cart}"),
            "{}".into(),
            400,
            "MalformedBody",
        ),
        (
            format!("/removeitem/{cart}"),
            json!({"cart_id": new_id(), "item_id": new_id()}).to_string(),
            400,
            "IdMismatch",
        ),
        (
            format!("/submitcart/{cart}"),
            json!({"cart_id": new_id()}).to_string(),
            400,
            "IdMismatch",
        ),
        (
            format!("/submitcart/{cart}"),
            "{oops".into(),
            400,
            "MalformedBody",
        ),
        (
            format!("/changeprice/{cart}"),
            json!({"product_id": new_id(), "old_price": 1, "new_price": 2}).to_string(),
            400,
            "IdMismatch",
        ),
        (
            format!("/changeprice/{cart}"),
            json!({"old_price": "x", "new_price": 2}).to_string(),
            400,
            "MalformedBody",
        ),
        (add.clone(), "x".repeat(100_000), 413, "PayloadTooLarge"),
    ];
    for (path, body, status, code) in cases {
        let (s, b) = t.post_raw(&path, body.clone()).await;
        let shown: String = body.chars().take(80).collect();
        assert_eq!(s, status, "POST {path} {shown} answered {b}");
        assert_eq!(b["error"], code, "POST {path} {shown} answered {b}");
        assert!(b["message"].is_string(), "{b}");
    }
    for path in [
        "/not-a-uuid/cartitems",
        "/x/cartitemsfromdb",
        "/cartswithproducts/1",
        "/inventories/zz",
    ] {
        let (s, b) = t.get(path).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (400, Some("InvalidId")),
            "GET {path}"
        );
    }
    let (s, b) = t.get("/no/such/route").await;
    assert_eq!((s, b["error"].as_str()), (404, Some("NotFound")));
    let (s, b) = t.get(&format!("/additem/{cart}")).await;
    assert_eq!((s, b["error"].as_str()), (405, Some("MethodNotAllowed")));
    // Still healthy, nothing was appended.
    assert_eq!(t.app.store().head().await.unwrap(), None);
    assert_eq!(t.get("/healthcheck").await.0, 200);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_parallel_adds_on_one_new_cart_yield_three_items() {
    let t = Arc::new(start().await);
    let (cart, product) = (new_id(), new_id());
    let racers: Vec<_> = (0..20)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move { t.add(cart, new_id(), product, "1.00").await })
        })
        .collect();
    let mut statuses = Vec::new();
    for racer in racers {
        let (status, body) = racer.await.unwrap();
        if status == 409 {
            assert_eq!(body["error"], "CartFull", "{body}");
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        17,
        "{statuses:?}"
    );
    let (_, live) = t.get(&format!("/{cart}/cartitems")).await;
    assert_eq!(live["items"].as_array().unwrap().len(), 3);
    let t = Arc::into_inner(t).expect("all racers done");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_change_archives_only_items_added_before_it() {
    let t = start().await;
    let (cart, cart2, other, product, kept) = (new_id(), new_id(), new_id(), new_id(), new_id());
    let (a, b, c, d) = (new_id(), new_id(), new_id(), new_id());
    let setup = [
        (cart, a, product, "1.00"),
        (cart, b, product, "1.00"), // two items of one product
        (cart2, c, kept, "3.00"),   // another product
        (cart2, d, product, "1.00"),
        (other, new_id(), product, "1.00"),
    ];
    for (cart, item, product, price) in setup {
        let (status, answer) = t.add(cart, item, product, price).await;
        assert_eq!(status, 200, "setting up: {answer}");
    }
    let (status, answer) = t.post(&format!("/submitcart/{other}"), None).await;
    assert_eq!(status, 200, "setting up: {answer}");

    let (s, changed) = t
        .post(
            &format!("/changeprice/{product}"),
            Some(json!({"old_price": "1.00", "new_price": 2})),
        )
        .await;
    assert_eq!(s, 200, "{changed}");
    let later = new_id();
    assert_eq!(t.add(cart, later, product, "2.00").await.0, 200); // after the change: kept
    t.settle(ARCHIVE_AUTOMATION_ID).await;

    let item_ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["item_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, live) = t.get(&format!("/{cart}/cartitems")).await;
    assert_eq!(item_ids(&live), vec![later.to_string()], "{live}");
    assert_eq!(live["total_price"], "2.00");
    let (_, live2) = t.get(&format!("/{cart2}/cartitems")).await;
    assert_eq!(item_ids(&live2), vec![c.to_string()], "{live2}");
    let (_, submitted) = t.get(&format!("/{other}/cartitems")).await;
    assert_eq!(submitted["items"].as_array().unwrap().len(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_cart_items_rebuilds_the_same_content() {
    let t = start().await;
    let mut carts = Vec::new();
    for n in 0..5 {
        let (cart, product) = (new_id(), new_id());
        let first = new_id();
        assert_eq!(t.add(cart, first, product, "1.10").await.0, 200);
        assert_eq!(t.add(cart, new_id(), product, "2.20").await.0, 200);
        if n % 2 == 0 {
            let (status, answer) = t
                .post(
                    &format!("/removeitem/{cart}"),
                    Some(json!({"item_id": first})),
                )
                .await;
            assert_eq!(status, 200, "setting up: {answer}");
        }
        if n == 3 {
            let (status, answer) = t.post(&format!("/clearcart/{cart}"), None).await;
            assert_eq!(status, 200, "setting up: {answer}");
        }
        carts.push(cart);
    }
    t.settle(CartItemsDbListener::ID).await;
    let mut before = Vec::new();
    for cart in &carts {
        let (status, view) = t.get(&format!("/{cart}/cartitemsfromdb")).await;
        assert_eq!(status, 200, "{view}");
        before.push((status, view));
    }

    // Damage the tables behind the listener's back: only a rebuild from the
    // log puts them right again.
    let pool = t.app.store().pool();
    let stray = new_id();
    for statement in [
        format!("DELETE FROM cart.cart_items WHERE cart_id = '{}'", carts[0]),
        format!("DELETE FROM cart.carts WHERE cart_id = '{}'", carts[1]),
        format!(
            "UPDATE cart.cart_items SET description = 'damaged', price = '999' \
             WHERE cart_id = '{}'",
            carts[2]
        ),
        format!("INSERT INTO cart.carts (cart_id) VALUES ('{stray}')"),
    ] {
        sqlx::query(&statement)
            .execute(pool)
            .await
            .expect("damaging the tables");
    }
    let mut damaged = Vec::new();
    for cart in &carts {
        damaged.push(t.get(&format!("/{cart}/cartitemsfromdb")).await);
    }
    assert_ne!(damaged, before, "the damage shows");
    assert_eq!(t.get(&format!("/{stray}/cartitemsfromdb")).await.0, 200);

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cart"))
        .arg("reset-cart-items")
        .env("DATABASE_URL", t.db.url())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("cart reset-cart-items runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("100.0%"), "progress is shown: {stdout}");
    t.settle(CartItemsDbListener::ID).await;
    for (cart, before) in carts.iter().zip(before) {
        assert_eq!(t.get(&format!("/{cart}/cartitemsfromdb")).await, before);
    }
    let (status, answer) = t.get(&format!("/{stray}/cartitemsfromdb")).await;
    assert_eq!(status, 404, "the stray row is gone: {answer}");
    t.stop().await;
}
