//! Each pattern's invariant, proven by real concurrent callers against
//! PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start` runs a server).
//!
//! Every pattern has a race with the append conditions kept, which must
//! hold its invariant, and the same race with the conditions dropped, which
//! must break it: the proof that the test can fail. Run with
//! `-- --nocapture` to see each race's closing line.

mod race;

mod account_stream;
mod course_subscriptions;
mod idempotent_request;
mod invoice_numbers;
mod opt_in_token;
mod seen_price;
mod unique_username;
