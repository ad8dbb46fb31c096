//! The metrics this crate records, through the [`metrics`] facade: without
//! a recorder installed (`dcb-console`'s `metrics` module installs a
//! Prometheus one) each is a check of one atomic and nothing else.
//!
//! Recorded once per decision, never per event.

/// Counter: appends of a decision that failed their condition (each one is
/// followed by a new read and another try, or by [`DecisionError::Conflict`](crate::DecisionError::Conflict)
/// when the attempts ran out).
pub const DECISION_CONFLICTS_TOTAL: &str = "dcb_decision_conflicts_total";

/// Counter: decisions made, by `outcome`: `appended`, `unchanged` (the
/// decision returned no events), `replayed` (its idempotency key was seen
/// before), `rejected` (a rule said no), `conflict` (the attempts ran out)
/// or `failed` (the store, a codec).
pub const DECISIONS_TOTAL: &str = "dcb_decisions_total";

pub(crate) fn decision_conflict() {
    ::metrics::counter!(DECISION_CONFLICTS_TOTAL).increment(1);
}

pub(crate) fn decision(outcome: &'static str) {
    ::metrics::counter!(DECISIONS_TOTAL, "outcome" => outcome).increment(1);
}
