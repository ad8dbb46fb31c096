//! Several application instances on one test database: `PgEventStore`
//! values with pools (and writers) of their own, as racers and concurrency
//! tests spread their tasks over.

use dcb_postgres::testing::TestDatabase;
use dcb_postgres::PgEventStore;
use sqlx::postgres::PgPoolOptions;

/// `count` stores on `db`, each with a pool of at most `connections`.
pub async fn instances(db: &TestDatabase, count: usize, connections: u32) -> Vec<PgEventStore> {
    let mut stores = Vec::with_capacity(count);
    for _ in 0..count {
        stores.push(
            PgEventStore::builder()
                .pool_options(PgPoolOptions::new().max_connections(connections))
                .connect(db.url())
                .await
                .expect("connect a store"),
        );
    }
    stores
}
