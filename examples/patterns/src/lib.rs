//! The Dynamic Consistency Boundary patterns on dcb, one module each, every
//! one proven under concurrency against PostgreSQL (`tests/postgres`).
//!
//! | module | pattern | boundary |
//! |---|---|---|
//! | [`course_subscriptions`] | a course with limited seats, students with a course limit | `course:<id>` + `student:<id>` (tuple state) |
//! | [`unique_username`] | a username claimed once, released on account closure | `username:<name>` + `account:<id>` |
//! | [`invoice_numbers`] | gapless invoice numbers (snapshotted) | every `InvoiceCreated` |
//! | [`opt_in_token`] | a one-time opt-in token | `token:<token>` |
//! | [`idempotent_request`] | a retried request has one effect | the request's idempotency key |
//! | [`seen_price`] | a price the cart must have seen (validation query) | `cart:<id>` + `product:<id>` price events |
//! | [`account_stream`] | an old aggregate stream beside DCB decisions (upcasts) | `account:<id>` |
//!
//! See the crate README for each pattern's rule, boundary, why an aggregate
//! design struggles with it, and the test that proves it.

#![warn(missing_docs)]

pub mod account_stream;
pub mod course_subscriptions;
pub mod idempotent_request;
pub mod invoice_numbers;
pub mod opt_in_token;
pub mod seen_price;
pub mod unique_username;

/// Runs the README's example as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
