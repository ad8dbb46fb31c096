//! Snapshots of decision states, against the in-memory store (the bank of
//! `dcb_tests::bank`, also run on PostgreSQL by `pg_snapshot`): same results
//! with and without them, saved every N events, corrupt or foreign snapshots
//! ignored, keys that change with ids, query and version, racers and
//! idempotency keys still right.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dcb_core::{
    AppendCondition, AppendResult, Decided, DecisionMaker, DecisionState, Event, EventRecord,
    EventStore, InMemoryEventStore, InMemorySnapshotStore, MakeOptions, Position, Query,
    ReadOptions, ReadResult, RetryPolicy, Snapshot, SnapshotStore, Snapshotted, StateMutate,
    StateQuery, StoreError, StoredSnapshot,
};
use dcb_tests::bank::{
    balance_of, deposit, key_of, outcome, race_withdrawals, withdraw, Balance, BankEvent,
};
use dcb_tests::gate::{Gated, ReadGate};
use serde::{Deserialize, Serialize};

/// The same state under the same name with a bumped schema version.
#[derive(Clone, StateQuery, Serialize, Deserialize, Debug)]
#[state_query(BankEvent, rename = "Balance")]
struct BalanceV2 {
    #[id]
    account: String,
    balance: u64,
}

impl StateMutate for BalanceV2 {
    fn mutate(&mut self, _: BankEvent) {}
}

impl Snapshot for BalanceV2 {
    const VERSION: u32 = 2;
}

#[derive(Event, Debug, Clone, PartialEq)]
enum DepositsOnly {
    Deposited {
        #[id]
        account: String,
        amount: u64,
    },
}

/// The same name and version, but a query over fewer event types.
#[derive(Clone, StateQuery, Serialize, Deserialize, Debug)]
#[state_query(DepositsOnly, rename = "Balance")]
struct DepositTotal {
    #[id]
    account: String,
    total: u64,
}

impl StateMutate for DepositTotal {
    fn mutate(&mut self, _: DepositsOnly) {}
}

impl Snapshot for DepositTotal {}

/// An event store that records where each read started.
#[derive(Default)]
struct Recording {
    inner: InMemoryEventStore,
    starts: Mutex<Vec<Option<Position>>>,
}

impl Recording {
    fn take_starts(&self) -> Vec<Option<Position>> {
        std::mem::take(&mut *self.starts.lock().unwrap())
    }
}

#[async_trait]
impl EventStore for Recording {
    async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult, StoreError> {
        self.starts.lock().unwrap().push(options.start);
        self.inner.read(query, options).await
    }

    async fn append(
        &self,
        events: Vec<EventRecord>,
        condition: Option<AppendCondition>,
    ) -> Result<AppendResult, StoreError> {
        self.inner.append(events, condition).await
    }
}

#[tokio::test]
async fn same_results_with_and_without_snapshots() {
    let snapshots = Arc::new(InMemorySnapshotStore::new());
    let with = DecisionMaker::new(Arc::new(Recording::default()))
        .cache_entries(0)
        .with_snapshots(snapshots.clone(), 7);
    let without = DecisionMaker::new(InMemoryEventStore::new());
    let mut rng = fastrand::Rng::with_seed(20240601);
    for step in 0..400 {
        let account = ["a1", "a2", "a3"][rng.usize(..3)];
        let amount = rng.u64(1..50);
        let (a, b) = if rng.bool() {
            let a = with.make(deposit(account, amount));
            let b = without.make(deposit(account, amount));
            (outcome(a.await), outcome(b.await))
        } else {
            let a = with.make(withdraw(account, amount));
            let b = without.make(withdraw(account, amount));
            (outcome(a.await), outcome(b.await))
        };
        assert_eq!(a, b, "step {step}");
    }
    for account in ["a1", "a2", "a3"] {
        assert_eq!(
            balance_of(&with, account).await,
            balance_of(&without, account).await
        );
    }
    assert_eq!(snapshots.len(), 3, "one snapshot per account");
    // Reads started past the beginning: the snapshots were used.
    let starts = with.store().take_starts();
    assert!(
        starts.iter().filter(|s| s.is_some()).count() > 300,
        "most reads should start after a snapshot: {starts:?}"
    );
}

#[tokio::test]
async fn a_snapshot_is_saved_every_n_events() {
    let snapshots = Arc::new(InMemorySnapshotStore::new());
    let maker = DecisionMaker::new(InMemoryEventStore::new())
        .cache_entries(0)
        .with_snapshots(snapshots.clone(), 10);
    let key = key_of("a1");
    for amount in 1..=10 {
        maker.make(deposit("a1", amount)).await.unwrap();
        // Another account's events are not folded into a1: they don't count.
        maker.make(deposit("other", 1)).await.unwrap();
    }
    // The 10th deposit read 9 events of a1: nothing saved yet.
    assert_eq!(snapshots.get(&key), None);
    // The 11th reads 10: saved at the head it read (20: a1 and other).
    maker.make(deposit("a1", 11)).await.unwrap();
    let saved = snapshots.get(&key).expect("a snapshot after 10 events");
    assert_eq!(saved.position, Position(20));
    let state = Balance::from_snapshot_bytes(&saved.payload).unwrap();
    assert_eq!(
        state,
        Balance {
            account: "a1".into(),
            balance: 55,
            operations: 10
        }
    );
    // The next ones read after 20: 9 more decisions do not reach 10 events.
    for amount in 12..=20 {
        maker.make(deposit("a1", amount)).await.unwrap();
    }
    assert_eq!(snapshots.get(&key).unwrap().position, Position(20));
    maker.make(deposit("a1", 21)).await.unwrap();
    let saved = snapshots.get(&key).unwrap();
    assert_eq!(saved.position, Position(30));
    assert_eq!(
        Balance::from_snapshot_bytes(&saved.payload)
            .unwrap()
            .operations,
        20
    );
    assert_eq!(balance_of(&maker, "a1").await, ((1..=21).sum(), 21));
}

#[tokio::test]
async fn a_rejected_decision_still_saves_its_read() {
    let snapshots = Arc::new(InMemorySnapshotStore::new());
    let maker = DecisionMaker::new(InMemoryEventStore::new())
        .cache_entries(0)
        .with_snapshots(snapshots.clone(), 1);
    maker.make(deposit("a1", 5)).await.unwrap();
    assert_eq!(balance_of(&maker, "a1").await, (5, 1));
    assert_eq!(snapshots.get(&key_of("a1")).unwrap().position, Position(1));
}

/// Plants `payload` under a1's key at `position`, then checks that a
/// decision still sees the true state (folded from scratch) and that a good
/// snapshot replaces the planted one when it is not ahead of the log.
async fn planted_snapshot_is_ignored(payload: Vec<u8>, position: Position) {
    let snapshots = Arc::new(InMemorySnapshotStore::new());
    let store = Arc::new(Recording::default());
    let maker = DecisionMaker::new(store.clone())
        .cache_entries(0)
        .with_snapshots(snapshots.clone(), 1);
    for amount in [10, 20, 30] {
        maker.make(deposit("a1", amount)).await.unwrap();
    }
    let key = key_of("a1");
    snapshots.insert(key.clone(), StoredSnapshot { position, payload });
    store.take_starts();
    assert_eq!(balance_of(&maker, "a1").await, (60, 3));
    assert!(
        store.take_starts().contains(&None),
        "the state was folded from the start"
    );
    if position <= Position(3) {
        let saved = snapshots.get(&key).unwrap();
        assert_eq!(saved.position, Position(3));
        assert_eq!(
            Balance::from_snapshot_bytes(&saved.payload)
                .unwrap()
                .balance,
            60
        );
    }
    maker.make(withdraw("a1", 60)).await.unwrap();
    assert_eq!(balance_of(&maker, "a1").await, (0, 4));
}

#[tokio::test]
async fn a_snapshot_that_does_not_decode_is_ignored() {
    planted_snapshot_is_ignored(b"\x00garbage".to_vec(), Position(3)).await;
}

#[tokio::test]
async fn a_snapshot_with_wrong_fields_is_ignored() {
    // Valid JSON, wrong shape: never half-applied.
    let payload = br#"{"account":"a1","balance":"lots","operations":99}"#.to_vec();
    planted_snapshot_is_ignored(payload, Position(3)).await;
    let missing = br#"{"account":"a1","balance":1000}"#.to_vec();
    planted_snapshot_is_ignored(missing, Position(2)).await;
}

#[tokio::test]
async fn a_snapshot_of_another_boundary_is_ignored() {
    // A good payload of another account under a1's key (a reused key): its
    // query differs, so it is not restored.
    let other = Balance {
        account: "a2".into(),
        balance: 1_000_000,
        operations: 3,
    };
    planted_snapshot_is_ignored(other.snapshot_bytes().unwrap(), Position(3)).await;
}

#[tokio::test]
async fn a_snapshot_past_the_head_is_ignored() {
    // From another log (a restored backup): a1 would look rich.
    let rich = Balance {
        account: "a1".into(),
        balance: 1_000_000,
        operations: 3,
    };
    planted_snapshot_is_ignored(rich.snapshot_bytes().unwrap(), Position(1000)).await;
}

#[test]
fn keys_differ_by_ids_query_and_version() {
    let a1 = key_of("a1");
    assert_eq!(a1, key_of("a1"), "stable");
    assert_ne!(a1, key_of("a2"));
    let v2 = Snapshotted::new(BalanceV2 {
        account: "a1".into(),
        balance: 0,
    })
    .snapshot_key()
    .unwrap();
    assert_eq!(BalanceV2::NAME, Balance::NAME);
    assert_ne!(a1, v2);
    let fewer_types = Snapshotted::new(DepositTotal {
        account: "a1".into(),
        total: 0,
    })
    .snapshot_key()
    .unwrap();
    assert_eq!(DepositTotal::NAME, Balance::NAME);
    assert_ne!(a1, fewer_types);
    assert_ne!(v2, fewer_types);
    // Plain states have no key: they are never snapshotted.
    assert_eq!(Balance::new("a1").snapshot_key(), None);
    assert_eq!(().snapshot_key(), None);
}

/// Racers that all start from the same snapshot, held by a gate until every
/// one has read (no cache of states: each reads), so they all decide on the
/// same state and their appends conflict: the snapshot must not weaken the
/// append condition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racers_never_overdraw_with_snapshots_on() {
    const RACERS: usize = 40;
    let snapshots = Arc::new(InMemorySnapshotStore::new());
    let gate = ReadGate::new();
    let maker = Arc::new(
        DecisionMaker::new(Gated::new(InMemoryEventStore::new(), gate.clone()))
            .cache_entries(0)
            .with_snapshots(snapshots.clone(), 1)
            .with_retry(RetryPolicy {
                max_attempts: 10_000,
                ..RetryPolicy::default()
            }),
    );
    // Some history, so racers start from a snapshot.
    for _ in 0..20 {
        maker.make(deposit("a1", 5)).await.unwrap();
    }
    gate.arm(RACERS);
    let tally = race_withdrawals(std::slice::from_ref(&maker), RACERS, "a1", 7).await;
    assert_eq!(tally.committed, 100 / 7);
    assert!(
        tally.retries > 0,
        "no append condition failed: the racers did not race"
    );
    assert!(tally.from_snapshot > 0, "no racer started from a snapshot");
    assert_eq!(balance_of(&maker, "a1").await, (100 % 7, 20 + 14));
    // The log agrees: fold it without snapshots.
    let plain = DecisionMaker::new(maker.store());
    assert_eq!(balance_of(&plain, "a1").await, (100 % 7, 20 + 14));
}

#[tokio::test]
async fn idempotency_keys_still_work_with_snapshots_on() {
    let snapshots = Arc::new(InMemorySnapshotStore::new());
    let maker = DecisionMaker::new(InMemoryEventStore::new())
        .cache_entries(0)
        .with_snapshots(snapshots.clone(), 1);
    maker.make(deposit("a1", 100)).await.unwrap();
    let request = MakeOptions::new().idempotency_key("withdraw-1");
    let withdraw = withdraw("a1", 30);
    let first = maker.make_with(&withdraw, request.clone()).await.unwrap();
    assert!(!first.replayed);
    // More events and snapshots past the keyed event.
    for _ in 0..5 {
        maker.make(deposit("a1", 1)).await.unwrap();
    }
    assert_eq!(balance_of(&maker, "a1").await, (75, 7));
    let saved = snapshots.get(&key_of("a1")).unwrap().position;
    assert!(
        saved > first.events[0].position,
        "the snapshot ({saved}) lies past the keyed event"
    );
    // The retry is recognised although the snapshot is past its event.
    let again = maker.make_with(&withdraw, request).await.unwrap();
    assert!(again.replayed);
    let pairs = |d: &Decided<BankEvent>| {
        d.events
            .iter()
            .map(|e| (e.position, e.event.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(pairs(&again), pairs(&first));
    assert_eq!(balance_of(&maker, "a1").await, (75, 7));
    // A new key still decides against the snapshotted state.
    let other = maker
        .make_with(&withdraw, MakeOptions::new().idempotency_key("withdraw-2"))
        .await
        .unwrap();
    assert!(!other.replayed);
    assert_eq!(balance_of(&maker, "a1").await, (45, 8));
}

#[tokio::test]
async fn a_failing_snapshot_store_never_fails_a_decision() {
    struct Broken;

    #[async_trait]
    impl SnapshotStore for Broken {
        async fn load(&self, _: &str) -> Result<Option<StoredSnapshot>, StoreError> {
            Err(StoreError::InvalidRequest("broken".into()))
        }

        async fn save(&self, _: &str, _: StoredSnapshot) -> Result<(), StoreError> {
            Err(StoreError::InvalidRequest("broken".into()))
        }
    }

    let maker = DecisionMaker::new(InMemoryEventStore::new())
        .cache_entries(0)
        .with_snapshots(Arc::new(Broken), 1);
    for _ in 0..3 {
        maker.make(deposit("a1", 2)).await.unwrap();
    }
    assert_eq!(balance_of(&maker, "a1").await, (6, 3));
}
