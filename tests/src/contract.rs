//! The store contract: what every [`EventStore`] backend must do, as public
//! async functions, one per case.
//!
//! Each case takes a **fresh, empty** store and panics with a message naming
//! the broken rule. [`store_contract_tests!`](crate::store_contract_tests)
//! turns the list of cases into one `#[tokio::test]` per case for a backend.
//!
//! Every read in the suite also checks two invariants: no event lies above
//! the head the read reports, and events come strictly in the requested
//! direction.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dcb_core::{
    AppendCondition, AppendResult, CodecError, Decision, DecisionError, DecisionMaker, Direction,
    Event, EventMetadata, EventRecord, EventSchema, EventStore, EventType, MakeOptions, Position,
    Query, QueryItem, ReadOptions, RetryPolicy, SequencedEvent, StateMutate, StateQuery,
    StoreError, Tag,
};
use tokio::sync::Barrier;
use uuid::Uuid;

/// Expands to one `#[tokio::test]` per contract case, each with a fresh store.
///
/// The argument is an expression evaluating to a future (usually an `async`
/// block) that yields a fresh, empty store (`impl EventStore + 'static`); it
/// is written out in, and awaited once by, every generated test. The calling
/// crate needs `tokio` (with the `macros` and `rt-multi-thread` features).
///
/// ```ignore
/// use dcb_core::InMemoryEventStore;
/// dcb_tests::store_contract_tests!(async { InMemoryEventStore::new() });
/// ```
#[macro_export]
macro_rules! store_contract_tests {
    ($factory:expr $(,)?) => {
        $crate::__store_contract_cases! {
            $factory;
            read_filters_by_type,
            read_tags_are_anded_within_an_item,
            read_items_are_ored,
            read_query_all_returns_everything,
            read_query_none_returns_nothing,
            read_empty_store,
            read_start_is_inclusive,
            read_after_skips_the_position,
            read_limit,
            read_backwards,
            read_backwards_with_start,
            read_reports_the_head,
            append_without_condition,
            condition_without_after_is_a_uniqueness_check,
            condition_with_after,
            condition_type_only_item,
            condition_tag_only_item,
            condition_type_and_tag_item,
            condition_items_are_ored,
            condition_ignores_unrelated_events,
            append_batch_gets_consecutive_positions,
            failed_condition_writes_nothing,
            duplicate_event_id_in_batch_writes_nothing,
            duplicate_event_id_already_stored_writes_nothing,
            empty_append_is_invalid,
            unstorable_values_are_refused,
            a_bad_append_fails_only_its_caller,
            metadata_round_trip,
            payload_bytes_round_trip,
            recorded_at_is_set,
            concurrent_appends_on_one_boundary_one_wins,
            concurrent_appends_on_disjoint_boundaries_all_succeed,
            concurrent_appends_keep_positions_gapless,
            decision_maker_idempotent_retry,
            decision_maker_concurrent_idempotent_retry,
            decision_maker_conflict_retry_converges,
            cached_state_never_accepts_wrongly,
            cached_state_never_rejects_wrongly,
            cached_states_race_another_instance_within_the_limit,
            cache_stays_within_its_bound,
        }
    };
}

/// Implementation detail of [`store_contract_tests!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __store_contract_cases {
    ($factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let store = $factory.await;
                $crate::contract::$case(store).await;
            }
        )+
    };
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn tag(key: &str, value: &str) -> Tag {
    Tag::new(key, value)
}

/// A record of `event_type` with `tags` (`key:value` strings).
fn record(event_type: &str, tags: &[&str]) -> EventRecord {
    EventRecord {
        event_type: EventType::new(event_type),
        tags: tags
            .iter()
            .map(|t| Tag::parse(*t).expect("a valid tag"))
            .collect(),
        payload: format!("{{\"type\":{event_type:?}}}").into_bytes(),
        metadata: EventMetadata::new(),
    }
}

fn p(n: u64) -> Position {
    Position(n)
}

fn positions(events: &[SequencedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position.get()).collect()
}

/// Reads and collects, checking the invariants every read keeps.
async fn read<S: EventStore + ?Sized>(
    store: &S,
    query: &Query,
    options: ReadOptions,
) -> (Option<Position>, Vec<SequencedEvent>) {
    let (head, events) = store
        .read(query, options)
        .await
        .unwrap_or_else(|e| panic!("read {query:?} {options:?} failed: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("read {query:?} {options:?} failed while streaming: {e}"));
    for event in &events {
        assert!(
            head.is_some_and(|h| event.position <= h),
            "read {query:?} {options:?} returned position {} above the head {head:?} it reported",
            event.position
        );
        assert!(
            query.matches(event.event_type().as_str(), event.tags()),
            "read {query:?} returned an event it does not match: {event:?}"
        );
        assert!(
            options.admits(event.position),
            "read {options:?} returned {}, outside its start",
            event.position
        );
    }
    let ordered = events.windows(2).all(|w| match options.direction {
        Direction::Forwards => w[0].position < w[1].position,
        Direction::Backwards => w[0].position > w[1].position,
    });
    assert!(
        ordered,
        "read {query:?} {options:?} returned positions out of order: {:?}",
        positions(&events)
    );
    if let Some(limit) = options.limit {
        assert!(
            events.len() <= limit,
            "read {options:?} returned {} events",
            events.len()
        );
    }
    (head, events)
}

/// The positions a read returns.
async fn read_positions<S: EventStore + ?Sized>(
    store: &S,
    query: &Query,
    options: ReadOptions,
) -> Vec<u64> {
    positions(&read(store, query, options).await.1)
}

async fn head<S: EventStore + ?Sized>(store: &S) -> Option<Position> {
    store
        .head()
        .await
        .unwrap_or_else(|e| panic!("head failed: {e}"))
}

async fn append<S: EventStore + ?Sized>(
    store: &S,
    events: Vec<EventRecord>,
    condition: Option<AppendCondition>,
) -> AppendResult {
    let what = format!("{} event(s) with condition {condition:?}", events.len());
    store
        .append(events, condition)
        .await
        .unwrap_or_else(|e| panic!("appending {what} failed: {e}"))
}

async fn assert_empty<S: EventStore + ?Sized>(store: &S) {
    assert_eq!(
        head(store).await,
        None,
        "the contract suite needs a fresh, empty store for every case"
    );
}

/// Asserts `result` is `ConditionFailed` with the condition's `after`.
#[track_caller]
fn assert_condition_failed(
    result: Result<AppendResult, StoreError>,
    after: Option<Position>,
    what: &str,
) {
    match result {
        Err(StoreError::ConditionFailed { after: reported }) => assert_eq!(
            reported, after,
            "{what}: ConditionFailed must report the condition's `after`"
        ),
        Err(e) => panic!("{what}: expected ConditionFailed, got error {e:?}"),
        Ok(r) => panic!("{what}: expected ConditionFailed, but the append succeeded at {r:?}"),
    }
}

/// Appends and checks whether the condition let it through.
async fn check_condition<S: EventStore + ?Sized>(
    store: &S,
    condition: AppendCondition,
    should_pass: bool,
    what: &str,
) {
    let before = head(store).await;
    let after = condition.after;
    let result = store
        .append(vec![record("Probe", &["probe:x"])], Some(condition))
        .await;
    if should_pass {
        let r = result.unwrap_or_else(|e| panic!("{what}: the condition should hold, but: {e:?}"));
        assert_eq!(
            Some(r.first),
            Some(before.map_or(Position::FIRST, Position::next)),
            "{what}"
        );
    } else {
        assert_condition_failed(result, after, what);
        assert_eq!(
            head(store).await,
            before,
            "{what}: a failed append must write nothing"
        );
    }
}

/// The standard log most read and condition cases run against:
///
/// | pos | type        | tags                         |
/// |-----|-------------|------------------------------|
/// | 1   | Opened      | account:a1                   |
/// | 2   | Opened      | account:a2                   |
/// | 3   | Deposited   | account:a1                   |
/// | 4   | Deposited   | account:a2, channel:atm      |
/// | 5   | Withdrawn   | account:a1, channel:atm      |
/// | 6   | Deposited   | account:a1, channel:web      |
/// | 7   | Renamed     | (none)                       |
/// | 8   | Transferred | account:a1, account:a2       |
async fn seed<S: EventStore + ?Sized>(store: &S) {
    assert_empty(store).await;
    // Several appends, one a batch, so the log is not one transaction.
    append(
        store,
        vec![
            record("Opened", &["account:a1"]),
            record("Opened", &["account:a2"]),
        ],
        None,
    )
    .await;
    append(store, vec![record("Deposited", &["account:a1"])], None).await;
    append(
        store,
        vec![
            record("Deposited", &["account:a2", "channel:atm"]),
            record("Withdrawn", &["account:a1", "channel:atm"]),
            record("Deposited", &["account:a1", "channel:web"]),
        ],
        None,
    )
    .await;
    append(store, vec![record("Renamed", &[])], None).await;
    let last = append(
        store,
        vec![record("Transferred", &["account:a1", "account:a2"])],
        None,
    )
    .await;
    assert_eq!(last.last, p(8), "seeding 8 events into an empty store");
}

fn item() -> QueryItem {
    QueryItem::new()
}

// ---------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------

/// A type filter selects exactly the events of those types.
pub async fn read_filters_by_type<S: EventStore + 'static>(store: S) {
    seed(&store).await;
    let all = ReadOptions::forwards();
    assert_eq!(
        read_positions(&store, &Query::types(["Deposited"]), all).await,
        [3, 4, 6],
        "type Deposited"
    );
    assert_eq!(
        read_positions(&store, &Query::types(["Deposited", "Withdrawn"]), all).await,
        [3, 4, 5, 6],
        "types Deposited or Withdrawn"
    );
    assert_eq!(
        read_positions(&store, &Query::types(["Renamed"]), all).await,
        [7],
        "a type without tags"
    );
    assert_eq!(
        read_positions(&store, &Query::types(["Nope"]), all).await,
        [] as [u64; 0],
        "an unknown type"
    );
    let (_, events) = read(&store, &Query::types(["Withdrawn"]), all).await;
    assert_eq!(events[0].event_type().as_str(), "Withdrawn");
}

/// All tags of an item must be present; an item's types and tags are AND-ed.
pub async fn read_tags_are_anded_within_an_item<S: EventStore + 'static>(store: S) {
    seed(&store).await;
    let all = ReadOptions::forwards();
    let q = |i: QueryItem| Query::from_items([i]);
    assert_eq!(
        read_positions(&store, &Query::tags([tag("account", "a1")]), all).await,
        [1, 3, 5, 6, 8],
        "tag account:a1"
    );
    assert_eq!(
        read_positions(
            &store,
            &Query::tags([tag("account", "a1"), tag("channel", "atm")]),
            all
        )
        .await,
        [5],
        "tags account:a1 AND channel:atm"
    );
    assert_eq!(
        read_positions(
            &store,
            &Query::tags([tag("account", "a1"), tag("account", "a2")]),
            all
        )
        .await,
        [8],
        "two tags with the same key"
    );
    assert_eq!(
        read_positions(
            &store,
            &q(item().types(["Deposited"]).tags([tag("account", "a1")])),
            all
        )
        .await,
        [3, 6],
        "type Deposited AND tag account:a1"
    );
    assert_eq!(
        read_positions(
            &store,
            &q(item()
                .types(["Deposited", "Withdrawn"])
                .tags([tag("channel", "atm")])),
            all
        )
        .await,
        [4, 5],
        "types (Deposited or Withdrawn) AND tag channel:atm"
    );
    assert_eq!(
        read_positions(&store, &Query::tags([tag("account", "a3")]), all).await,
        [] as [u64; 0],
        "a tag no event carries"
    );
    assert_eq!(
        read_positions(&store, &Query::tags([tag("account", "a")]), all).await,
        [] as [u64; 0],
        "tags match whole values, not prefixes"
    );
}

/// Items are OR-ed, and an event matched by several items comes once.
pub async fn read_items_are_ored<S: EventStore + 'static>(store: S) {
    seed(&store).await;
    let all = ReadOptions::forwards();
    let q = Query::from_items([
        item().types(["Opened"]).tags([tag("account", "a2")]),
        item().tags([tag("channel", "atm")]),
    ]);
    assert_eq!(
        read_positions(&store, &q, all).await,
        [2, 4, 5],
        "(Opened a2) OR channel:atm"
    );
    let overlapping = Query::from_items([
        item().types(["Deposited"]),
        item().tags([tag("account", "a1")]),
    ]);
    assert_eq!(
        read_positions(&store, &overlapping, all).await,
        [1, 3, 4, 5, 6, 8],
        "overlapping items return each event once"
    );
    let q = Query::from_items([item().types(["Renamed"]), item().types(["Nope"])]);
    assert_eq!(
        read_positions(&store, &q, all).await,
        [7],
        "an item that matches nothing adds nothing"
    );
    let backwards = read_positions(&store, &overlapping, ReadOptions::backwards().limit(3)).await;
    assert_eq!(backwards, [8, 6, 5], "OR-ed items backwards with a limit");
}

/// `Query::all()` returns every event, in order, with type and tags intact.
pub async fn read_query_all_returns_everything<S: EventStore + 'static>(store: S) {
    seed(&store).await;
    let (head, events) = read(&store, &Query::all(), ReadOptions::forwards()).await;
    assert_eq!(head, Some(p(8)));
    assert_eq!(positions(&events), [1, 2, 3, 4, 5, 6, 7, 8]);
    let types: Vec<&str> = events.iter().map(|e| e.event_type().as_str()).collect();
    assert_eq!(
        types,
        [
            "Opened",
            "Opened",
            "Deposited",
            "Deposited",
            "Withdrawn",
            "Deposited",
            "Renamed",
            "Transferred"
        ]
    );
    let mut tags = events[3].tags().to_vec();
    tags.sort();
    assert_eq!(
        tags,
        [tag("account", "a2"), tag("channel", "atm")],
        "tags of position 4"
    );
    assert!(events[6].tags().is_empty(), "an event without tags");
}

/// `Query::none()` reads nothing but still reports the head.
pub async fn read_query_none_returns_nothing<S: EventStore + 'static>(store: S) {
    seed(&store).await;
    for options in [
        ReadOptions::forwards(),
        ReadOptions::backwards(),
        ReadOptions::forwards().from(p(2)).limit(3),
    ] {
        let (head, events) = read(&store, &Query::none(), options).await;
        assert!(
            events.is_empty(),
            "Query::none() returned {:?} with {options:?}",
            positions(&events)
        );
        assert_eq!(head, Some(p(8)), "Query::none() must still report the head");
    }
}

/// An empty store: no events, no head, in every direction.
pub async fn read_empty_store<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    for options in [
        ReadOptions::forwards(),
        ReadOptions::backwards(),
        ReadOptions::forwards().from(p(1)),
        ReadOptions::backwards().from(p(5)).limit(1),
    ] {
        for query in [Query::all(), Query::types(["Opened"]), Query::none()] {
            let (head, events) = read(&store, &query, options).await;
            assert_eq!(
                head, None,
                "head of an empty store ({query:?}, {options:?})"
            );
            assert!(
                events.is_empty(),
                "events of an empty store ({query:?}, {options:?})"
            );
        }
    }
}

/// `from(p)` includes `p`; reading from beyond the head returns nothing.
pub async fn read_start_is_inclusive<S: EventStore + 'static>(store: S) {
    seed(&store).await;
    let all = Query::all();
    assert_eq!(
        read_positions(&store, &all, ReadOptions::forwards().from(p(4))).await,
        [4, 5, 6, 7, 8]
    );
    assert_eq!(
        read_positions(&store, &all, ReadOptions::forwards().from(p(1))).await,
        [1, 2, 3, 4, 5, 6, 7, 8]
    );
    assert_eq!(
        read_positions(&store, &all, ReadOptions::forwards().from(p(8))).await,
        [8]
    );
    let (head, events) = read(&store, &all, ReadOptions::forwards().from(p(9))).await;
    assert!(events.is_empty(), "from beyond the head");
    assert_eq!(head, Some(p(8)), "head when reading from beyond it");
    assert_eq!(
        read_positions(
            &store,
            &Query::types(["Deposited"]),
            ReadOptions::forwards().from(p(4))
        )
        .await,
        [4, 6],
        "a filtered read from 4"
    );
}

/// `after(p)` excludes `p`.
pub async fn read_after_skips_the_position<S: EventStore + 'static>(store: S) {
    seed(&store).await;
    let all = Query::all();
    assert_eq!(
        read_positions(&store, &all, ReadOptions::forwards().after(p(4))).await,
        [5, 6, 7, 8]
    );
    assert_eq!(
        read_positions(&store, &all, ReadOptions::forwards().after(p(8))).await,
        [] as [u64; 0]
    );
    assert_eq!(
        read_positions(
            &store,
            &Query::types(["Deposited"]),
            ReadOptions::forwards().after(p(3))
        )
        .await,
        [4, 6]
    );
    assert_eq!(
        read_positions(&store, &all, ReadOptions::forwards().after_opt(None)).await,
        [1, 2, 3, 4, 5, 6, 7, 8],
        "after nothing is from the start"
    );
}

/// `limit(n)` returns the first `n` matches in the direction of travel.
pub async fn read_limit<S: EventStore + 'static>(store: S) {
    seed(&store).await;
    let all = Query::all();
    let deposited = Query::types(["Deposited"]);
    assert_eq!(
        read_positions(&store, &all, ReadOptions::forwards().limit(3)).await,
        [1, 2, 3]
    );
    assert_eq!(
        read_positions(&store, &deposited, ReadOptions::forwards().limit(2)).await,
        [3, 4]
    );
    assert_eq!(
        read_positions(&store, &all, ReadOptions::forwards().from(p(4)).limit(2)).await,
        [4, 5]
    );
    assert_eq!(
        read_positions(
            &store,
            &deposited,
            ReadOptions::forwards().from(p(5)).limit(5)
        )
        .await,
        [6]
    );
    assert_eq!(
        read_positions(&store, &all, ReadOptions::forwards().limit(100))
            .await
            .len(),
        8
    );
    let (head, events) = read(&store, &all, ReadOptions::forwards().limit(0)).await;
    assert!(events.is_empty(), "limit 0 returns nothing");
    assert_eq!(
        head,
        Some(p(8)),
        "a limited read still reports the whole head"
    );
    let (head, _) = read(&store, &all, ReadOptions::forwards().limit(1)).await;
    assert_eq!(
        head,
        Some(p(8)),
        "the head is the log's, not the last event returned"
    );
}

/// Backwards reads return newest first.
pub async fn read_backwards<S: EventStore + 'static>(store: S) {
    seed(&store).await;
    assert_eq!(
        read_positions(&store, &Query::all(), ReadOptions::backwards()).await,
        [8, 7, 6, 5, 4, 3, 2, 1]
    );
    assert_eq!(
        read_positions(&store, &Query::all(), ReadOptions::backwards().limit(2)).await,
        [8, 7]
    );
    assert_eq!(
        read_positions(
            &store,
            &Query::types(["Deposited"]),
            ReadOptions::backwards()
        )
        .await,
        [6, 4, 3]
    );
    assert_eq!(
        read_positions(
            &store,
            &Query::tags([tag("account", "a2")]),
            ReadOptions::backwards().limit(1)
        )
        .await,
        [8],
        "the last event of a boundary"
    );
    let (head, _) = read(&store, &Query::all(), ReadOptions::backwards().limit(1)).await;
    assert_eq!(head, Some(p(8)));
}

/// Backwards from a start: `from(p)` includes `p`, `after(p)` starts below it.
pub async fn read_backwards_with_start<S: EventStore + 'static>(store: S) {
    seed(&store).await;
    let all = Query::all();
    assert_eq!(
        read_positions(&store, &all, ReadOptions::backwards().from(p(5))).await,
        [5, 4, 3, 2, 1]
    );
    assert_eq!(
        read_positions(&store, &all, ReadOptions::backwards().after(p(5))).await,
        [4, 3, 2, 1]
    );
    assert_eq!(
        read_positions(&store, &all, ReadOptions::backwards().from(p(1))).await,
        [1]
    );
    assert_eq!(
        read_positions(&store, &all, ReadOptions::backwards().after(p(1))).await,
        [] as [u64; 0]
    );
    assert_eq!(
        read_positions(
            &store,
            &Query::types(["Deposited"]),
            ReadOptions::backwards().from(p(5)).limit(1)
        )
        .await,
        [4]
    );
    assert_eq!(
        read_positions(&store, &all, ReadOptions::backwards().from(p(100))).await,
        [8, 7, 6, 5, 4, 3, 2, 1],
        "backwards from beyond the head starts at the head"
    );
}

/// The head follows appends, `head()` agrees with reads, and no read returns
/// an event above the head it reports.
pub async fn read_reports_the_head<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let r = append(&store, vec![record("A", &["k:1"])], None).await;
    assert_eq!((r.first, r.last), (p(1), p(1)));
    assert_eq!(head(&store).await, Some(p(1)));
    let r = append(&store, vec![record("B", &[]), record("C", &[])], None).await;
    assert_eq!(head(&store).await, Some(r.last));
    assert_eq!(r.last, p(3));
    for query in [
        Query::all(),
        Query::none(),
        Query::types(["A"]),
        Query::types(["Nope"]),
    ] {
        for options in [
            ReadOptions::forwards(),
            ReadOptions::backwards().limit(1),
            ReadOptions::forwards().from(p(2)),
        ] {
            let (h, _) = read(&store, &query, options).await;
            assert_eq!(h, Some(p(3)), "head reported by {query:?} {options:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Appends and conditions
// ---------------------------------------------------------------------------

/// Without a condition, appends always succeed, at the next positions.
pub async fn append_without_condition<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let r = append(&store, vec![record("A", &["k:1"])], None).await;
    assert_eq!((r.first, r.last), (p(1), p(1)), "the first position is 1");
    assert_eq!(r.len(), 1);
    let r = append(&store, vec![record("A", &["k:1"])], None).await;
    assert_eq!(
        (r.first, r.last),
        (p(2), p(2)),
        "the same event again, without condition"
    );
    assert_eq!(
        read_positions(&store, &Query::types(["A"]), ReadOptions::forwards()).await,
        [1, 2]
    );
}

/// With `after: None`, any matching event anywhere fails the append.
pub async fn condition_without_after_is_a_uniqueness_check<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    check_condition(
        &store,
        AppendCondition::never_matched(Query::all()),
        true,
        "Query::all() on an empty store",
    )
    .await;
    let opened = |a: &str| Query::from_items([item().types(["Opened"]).tags([tag("account", a)])]);
    let r = store
        .append(
            vec![record("Opened", &["account:u1"])],
            Some(AppendCondition::never_matched(opened("u1"))),
        )
        .await
        .expect("the first Opened for u1 is unique");
    let r2 = store
        .append(
            vec![record("Opened", &["account:u1"])],
            Some(AppendCondition::never_matched(opened("u1"))),
        )
        .await;
    assert_condition_failed(r2, None, "a second Opened for u1");
    assert_eq!(
        head(&store).await,
        Some(r.last),
        "the failed uniqueness append wrote nothing"
    );
    store
        .append(
            vec![record("Opened", &["account:u2"])],
            Some(AppendCondition::never_matched(opened("u2"))),
        )
        .await
        .expect("Opened for another account is unique");
    check_condition(
        &store,
        AppendCondition::never_matched(Query::all()),
        false,
        "Query::all() on a non-empty store",
    )
    .await;
    check_condition(
        &store,
        AppendCondition::never_matched(Query::none()),
        true,
        "Query::none() never fails",
    )
    .await;
}

/// With `after: Some(p)`, matches at or below `p` are fine, one above fails.
pub async fn condition_with_after<S: EventStore + 'static>(store: S) {
    seed(&store).await;
    let a1 = Query::tags([tag("account", "a1")]);
    let dep_a1 = Query::from_items([item().types(["Deposited"]).tags([tag("account", "a1")])]);
    check_condition(
        &store,
        AppendCondition::not_after(a1.clone(), Some(p(7))),
        false,
        "a1 after 7 (8 matches)",
    )
    .await;
    check_condition(
        &store,
        AppendCondition::not_after(dep_a1.clone(), Some(p(5))),
        false,
        "Deposited a1 after 5 (6 matches)",
    )
    .await;
    check_condition(
        &store,
        AppendCondition::not_after(dep_a1.clone(), Some(p(6))),
        true,
        "Deposited a1 after 6 (6 is not after 6)",
    )
    .await;
    check_condition(
        &store,
        AppendCondition::not_after(dep_a1, None),
        false,
        "Deposited a1 anywhere",
    )
    .await;
    // the probe appended above is at 9 and does not match a1
    check_condition(
        &store,
        AppendCondition::not_after(a1, Some(p(8))),
        true,
        "a1 after 8",
    )
    .await;
}

/// An item with types only.
pub async fn condition_type_only_item<S: EventStore + 'static>(store: S) {
    seed(&store).await;
    check_condition(
        &store,
        AppendCondition::not_after(Query::types(["Renamed"]), Some(p(6))),
        false,
        "Renamed after 6",
    )
    .await;
    check_condition(
        &store,
        AppendCondition::not_after(Query::types(["Renamed"]), Some(p(7))),
        true,
        "Renamed after 7",
    )
    .await;
    check_condition(
        &store,
        AppendCondition::never_matched(Query::types(["Nope"])),
        true,
        "an unknown type",
    )
    .await;
    check_condition(
        &store,
        AppendCondition::not_after(Query::types(["Nope", "Withdrawn"]), Some(p(4))),
        false,
        "Nope or Withdrawn after 4",
    )
    .await;
}

/// An item with tags only (any type).
pub async fn condition_tag_only_item<S: EventStore + 'static>(store: S) {
    seed(&store).await;
    let web = Query::tags([tag("channel", "web")]);
    check_condition(
        &store,
        AppendCondition::not_after(web.clone(), Some(p(5))),
        false,
        "channel:web after 5",
    )
    .await;
    check_condition(
        &store,
        AppendCondition::not_after(web, Some(p(6))),
        true,
        "channel:web after 6",
    )
    .await;
    let both = Query::tags([tag("account", "a2"), tag("channel", "atm")]);
    check_condition(
        &store,
        AppendCondition::not_after(both.clone(), Some(p(3))),
        false,
        "a2 AND atm after 3",
    )
    .await;
    check_condition(
        &store,
        AppendCondition::not_after(both, Some(p(4))),
        true,
        "a2 AND atm after 4",
    )
    .await;
    check_condition(
        &store,
        AppendCondition::never_matched(Query::tags([tag("account", "a1"), tag("channel", "none")])),
        true,
        "tags never carried together",
    )
    .await;
}

/// An item with types and tags: both must match.
pub async fn condition_type_and_tag_item<S: EventStore + 'static>(store: S) {
    seed(&store).await;
    let q = |t: &'static str, k: &str, v: &str| {
        Query::from_items([item().types([t]).tags([tag(k, v)])])
    };
    check_condition(
        &store,
        AppendCondition::not_after(q("Deposited", "channel", "atm"), Some(p(3))),
        false,
        "Deposited atm after 3",
    )
    .await;
    check_condition(
        &store,
        AppendCondition::not_after(q("Deposited", "channel", "atm"), Some(p(4))),
        true,
        "Deposited atm after 4",
    )
    .await;
    check_condition(
        &store,
        AppendCondition::never_matched(q("Withdrawn", "channel", "web")),
        true,
        "type and tag on different events",
    )
    .await;
}

/// A condition with several items fails when any item matches.
pub async fn condition_items_are_ored<S: EventStore + 'static>(store: S) {
    seed(&store).await;
    let q = Query::from_items([
        item().types(["Opened"]).tags([tag("account", "a3")]),
        item().types(["Renamed"]),
    ]);
    check_condition(
        &store,
        AppendCondition::not_after(q.clone(), Some(p(6))),
        false,
        "second item matches 7",
    )
    .await;
    check_condition(
        &store,
        AppendCondition::not_after(q, Some(p(7))),
        true,
        "neither item after 7",
    )
    .await;
    let q = Query::from_items([
        item().types(["Opened"]).tags([tag("account", "a3")]),
        item().types(["Withdrawn"]).tags([tag("channel", "web")]),
    ]);
    check_condition(
        &store,
        AppendCondition::never_matched(q),
        true,
        "no item matches anywhere",
    )
    .await;
    let q = Query::from_items([
        item().tags([tag("account", "a9")]),
        item().tags([tag("account", "a2")]),
    ]);
    check_condition(
        &store,
        AppendCondition::not_after(q, Some(p(7))),
        false,
        "a9 or a2 after 7 (8 matches)",
    )
    .await;
}

/// Events outside the condition's query never fail it, however many.
pub async fn condition_ignores_unrelated_events<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let boundary = Query::tags([tag("account", "mine")]);
    append(&store, vec![record("Opened", &["account:mine"])], None).await;
    let (read_head, events) = read(&store, &boundary, ReadOptions::forwards()).await;
    assert_eq!(positions(&events), [1]);
    for i in 0..5 {
        append(
            &store,
            vec![
                record("Deposited", &[&format!("account:other{i}")]),
                record("Renamed", &[]),
            ],
            None,
        )
        .await;
    }
    let r = store
        .append(
            vec![record("Deposited", &["account:mine"])],
            Some(AppendCondition::not_after(boundary.clone(), read_head)),
        )
        .await
        .expect("unrelated events appended since the read must not fail the condition");
    assert_eq!(r.first, p(12));
    let again = store
        .append(
            vec![record("Deposited", &["account:mine"])],
            Some(AppendCondition::not_after(boundary, read_head)),
        )
        .await;
    assert_condition_failed(
        again,
        read_head,
        "a related event was appended since the read",
    );
}

// ---------------------------------------------------------------------------
// Atomicity
// ---------------------------------------------------------------------------

/// A batch gets consecutive positions, in the order given.
pub async fn append_batch_gets_consecutive_positions<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let r = append(
        &store,
        vec![record("A", &[]), record("B", &[]), record("C", &[])],
        None,
    )
    .await;
    assert_eq!((r.first, r.last, r.len()), (p(1), p(3), 3));
    append(&store, vec![record("D", &[])], None).await;
    let batch: Vec<EventRecord> = (0..4)
        .map(|i| record(&format!("E{i}"), &["batch:2"]))
        .collect();
    let ids: Vec<Uuid> = batch.iter().map(|r| r.metadata.event_id).collect();
    let r = append(&store, batch, None).await;
    assert_eq!((r.first, r.last), (p(5), p(8)));
    assert_eq!(
        r.positions().map(|p| p.get()).collect::<Vec<_>>(),
        [5, 6, 7, 8]
    );
    let (_, events) = read(
        &store,
        &Query::tags([tag("batch", "2")]),
        ReadOptions::forwards(),
    )
    .await;
    assert_eq!(positions(&events), [5, 6, 7, 8]);
    let types: Vec<&str> = events.iter().map(|e| e.event_type().as_str()).collect();
    assert_eq!(types, ["E0", "E1", "E2", "E3"], "batch order is kept");
    let read_ids: Vec<Uuid> = events.iter().map(|e| e.metadata().event_id).collect();
    assert_eq!(read_ids, ids);
}

/// A failed condition appends none of the batch.
pub async fn failed_condition_writes_nothing<S: EventStore + 'static>(store: S) {
    seed(&store).await;
    let batch = vec![
        record("X", &["x:1"]),
        record("Y", &["x:1"]),
        record("Z", &["x:1"]),
    ];
    let result = store
        .append(
            batch,
            Some(AppendCondition::not_after(
                Query::types(["Renamed"]),
                Some(p(2)),
            )),
        )
        .await;
    assert_condition_failed(result, Some(p(2)), "Renamed after 2");
    assert_eq!(head(&store).await, Some(p(8)), "head unchanged");
    let (_, events) = read(
        &store,
        &Query::tags([tag("x", "1")]),
        ReadOptions::forwards(),
    )
    .await;
    assert!(events.is_empty(), "no event of the failed batch is stored");
    let r = append(&store, vec![record("X", &["x:1"])], None).await;
    assert_eq!(r.first, p(9), "a failed append leaves no gap");
}

/// A batch with the same event id twice appends nothing.
pub async fn duplicate_event_id_in_batch_writes_nothing<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    append(&store, vec![record("A", &[])], None).await;
    let first = record("B", &["dup:1"]);
    let mut second = record("C", &["dup:1"]);
    second.metadata.event_id = first.metadata.event_id;
    let id = first.metadata.event_id;
    match store
        .append(vec![record("Ok", &["dup:1"]), first, second], None)
        .await
    {
        Err(StoreError::DuplicateEventId(reported)) => {
            assert_eq!(reported, id, "the duplicate id is reported")
        }
        other => panic!("expected DuplicateEventId({id}), got {other:?}"),
    }
    assert_eq!(
        head(&store).await,
        Some(p(1)),
        "nothing of the batch is stored"
    );
    assert!(read(
        &store,
        &Query::tags([tag("dup", "1")]),
        ReadOptions::forwards()
    )
    .await
    .1
    .is_empty());
    assert_eq!(
        append(&store, vec![record("A", &[])], None).await.first,
        p(2),
        "no gap"
    );
}

/// A batch reusing a stored event id appends nothing.
pub async fn duplicate_event_id_already_stored_writes_nothing<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let stored = record("A", &[]);
    let id = stored.metadata.event_id;
    append(&store, vec![stored.clone()], None).await;
    let mut again = record("B", &["dup:2"]);
    again.metadata.event_id = id;
    match store
        .append(vec![record("New", &["dup:2"]), again], None)
        .await
    {
        Err(StoreError::DuplicateEventId(reported)) => {
            assert_eq!(reported, id, "the duplicate id is reported")
        }
        other => panic!("expected DuplicateEventId({id}), got {other:?}"),
    }
    match store
        .append(
            vec![stored],
            Some(AppendCondition::never_matched(Query::types(["Nope"]))),
        )
        .await
    {
        Err(StoreError::DuplicateEventId(reported)) => assert_eq!(reported, id),
        other => panic!("expected DuplicateEventId({id}) for a conditional append, got {other:?}"),
    }
    assert_eq!(
        head(&store).await,
        Some(p(1)),
        "nothing of the batches is stored"
    );
    assert!(read(
        &store,
        &Query::tags([tag("dup", "2")]),
        ReadOptions::forwards()
    )
    .await
    .1
    .is_empty());
}

/// An empty batch is an invalid request, with or without a condition.
pub async fn empty_append_is_invalid<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    for condition in [None, Some(AppendCondition::never_matched(Query::all()))] {
        match store.append(Vec::new(), condition.clone()).await {
            Err(StoreError::InvalidRequest(_)) => {}
            other => {
                panic!("an empty append with {condition:?} must be InvalidRequest, got {other:?}")
            }
        }
    }
    assert_eq!(head(&store).await, None);
}

/// What PostgreSQL cannot store (NUL in a text, `\u0000` in JSON, a tag
/// or type too long to index) is refused as an invalid request naming the
/// field, by every backend alike, and nothing is written; reads and
/// conditions with such values are refused too.
pub async fn unstorable_values_are_refused<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let long = "x".repeat(dcb_core::limits::MAX_TAG_BYTES);
    let mut nul_metadata = record("Ok", &["k:1"]);
    nul_metadata.metadata.user = Some(serde_json::json!({ "note": "a\u{0}b" }));
    let cases: Vec<(&str, EventRecord)> = vec![
        ("NUL in a tag", record("Ok", &["k:a\u{0}b"])),
        ("an over-long tag", record("Ok", &[&format!("k:{long}")])),
        ("NUL in the type", record("Bad\u{0}Type", &["k:1"])),
        ("an over-long type", record(&"T".repeat(300), &["k:1"])),
        ("NUL in user metadata", nul_metadata),
    ];
    for (what, bad) in cases {
        match store.append(vec![record("Ok", &["k:1"]), bad], None).await {
            Err(StoreError::InvalidRequest(message)) => assert!(
                message.contains("event 2"),
                "{what}: the message must name the event: {message}"
            ),
            other => panic!("{what}: expected InvalidRequest, got {other:?}"),
        }
    }
    let bad_query = Query::tags([tag("k", "a\u{0}b")]);
    assert!(matches!(
        store.read(&bad_query, ReadOptions::forwards()).await,
        Err(StoreError::InvalidRequest(_))
    ));
    assert!(matches!(
        store
            .append(
                vec![record("Ok", &["k:1"])],
                Some(AppendCondition::never_matched(bad_query))
            )
            .await,
        Err(StoreError::InvalidRequest(_))
    ));
    assert_eq!(head(&store).await, None, "nothing may be written");
    // Anything else is kept as written.
    let odd = record("Ünïcödé ✓", &["k:\u{1}tab\t", "empty:"]);
    append(&store, vec![odd.clone()], None).await;
    let (_, events) = read(&store, &Query::all(), ReadOptions::forwards()).await;
    assert_eq!(events[0].record, odd);
}

/// Among concurrent appends, one refused value fails its own caller only:
/// every other append commits.
pub async fn a_bad_append_fails_only_its_caller<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let store = Arc::new(store);
    let barrier = Arc::new(Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                let value = if i == 7 {
                    "bad\u{0}".to_string()
                } else {
                    i.to_string()
                };
                let ev = record("Item", &[&format!("k:{value}")]);
                barrier.wait().await;
                (i, store.append(vec![ev], None).await)
            })
        })
        .collect();
    let mut committed = 0;
    for task in tasks {
        let (i, result) = task.await.expect("appender panicked");
        match (i, result) {
            (7, Err(StoreError::InvalidRequest(_))) => {}
            (7, other) => panic!("the bad append must be InvalidRequest, got {other:?}"),
            (_, Ok(_)) => committed += 1,
            (i, Err(e)) => panic!("innocent append {i} failed: {e:?}"),
        }
    }
    assert_eq!(committed, RACERS - 1);
    let (_, events) = read(&*store, &Query::all(), ReadOptions::forwards()).await;
    assert_eq!(events.len(), RACERS - 1);
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

/// Event id, correlation and causation ids and user metadata come back as
/// written.
pub async fn metadata_round_trip<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let mut full = record("Full", &["m:1", "m:2", "other:x"]);
    full.metadata.correlation_id = Some(Uuid::new_v4());
    full.metadata.causation_id = Some(Uuid::new_v4());
    full.metadata.user = Some(serde_json::json!({
        "user": "ann",
        "roles": ["admin", "ops"],
        "nested": { "n": 42, "f": 1.5, "none": null, "yes": true },
        "text": "quotes \" and unicode é ✓",
    }));
    let bare = record("Bare", &[]);
    append(&store, vec![full.clone(), bare.clone()], None).await;
    let (_, events) = read(&store, &Query::all(), ReadOptions::forwards()).await;
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].metadata(),
        &full.metadata,
        "full metadata round trip"
    );
    assert_eq!(
        events[1].metadata(),
        &bare.metadata,
        "bare metadata round trip"
    );
    let mut tags = events[0].tags().to_vec();
    tags.sort();
    let mut expected = full.tags.clone();
    expected.sort();
    assert_eq!(
        tags, expected,
        "tags round trip (order aside), two with the same key"
    );
    assert_eq!(events[0].record.event_type, full.event_type);
}

/// Payloads are opaque bytes: anything comes back unchanged.
pub async fn payload_bytes_round_trip<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let payloads: Vec<Vec<u8>> = vec![
        b"{\"a\":1,\"b\":[true,null]}".to_vec(),
        Vec::new(),
        vec![0, 1, 2, 0xff, 0xfe, 0, 0x80],
        "unicode é ✓".as_bytes().to_vec(),
        (0..=255u8).cycle().take(64 * 1024).collect(),
    ];
    let records: Vec<EventRecord> = payloads
        .iter()
        .map(|payload| EventRecord {
            payload: payload.clone(),
            ..record("Bytes", &[])
        })
        .collect();
    append(&store, records, None).await;
    let (_, events) = read(&store, &Query::types(["Bytes"]), ReadOptions::forwards()).await;
    assert_eq!(events.len(), payloads.len());
    for (i, (event, payload)) in events.iter().zip(&payloads).enumerate() {
        assert!(
            event.record.payload == *payload,
            "payload #{i} ({} bytes) changed",
            payload.len()
        );
    }
}

/// The store stamps `recorded_at` at append time.
pub async fn recorded_at_is_set<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let before = Utc::now();
    append(&store, vec![record("A", &[]), record("B", &[])], None).await;
    let after = Utc::now();
    let (_, events) = read(&store, &Query::all(), ReadOptions::forwards()).await;
    // a database clock may differ a little from ours
    let slack = chrono::Duration::seconds(5);
    for event in &events {
        assert!(
            event.recorded_at >= before - slack && event.recorded_at <= after + slack,
            "recorded_at {} is not within the append ({before} .. {after})",
            event.recorded_at
        );
    }
    let (_, again) = read(&store, &Query::all(), ReadOptions::backwards()).await;
    assert_eq!(
        again[1].recorded_at, events[0].recorded_at,
        "recorded_at is stored, not computed per read"
    );
}

// ---------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------

const RACERS: usize = 32;

/// Racers that all read one boundary at the same head and append with
/// `{query, after: head}`: exactly one wins each round.
pub async fn concurrent_appends_on_one_boundary_one_wins<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let store = Arc::new(store);
    let boundary = Query::tags([tag("boundary", "b1")]);
    const ROUNDS: usize = 5;
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|racer| {
                let (store, barrier, boundary) = (store.clone(), barrier.clone(), boundary.clone());
                tokio::spawn(async move {
                    let (head, _) = read(&*store, &boundary, ReadOptions::forwards()).await;
                    // everyone has read before anyone appends
                    barrier.wait().await;
                    let ev = record("Claimed", &["boundary:b1", &format!("racer:{racer}")]);
                    (
                        head,
                        store
                            .append(vec![ev], Some(AppendCondition::not_after(boundary, head)))
                            .await,
                    )
                })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            let (head, result) = task.await.expect("racer panicked");
            match result {
                Ok(_) => wins += 1,
                Err(StoreError::ConditionFailed { after }) => assert_eq!(after, head),
                Err(e) => panic!("round {round}: a racer failed with {e:?}, not ConditionFailed"),
            }
        }
        assert_eq!(
            wins, 1,
            "round {round}: exactly one of {RACERS} racers must win"
        );
    }
    let (head, events) = read(&*store, &boundary, ReadOptions::forwards()).await;
    assert_eq!(events.len(), ROUNDS, "one event per round");
    assert_eq!(head, Some(p(ROUNDS as u64)));
}

/// Racers on disjoint boundaries never conflict.
pub async fn concurrent_appends_on_disjoint_boundaries_all_succeed<S: EventStore + 'static>(
    store: S,
) {
    assert_empty(&store).await;
    let store = Arc::new(store);
    const ROUNDS: usize = 3;
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|racer| {
                let (store, barrier) = (store.clone(), barrier.clone());
                tokio::spawn(async move {
                    let own = format!("boundary:{racer}");
                    let boundary = Query::from_items([item()
                        .types(["Claimed"])
                        .tags([Tag::parse(own.clone()).unwrap()])]);
                    let (head, _) = read(&*store, &boundary, ReadOptions::forwards()).await;
                    barrier.wait().await;
                    let ev = record("Claimed", &[&own]);
                    store
                        .append(vec![ev], Some(AppendCondition::not_after(boundary, head)))
                        .await
                })
            })
            .collect();
        for (racer, task) in tasks.into_iter().enumerate() {
            if let Err(e) = task.await.expect("racer panicked") {
                panic!("round {round}: racer {racer} on its own boundary failed: {e:?}");
            }
        }
    }
    let (head, events) = read(&*store, &Query::all(), ReadOptions::forwards()).await;
    assert_eq!(events.len(), RACERS * ROUNDS);
    assert_eq!(head, Some(p((RACERS * ROUNDS) as u64)));
}

/// Many writers appending batches while readers follow the log: positions
/// are unique and gapless, batches contiguous, and a follower never sees a
/// position skipped (nothing appears below what it has already seen).
pub async fn concurrent_appends_keep_positions_gapless<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let store = Arc::new(store);
    const WRITERS: usize = 8;
    const APPENDS: usize = 25;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let followers: Vec<_> = (0..2)
        .map(|_| {
            let (store, done) = (store.clone(), done.clone());
            tokio::spawn(async move {
                let mut last = 0u64;
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                    let options = ReadOptions::forwards().after(Position(last));
                    let (head, events) = read(&*store, &Query::all(), options).await;
                    for e in &events {
                        assert_eq!(
                            e.position.get(),
                            last + 1,
                            "a follower at {last} saw {} next: a position was skipped or appeared late",
                            e.position
                        );
                        last += 1;
                    }
                    if finished && head.is_none_or(|h| h.get() == last) {
                        return last;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                for n in 0..APPENDS {
                    let size = 1 + (writer + n) % 3;
                    let batch: Vec<EventRecord> = (0..size)
                        .map(|i| {
                            record(
                                &format!("W{writer}"),
                                &[&format!("append:{writer}-{n}"), &format!("index:{i}")],
                            )
                        })
                        .collect();
                    // half the appends carry a condition on the writer's own boundary
                    let condition = (n % 2 == 0).then(|| {
                        AppendCondition::never_matched(Query::tags([tag(
                            "append",
                            &format!("{writer}-{n}"),
                        )]))
                    });
                    let r = store
                        .append(batch, condition)
                        .await
                        .unwrap_or_else(|e| panic!("writer {writer} append {n} failed: {e}"));
                    assert_eq!(
                        r.len(),
                        size,
                        "writer {writer} append {n}: positions for the whole batch"
                    );
                    results.push((writer, n, r));
                }
                results
            })
        })
        .collect();
    let mut results = Vec::new();
    for w in writers {
        results.extend(w.await.expect("writer panicked"));
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let total: usize = results.iter().map(|(_, _, r)| r.len()).sum();
    for f in followers {
        let seen = f.await.expect("follower panicked");
        assert_eq!(seen, total as u64, "a follower saw every event");
    }
    // Append results tile 1..=total exactly.
    let mut ranges: Vec<(u64, u64)> = results
        .iter()
        .map(|(_, _, r)| (r.first.get(), r.last.get()))
        .collect();
    ranges.sort();
    let mut next = 1;
    for (first, last) in &ranges {
        assert_eq!(
            *first, next,
            "append results overlap or leave a gap at {next}"
        );
        next = last + 1;
    }
    assert_eq!(next - 1, total as u64);
    let (head, events) = read(&*store, &Query::all(), ReadOptions::forwards()).await;
    assert_eq!(head, Some(p(total as u64)));
    assert_eq!(
        positions(&events),
        (1..=total as u64).collect::<Vec<_>>(),
        "positions are 1..=total"
    );
    let unique: BTreeSet<Uuid> = events.iter().map(|e| e.metadata().event_id).collect();
    assert_eq!(unique.len(), total, "every event stored once");
    // Each append's events sit at the positions it was given, in batch order.
    for (writer, n, r) in &results {
        let (_, batch) = read(
            &*store,
            &Query::tags([tag("append", &format!("{writer}-{n}"))]),
            ReadOptions::forwards(),
        )
        .await;
        let got: Vec<u64> = positions(&batch);
        let expected: Vec<u64> = r.positions().map(|p| p.get()).collect();
        assert_eq!(
            got, expected,
            "writer {writer} append {n} is not where the store said"
        );
        for (i, e) in batch.iter().enumerate() {
            assert!(
                e.tags().contains(&tag("index", &i.to_string())),
                "batch order at {}",
                e.position
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The decision maker against the store
// ---------------------------------------------------------------------------

/// The event of the decision-maker cases: a counter was incremented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterEvent {
    /// `counter` went up by `by`.
    Incremented {
        /// The counter's id (tag `counter`).
        counter: String,
        /// How much.
        by: u64,
    },
    /// `counter` went down by `by`.
    Decremented {
        /// The counter's id (tag `counter`).
        counter: String,
        /// How much.
        by: u64,
    },
}

impl Event for CounterEvent {
    const SCHEMA: &'static [EventSchema] = &[
        EventSchema {
            event_type: "Incremented",
            tag_keys: &["counter"],
        },
        EventSchema {
            event_type: "Decremented",
            tag_keys: &["counter"],
        },
    ];

    fn event_type(&self) -> EventType {
        match self {
            CounterEvent::Incremented { .. } => EventType::from_static("Incremented"),
            CounterEvent::Decremented { .. } => EventType::from_static("Decremented"),
        }
    }

    fn tags(&self) -> Vec<Tag> {
        let (CounterEvent::Incremented { counter, .. } | CounterEvent::Decremented { counter, .. }) =
            self;
        vec![Tag::new("counter", counter)]
    }

    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let (CounterEvent::Incremented { counter, by } | CounterEvent::Decremented { counter, by }) =
            self;
        serde_json::to_vec(&serde_json::json!({ "counter": counter, "by": by }))
            .map_err(|e| CodecError::Encode(e.to_string()))
    }

    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, CodecError> {
        let v: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| CodecError::Decode(e.to_string()))?;
        let (counter, by) = match (v["counter"].as_str(), v["by"].as_u64()) {
            (Some(counter), Some(by)) => (counter.to_owned(), by),
            _ => return Err(CodecError::Decode(format!("not a counter payload: {v}"))),
        };
        match event_type {
            "Incremented" => Ok(CounterEvent::Incremented { counter, by }),
            "Decremented" => Ok(CounterEvent::Decremented { counter, by }),
            other => Err(CodecError::UnknownType(other.into())),
        }
    }
}

/// A counter's value.
#[derive(Debug, Clone)]
pub struct Counter {
    id: String,
    value: u64,
}

impl StateQuery for Counter {
    const NAME: &'static str = "Counter";
    type Event = CounterEvent;
    fn query(&self) -> Query {
        dcb_core::state_query_for::<CounterEvent>(&[Tag::new("counter", &self.id)])
    }
}

impl StateMutate for Counter {
    fn mutate(&mut self, event: CounterEvent) {
        match event {
            CounterEvent::Incremented { by, .. } => self.value += by,
            CounterEvent::Decremented { by, .. } => self.value = self.value.saturating_sub(by),
        }
    }
}

/// The counter would pass its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("counter is at its limit {0}")]
pub struct LimitReached(pub u64);

/// Increments a counter by one, up to a limit.
#[derive(Debug, Clone)]
pub struct Increment {
    /// The counter.
    pub counter: String,
    /// The highest value allowed.
    pub limit: u64,
}

impl Decision for Increment {
    type Event = CounterEvent;
    type StateQuery = Counter;
    type Error = LimitReached;

    fn state_query(&self) -> Counter {
        Counter {
            id: self.counter.clone(),
            value: 0,
        }
    }

    fn process(&self, state: &Counter) -> Result<Vec<CounterEvent>, LimitReached> {
        if state.value >= self.limit {
            return Err(LimitReached(self.limit));
        }
        Ok(vec![CounterEvent::Incremented {
            counter: self.counter.clone(),
            by: 1,
        }])
    }
}

fn increment(counter: &str) -> Increment {
    Increment {
        counter: counter.into(),
        limit: u64::MAX,
    }
}

/// The same idempotency key twice: the second call appends nothing and
/// returns the first call's events, marked `replayed`.
pub async fn decision_maker_idempotent_retry<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let maker = DecisionMaker::new(store);
    let first = maker
        .make_with(
            &increment("c1"),
            MakeOptions::new().idempotency_key("req-1"),
        )
        .await
        .expect("first call commits");
    assert!(!first.replayed, "the first call is not a replay");
    assert_eq!(first.events.len(), 1);
    let head_after_first = head(maker.store()).await;
    let second = maker
        .make_with(
            &increment("c1"),
            MakeOptions::new().idempotency_key("req-1"),
        )
        .await
        .expect("the retry succeeds");
    assert!(
        second.replayed,
        "the retry with the same key must be a replay"
    );
    assert_eq!(second.events.len(), 1);
    assert_eq!(
        second.events[0].event, first.events[0].event,
        "the replay returns the earlier event"
    );
    assert_eq!(
        second.events[0].position, first.events[0].position,
        "at its original position"
    );
    assert_eq!(
        second.events[0].metadata.event_id, first.events[0].metadata.event_id,
        "with its original id"
    );
    assert_eq!(
        head(maker.store()).await,
        head_after_first,
        "the retry appended nothing"
    );
    let third = maker
        .make_with(
            &increment("c1"),
            MakeOptions::new().idempotency_key("req-2"),
        )
        .await
        .expect("another key commits");
    assert!(!third.replayed);
    assert_eq!(third.events[0].position, head_after_first.unwrap().next());
    // without a key, a command runs every time
    maker.make(increment("c1")).await.expect("no key");
    maker.make(increment("c1")).await.expect("no key");
    let (_, events) = read(
        maker.store(),
        &Query::tags([tag("counter", "c1")]),
        ReadOptions::forwards(),
    )
    .await;
    assert_eq!(events.len(), 4, "req-1 once, req-2 once, two without a key");
}

/// Many concurrent calls with one idempotency key: one append, and every
/// call returns that same event.
pub async fn decision_maker_concurrent_idempotent_retry<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let maker = Arc::new(DecisionMaker::new(store).with_retry(RetryPolicy {
        max_attempts: 100,
        ..RetryPolicy::default()
    }));
    let barrier = Arc::new(Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (maker, barrier) = (maker.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                maker
                    .make_with(&increment("c1"), MakeOptions::new().idempotency_key("once"))
                    .await
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    let mut fresh = 0;
    for task in tasks {
        let decided = task
            .await
            .expect("task panicked")
            .unwrap_or_else(|e| panic!("a call failed: {e}"));
        assert_eq!(decided.events.len(), 1);
        ids.insert(decided.events[0].metadata.event_id);
        if !decided.replayed {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "exactly one call commits, the others replay it");
    assert_eq!(ids.len(), 1, "every call returns the same event");
    let (_, events) = read(maker.store(), &Query::all(), ReadOptions::forwards()).await;
    assert_eq!(events.len(), 1, "one event in the store");
}

/// Concurrent decisions on one counter with a limit: conflicts are retried
/// until every call commits or is rejected by the rule, and the rule holds.
pub async fn decision_maker_conflict_retry_converges<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    const CALLS: usize = 16;
    const LIMIT: u64 = 10;
    // Generous attempts: this case is about the store's conflicts, not the
    // default policy.
    let maker = Arc::new(DecisionMaker::new(store).with_retry(RetryPolicy {
        max_attempts: 200,
        ..RetryPolicy::default()
    }));
    let barrier = Arc::new(Barrier::new(CALLS));
    let tasks: Vec<_> = (0..CALLS)
        .map(|_| {
            let (maker, barrier) = (maker.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                maker
                    .make(Increment {
                        counter: "c1".into(),
                        limit: LIMIT,
                    })
                    .await
            })
        })
        .collect();
    let (mut committed, mut rejected, mut retried) = (0u64, 0u64, 0u32);
    for task in tasks {
        match task.await.expect("task panicked") {
            Ok(decided) => {
                committed += 1;
                retried = retried.max(decided.attempts);
            }
            Err(DecisionError::Rejected(LimitReached(LIMIT))) => rejected += 1,
            Err(e) => panic!("a decision neither committed nor was rejected by the rule: {e}"),
        }
    }
    assert_eq!(
        committed, LIMIT,
        "exactly the limit commits ({rejected} rejected, most attempts {retried})"
    );
    assert_eq!(rejected, CALLS as u64 - LIMIT);
    let (_, events) = read(
        maker.store(),
        &Query::tags([tag("counter", "c1")]),
        ReadOptions::forwards(),
    )
    .await;
    let total: u64 = events
        .iter()
        .map(
            |e| match e.decode::<CounterEvent>().expect("decodes").event {
                CounterEvent::Incremented { by, .. } => by,
                CounterEvent::Decremented { .. } => panic!("nothing decrements here"),
            },
        )
        .sum();
    assert_eq!(
        total, LIMIT,
        "the folded counter equals the commits and respects the limit"
    );
}

// ---------------------------------------------------------------------------
// The decision maker's cache of states
// ---------------------------------------------------------------------------

fn bounded(counter: &str, limit: u64) -> Increment {
    Increment {
        counter: counter.into(),
        limit,
    }
}

/// Another instance (a maker with a cache of its own, or a plain append)
/// moves the counter to its limit behind a maker's cached state: the
/// maker's next decision must see it and refuse, never accept on the stale
/// state.
pub async fn cached_state_never_accepts_wrongly<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let store = Arc::new(store);
    let ours = DecisionMaker::new(store.clone());
    let theirs = DecisionMaker::new(store.clone());
    ours.make(bounded("c1", 3)).await.expect("1 of 3");
    let second = ours.make(bounded("c1", 3)).await.expect("2 of 3");
    assert!(
        second.from_cache,
        "the second decision decides on the cached state"
    );
    // The other instance takes the last slot.
    theirs.make(bounded("c1", 3)).await.expect("3 of 3");
    match ours.make(bounded("c1", 3)).await {
        Err(DecisionError::Rejected(LimitReached(3))) => {}
        other => panic!("the stale cache must not accept a 4th increment: {other:?}"),
    }
    let (_, events) = read(
        &*store,
        &Query::tags([tag("counter", "c1")]),
        ReadOptions::forwards(),
    )
    .await;
    assert_eq!(events.len(), 3, "never past the limit");
    let stats = ours.cache_stats().expect("the cache is on by default");
    assert!(stats.hits >= 2 && stats.refreshes >= 1, "{stats:?}");
}

/// A maker's cached state says the counter is at its limit, but another
/// instance has since taken the counter down: a rejection decided on a
/// cached state is confirmed against the events after it before it is
/// reported, so the maker grants the increment.
pub async fn cached_state_never_rejects_wrongly<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let store = Arc::new(store);
    let ours = DecisionMaker::new(store.clone());
    for _ in 0..2 {
        ours.make(bounded("c2", 2)).await.expect("below the limit");
    }
    match ours.make(bounded("c2", 2)).await {
        Err(DecisionError::Rejected(LimitReached(2))) => {}
        other => panic!("at the limit: {other:?}"),
    }
    // Another instance takes the counter down, behind our cached state.
    let down = CounterEvent::Decremented {
        counter: "c2".into(),
        by: 1,
    };
    store
        .append(vec![down.to_record().expect("encodes")], None)
        .await
        .expect("the other instance appends");
    let refreshes = ours.cache_stats().map_or(0, |s| s.refreshes);
    let decided = ours
        .make(bounded("c2", 2))
        .await
        .expect("the counter is at 1 again: the increment must be granted");
    assert_eq!(decided.events.len(), 1);
    assert!(
        ours.cache_stats().map_or(0, |s| s.refreshes) > refreshes,
        "the cached rejection was checked against the log"
    );
    match ours.make(bounded("c2", 2)).await {
        Err(DecisionError::Rejected(LimitReached(2))) => {}
        other => panic!("at the limit again: {other:?}"),
    }
}

/// Two instances, each with its own cache, race increments up to a limit on
/// a few counters: no counter passes its limit, every increment below it is
/// granted, and the caches were used (and found stale) along the way.
pub async fn cached_states_race_another_instance_within_the_limit<S: EventStore + 'static>(
    store: S,
) {
    assert_empty(&store).await;
    let store = Arc::new(store);
    const LIMIT: u64 = 25;
    const COUNTERS: usize = 3;
    let policy = RetryPolicy::default().max_attempts(1_000);
    let makers = [
        Arc::new(DecisionMaker::new(store.clone()).with_retry(policy.clone())),
        Arc::new(DecisionMaker::new(store.clone()).with_retry(policy)),
    ];
    let barrier = Arc::new(Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (maker, barrier) = (makers[i % 2].clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut granted = 0u64;
                for n in 0..20 {
                    let counter = format!("r{}", (i + n) % COUNTERS);
                    match maker.make(bounded(&counter, LIMIT)).await {
                        Ok(_) => granted += 1,
                        Err(DecisionError::Rejected(LimitReached(_))) => {}
                        Err(e) => panic!("racer {i}: {e}"),
                    }
                }
                granted
            })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        granted += task.await.expect("racer panicked");
    }
    assert_eq!(
        granted,
        LIMIT * COUNTERS as u64,
        "every increment below the limit is granted, none above"
    );
    for c in 0..COUNTERS {
        let (_, events) = read(
            &*store,
            &Query::tags([tag("counter", &format!("r{c}"))]),
            ReadOptions::forwards(),
        )
        .await;
        assert_eq!(events.len() as u64, LIMIT, "counter r{c}");
    }
    for maker in &makers {
        let stats = maker.cache_stats().expect("cache on");
        assert!(stats.hits > 0, "the caches were used: {stats:?}");
    }
    let refreshes: u64 = makers
        .iter()
        .map(|m| m.cache_stats().map_or(0, |s| s.refreshes))
        .sum();
    assert!(
        refreshes > 0,
        "the instances made each other's caches stale"
    );
}

/// A cache of `n` entries never holds more than `n` states, however many
/// boundaries its decisions touch.
pub async fn cache_stays_within_its_bound<S: EventStore + 'static>(store: S) {
    assert_empty(&store).await;
    let maker = DecisionMaker::new(store).cache_entries(50);
    for i in 0..400 {
        maker
            .make(bounded(&format!("b{i}"), 10))
            .await
            .expect("a fresh counter");
        let stats = maker.cache_stats().expect("cache on");
        assert!(stats.entries <= 50, "{stats:?}");
    }
    let stats = maker.cache_stats().expect("cache on");
    assert!(
        stats.entries > 0 && stats.approx_bytes <= 50 * 2048,
        "{stats:?}"
    );
    // The most recent boundaries are still served from the cache.
    let decided = maker
        .make(bounded("b399", 10))
        .await
        .expect("second increment");
    assert!(decided.from_cache);
}
