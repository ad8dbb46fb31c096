//! With the database gone, the server answers 503, not 500.

use std::sync::Arc;
use std::time::Duration;

use cart::http::{router, AppState};
use dcb_core::{DecisionMaker, EventStore};
use dcb_postgres::PgEventStore;
use sqlx::postgres::PgPoolOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_a_503() {
    // Nothing listens on port 1.
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy("postgres://postgres@127.0.0.1:1/postgres")
        .expect("a lazy pool");
    let store = PgEventStore::builder()
        .migrate_on_start(false)
        .build(pool.clone())
        .await
        .expect("a store on a lazy pool");
    let shared: Arc<dyn EventStore> = Arc::new(store);
    let state = AppState {
        maker: DecisionMaker::new(shared.clone()),
        store: shared,
        pool,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let client = reqwest::Client::new();
    let cart = uuid::Uuid::new_v4();
    let checks = [
        client.post(format!("http://{addr}/additem/{cart}")).body(
            serde_json::json!({"item_id": cart, "product_id": cart, "description": "d",
                               "image": "i", "price": "1"})
            .to_string(),
        ),
        client.get(format!("http://{addr}/{cart}/cartitems")),
        client.get(format!("http://{addr}/{cart}/cartitemsfromdb")),
        client.get(format!("http://{addr}/inventories/{cart}")),
        client.get(format!("http://{addr}/healthcheck")),
    ];
    for request in checks {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "DatabaseUnavailable");
    }
}
