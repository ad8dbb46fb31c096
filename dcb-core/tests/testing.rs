//! Tests of the test harnesses themselves: they pass on the right outcome and,
//! just as important, fail on a wrong one.

mod common;

use common::*;
use dcb_core::testing::{ProjectionHarness, Scenario, TestHarness};
use dcb_core::{
    CodecError, Decision, DecisionError, Event, EventSchema, EventStore, EventType, MakeOptions,
    Query, ReadOptions, Tag,
};

fn open(account: &str) -> Open {
    Open {
        account: account.into(),
        owner: "ann".into(),
    }
}

fn withdraw(account: &str, amount: u64) -> Withdraw {
    Withdraw {
        account: account.into(),
        amount,
    }
}

/// Options carrying idempotency key `key`.
fn keyed(key: &str) -> MakeOptions {
    MakeOptions::new().idempotency_key(key)
}

fn deposit(account: &str, amount: u64) -> Deposit {
    Deposit {
        account: account.into(),
        amount,
    }
}

// --- TestHarness -------------------------------------------------------------

#[test]
fn then_accepts_the_produced_events() {
    TestHarness::given([opened("a1", "ann"), deposited("a1", 100)])
        .when(withdraw("a1", 30))
        .then([withdrawn("a1", 30)]);
}

#[test]
fn when_without_history() {
    TestHarness::when(open("a1")).then([opened("a1", "ann")]);
}

#[test]
fn then_err_accepts_the_rejection() {
    TestHarness::given([opened("a1", "ann")])
        .when(open("a1"))
        .then_err(BankError::AlreadyOpen("a1".into()));
}

#[test]
fn the_state_reads_only_what_its_query_matches() {
    // Deposits to another account are not read: the balance of a1 is 0.
    TestHarness::given([
        opened("a1", "ann"),
        opened("a2", "bob"),
        deposited("a2", 100),
    ])
    .when(withdraw("a1", 50))
    .then_err(BankError::InsufficientFunds {
        balance: 0,
        requested: 50,
    });
}

#[test]
fn state_is_exposed() {
    let when = TestHarness::given([opened("a1", "ann"), deposited("a1", 10), withdrawn("a1", 4)])
        .when(deposit("a1", 1));
    assert_eq!(
        when.state(),
        &Account {
            id: "a1".into(),
            opened: true,
            balance: 6
        }
    );
    assert_eq!(when.result().unwrap(), &[deposited("a1", 1)]);
}

#[test]
fn tuple_states_fold_each_member_from_its_own_query() {
    TestHarness::given([
        opened("a1", "ann"),
        opened("a2", "bob"),
        deposited("a1", 70),
        deposited("a2", 5),
    ])
    .when(Transfer {
        from: "a1".into(),
        to: "a2".into(),
        amount: 70,
    })
    .then([withdrawn("a1", 70), deposited("a2", 70)]);

    TestHarness::given([
        opened("a1", "ann"),
        opened("a2", "bob"),
        deposited("a2", 500),
    ])
    .when(Transfer {
        from: "a1".into(),
        to: "a2".into(),
        amount: 1,
    })
    .then_err(BankError::InsufficientFunds {
        balance: 0,
        requested: 1,
    });
}

#[test]
fn stateless_decisions_read_nothing() {
    TestHarness::given([opened("a1", "ann"), withdrawn("a1", 1_000)])
        .when(Grant {
            account: "a9".into(),
            amount: 5,
        })
        .then([deposited("a9", 5)]);
}

#[test]
fn then_assert_sees_the_result() {
    TestHarness::given([opened("a1", "ann")])
        .when(withdraw("a1", 1))
        .then_assert(|result| {
            assert!(matches!(
                result,
                Err(BankError::InsufficientFunds { balance: 0, .. })
            ))
        });
    TestHarness::when(Grant {
        account: "a1".into(),
        amount: 3,
    })
    .then_assert(|result| assert_eq!(result.unwrap().len(), 1));
}

#[test]
#[should_panic(expected = "the decision produced other events than expected")]
fn then_fails_on_other_events() {
    TestHarness::given([opened("a1", "ann"), deposited("a1", 100)])
        .when(withdraw("a1", 30))
        .then([withdrawn("a1", 31)]);
}

#[test]
#[should_panic(expected = "the decision produced other events than expected")]
fn then_fails_on_missing_events() {
    TestHarness::given([opened("a1", "ann"), deposited("a1", 100)])
        .when(withdraw("a1", 30))
        .then([]);
}

#[test]
#[should_panic(expected = "expected the decision to succeed, but it failed")]
fn then_fails_when_the_decision_is_rejected() {
    TestHarness::given([opened("a1", "ann")])
        .when(withdraw("a1", 30))
        .then([withdrawn("a1", 30)]);
}

#[test]
#[should_panic(expected = "expected the decision to fail, but it succeeded")]
fn then_err_fails_when_the_decision_succeeds() {
    TestHarness::when(open("a1")).then_err(BankError::AlreadyOpen("a1".into()));
}

#[test]
#[should_panic(expected = "the decision failed with another error than expected")]
fn then_err_fails_on_another_error() {
    TestHarness::given([opened("a1", "ann")])
        .when(withdraw("a1", 30))
        .then_err(BankError::NotOpen("a1".into()));
}

#[test]
#[should_panic(expected = "balance 0")]
fn then_assert_propagates_the_closure_panic() {
    TestHarness::given([opened("a1", "ann")])
        .when(withdraw("a1", 1))
        .then_assert(|result| {
            let _ = result.expect("balance 0");
        });
}

/// The failure message shows given, expected and actual.
#[test]
fn failure_messages_show_given_expected_and_actual() {
    let panic = std::panic::catch_unwind(|| {
        TestHarness::given([opened("a1", "ann"), deposited("a1", 100)])
            .when(withdraw("a1", 30))
            .then([withdrawn("a1", 31)]);
    })
    .expect_err("must fail");
    let message = panic.downcast_ref::<String>().expect("a formatted message");
    for part in [
        "when: Withdraw",
        "Opened { account: \"a1\", owner: \"ann\" }",
        "Deposited { account: \"a1\", amount: 100 }",
        "expected events:",
        "Withdrawn { account: \"a1\", amount: 31 }",
        "actual events:",
        "Withdrawn { account: \"a1\", amount: 30 }",
    ] {
        assert!(message.contains(part), "{part:?} missing in:\n{message}");
    }
}

// A deliberately broken event type: its codec drops `value`, and its tag uses
// a wrong key.
#[derive(Debug, Clone, PartialEq)]
enum Broken {
    Set { key: String, value: u32 },
    Mistagged { key: String },
}

impl Event for Broken {
    const SCHEMA: &'static [EventSchema] = &[
        EventSchema {
            event_type: "Set",
            tag_keys: &["key"],
        },
        EventSchema {
            event_type: "Mistagged",
            tag_keys: &["key"],
        },
    ];

    fn event_type(&self) -> EventType {
        match self {
            Broken::Set { .. } => "Set".into(),
            Broken::Mistagged { .. } => "Mistagged".into(),
        }
    }

    fn tags(&self) -> Vec<Tag> {
        match self {
            Broken::Set { key, .. } => vec![Tag::new("key", key)],
            // the bug: the schema says `key`
            Broken::Mistagged { key } => vec![Tag::new("kee", key)],
        }
    }

    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        match self {
            Broken::Set { key, .. } | Broken::Mistagged { key } => Ok(key.clone().into_bytes()),
        }
    }

    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, CodecError> {
        let key =
            String::from_utf8(payload.to_vec()).map_err(|e| CodecError::Decode(e.to_string()))?;
        match event_type {
            "Set" => Ok(Broken::Set { key, value: 0 }),
            "Mistagged" => Ok(Broken::Mistagged { key }),
            other => Err(CodecError::UnknownType(other.into())),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Seen {
    key: String,
    values: Vec<u32>,
    mistagged: usize,
}

impl dcb_core::StateQuery for Seen {
    const NAME: &'static str = "Seen";
    type Event = Broken;
    fn query(&self) -> Query {
        dcb_core::state_query_for::<Broken>(&[Tag::new("key", &self.key)])
    }
}

impl dcb_core::StateMutate for Seen {
    fn mutate(&mut self, event: Broken) {
        match event {
            Broken::Set { value, .. } => self.values.push(value),
            Broken::Mistagged { .. } => self.mistagged += 1,
        }
    }
}

struct SetValue(u32);

impl Decision for SetValue {
    type Event = Broken;
    type StateQuery = Seen;
    type Error = std::convert::Infallible;
    fn state_query(&self) -> Seen {
        Seen {
            key: "k".into(),
            values: Vec::new(),
            mistagged: 0,
        }
    }
    fn process(&self, _: &Seen) -> Result<Vec<Broken>, Self::Error> {
        Ok(vec![Broken::Set {
            key: "k".into(),
            value: self.0,
        }])
    }
}

#[test]
#[should_panic(expected = "changed through the codec")]
fn then_catches_a_lossy_codec_in_produced_events() {
    TestHarness::when(SetValue(5)).then([Broken::Set {
        key: "k".into(),
        value: 5,
    }]);
}

#[test]
fn given_events_go_through_the_codec_and_the_query() {
    let when = TestHarness::given([
        Broken::Set {
            key: "k".into(),
            value: 7,
        },
        Broken::Mistagged { key: "k".into() },
    ])
    .when(SetValue(1));
    // the value was lost by the codec, the mistagged event was not read
    assert_eq!(when.state().values, vec![0]);
    assert_eq!(when.state().mistagged, 0);
}

// A state whose event type cannot decode what the decision's enum wrote.
#[derive(Clone)]
struct Strict;

impl dcb_core::StateQuery for Strict {
    const NAME: &'static str = "Strict";
    type Event = BankEvent;
    fn query(&self) -> Query {
        Query::types(["Set"])
    }
}

impl dcb_core::StateMutate for Strict {
    fn mutate(&mut self, _: BankEvent) {}
}

struct ReadsSets;

impl Decision for ReadsSets {
    type Event = Broken;
    type StateQuery = Strict;
    type Error = std::convert::Infallible;
    fn state_query(&self) -> Strict {
        Strict
    }
    fn process(&self, _: &Strict) -> Result<Vec<Broken>, Self::Error> {
        Ok(vec![])
    }
}

#[test]
#[should_panic(expected = "cannot be folded into the state of ReadsSets")]
fn when_fails_on_a_given_event_the_state_cannot_decode() {
    TestHarness::given([Broken::Set {
        key: "k".into(),
        value: 1,
    }])
    .when(ReadsSets)
    .then([]);
}

#[test]
fn and_given_adds_events_of_another_enum() {
    // Broken events are not in the Account's query: they are skipped.
    TestHarness::given([opened("a1", "ann")])
        .and_given([Broken::Set {
            key: "a1".into(),
            value: 1,
        }])
        .when(open("a1"))
        .then_err(BankError::AlreadyOpen("a1".into()));
}

// --- ProjectionHarness ------------------------------------------------------

#[test]
fn projection_then_accepts_the_model() {
    ProjectionHarness::given([
        opened("a1", "ann"),
        deposited("a1", 10),
        opened("a2", "bob"),
        withdrawn("a1", 3),
    ])
    .then(Balances {
        balances: [("a1".to_string(), 7), ("a2".to_string(), 0)].into(),
        last_position: 4,
    });
}

#[test]
fn projection_skips_types_it_does_not_handle() {
    ProjectionHarness::given([opened("a1", "ann")])
        .and_given([Broken::Mistagged { key: "x".into() }])
        .and_given([deposited("a1", 2)])
        .then_assert(|model: &Balances| {
            assert_eq!(model.balances["a1"], 2);
            // positions count every given event, skipped ones included
            assert_eq!(model.last_position, 3);
        });
}

#[test]
fn projection_without_events_is_the_default() {
    ProjectionHarness::given(Vec::<BankEvent>::new()).then(Balances::default());
}

#[test]
#[should_panic(expected = "the read model differs from the expected one")]
fn projection_then_fails_on_another_model() {
    ProjectionHarness::given([opened("a1", "ann"), deposited("a1", 10)]).then(Balances {
        balances: [("a1".to_string(), 11)].into(),
        last_position: 2,
    });
}

// --- Scenario ---------------------------------------------------------------

#[tokio::test]
async fn scenario_checks_returned_and_stored_events() {
    let scenario = Scenario::new()
        .given([opened("a1", "ann"), deposited("a1", 100)])
        .when(withdraw("a1", 60))
        .await
        .then([withdrawn("a1", 60)])
        .when(withdraw("a1", 60))
        .await
        .then_err(BankError::InsufficientFunds {
            balance: 40,
            requested: 60,
        });
    let (head, events) = scenario
        .store()
        .read(&Query::all(), ReadOptions::forwards())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(head.map(|p| p.get()), Some(3));
    assert_eq!(
        events[2].decode::<BankEvent>().unwrap().event,
        withdrawn("a1", 60)
    );
}

#[tokio::test]
async fn scenario_tuple_and_stateless_decisions() {
    Scenario::new()
        .given([opened("a1", "ann"), opened("a2", "bob")])
        .when(Grant {
            account: "a1".into(),
            amount: 9,
        })
        .await
        .then([deposited("a1", 9)])
        .when(Transfer {
            from: "a1".into(),
            to: "a2".into(),
            amount: 9,
        })
        .await
        .then([withdrawn("a1", 9), deposited("a2", 9)]);
}

#[tokio::test]
async fn scenario_idempotency_key_replays() {
    let first = Scenario::new()
        .given([opened("a1", "ann")])
        .when_with(deposit("a1", 5), keyed("req-1"))
        .await;
    let position = first.result().unwrap().events[0].position;
    first
        .then([deposited("a1", 5)])
        .when_with(deposit("a1", 5), keyed("req-1"))
        .await
        .then_assert(|result| {
            let decided = result.unwrap();
            assert!(decided.replayed);
            assert_eq!(decided.events[0].position, position);
        })
        .when_with(deposit("a1", 5), keyed("req-1"))
        .await
        .then_replayed([deposited("a1", 5)])
        .when_with(deposit("a1", 5), keyed("req-2"))
        .await
        .then([deposited("a1", 5)]);
}

#[tokio::test]
async fn scenario_exposes_appended_records() {
    let outcome = Scenario::new()
        .given([opened("a1", "ann")])
        .when(deposit("a1", 5))
        .await;
    assert_eq!(outcome.appended_records().len(), 1);
    assert_eq!(
        outcome.appended_records()[0].tags(),
        &[Tag::new("account", "a1")]
    );
    assert_eq!(outcome.store().all_events().len(), 2);
    let _ = outcome.into_scenario();
}

#[tokio::test]
#[should_panic(expected = "the decision committed other events than expected")]
async fn scenario_then_fails_on_other_events() {
    let _ = Scenario::new()
        .given([opened("a1", "ann")])
        .when(deposit("a1", 5))
        .await
        .then([deposited("a1", 6)]);
}

#[tokio::test]
#[should_panic(expected = "expected the decision to commit, but it failed")]
async fn scenario_then_fails_on_rejection() {
    let _ = Scenario::new()
        .when(deposit("a1", 5))
        .await
        .then([deposited("a1", 5)]);
}

#[tokio::test]
#[should_panic(expected = "expected the decision to be rejected, but it committed")]
async fn scenario_then_err_fails_on_commit() {
    let _ = Scenario::new()
        .when(open("a1"))
        .await
        .then_err(BankError::AlreadyOpen("a1".into()));
}

#[tokio::test]
#[should_panic(expected = "expected the decision to be replayed, but it ran again")]
async fn scenario_then_replayed_fails_on_a_fresh_run() {
    let _ = Scenario::new()
        .given([opened("a1", "ann")])
        .when_with(deposit("a1", 5), keyed("req-1"))
        .await
        .then_replayed([deposited("a1", 5)]);
}

#[tokio::test]
#[should_panic(expected = "expected the decision to commit, but it was replayed")]
async fn scenario_then_fails_on_a_replay() {
    let _ = Scenario::new()
        .given([opened("a1", "ann")])
        .when_with(deposit("a1", 5), keyed("req-1"))
        .await
        .then([deposited("a1", 5)])
        .when_with(deposit("a1", 5), keyed("req-1"))
        .await
        .then([deposited("a1", 5)]);
}

#[tokio::test]
#[should_panic(expected = "the store holds other events than the decision returned")]
async fn scenario_then_catches_a_lossy_codec() {
    // what the maker returns is the original; what the store holds decodes
    // differently
    let _ = Scenario::new().when(SetValue(5)).await.then([Broken::Set {
        key: "k".into(),
        value: 5,
    }]);
}

#[tokio::test]
async fn scenario_reports_other_errors_in_then_assert() {
    let _ = Scenario::new()
        .when(withdraw("nobody", 1))
        .await
        .then_assert(|result| {
            assert!(matches!(
                result,
                Err(DecisionError::Rejected(BankError::NotOpen(_)))
            ))
        });
}
