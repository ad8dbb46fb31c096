//! The code the dcb user guide (`docs/`) walks through, as a crate that
//! builds and whose tests run it against PostgreSQL and a Kafka broker.
//!
//! The domain: concerts with numbered seats.
//!
//! | module | guide chapter |
//! |---|---|
//! | [`domain`] | A first decision |
//! | [`projection`] | A projection |
//! | [`tickets`] | An automation, A work-queue processor |
//! | [`relay`] | The relay to Kafka |
//! | [`translator`] | A translator from Kafka |
//!
//! The runnable programs are `examples/{projection,relay,translator}.rs`:
//! `cargo run -p guide-snippets --example projection` (with `DATABASE_URL`,
//! and `KAFKA_BROKERS` for the other two).

pub mod app;
pub mod domain;
pub mod projection;
pub mod relay;
pub mod tickets;
pub mod translator;
