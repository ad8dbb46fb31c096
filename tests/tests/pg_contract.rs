//! The shared store contract suite against `PgEventStore`, one fresh
//! database per case (needs `DATABASE_URL` or `scripts/postgres.sh start`).

use dcb_postgres::testing::TestDatabase;

dcb_tests::store_contract_tests!(async { TestDatabase::create().await.into_store().await });
