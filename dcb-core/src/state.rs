//! States a decision reads: a query over a sub-stream of events and a fold.

use crate::event::{DecodeError, Event, Sequenced, SequencedEvent};
use crate::query::{Query, QueryItem};
use crate::tag::{EventType, Tag};

/// A state built from events: it says which events it needs ([`StateQuery::query`])
/// and, through [`StateMutate`], how each one changes it.
///
/// Implement it with `#[derive(StateQuery)]` and `#[state_query(Stream)]`:
/// the query asks for every event type of `Stream`, each tagged with those of
/// the state's `#[id]` fields that the event type carries. A state value is
/// created with its ids filled in (usually by the decision) and folded from
/// there.
pub trait StateQuery: Send + Sync + 'static {
    /// A stable name, used in snapshot keys and traces.
    const NAME: &'static str;

    /// The events this state folds (usually a `#[stream]` sub-enum).
    type Event: Event;

    /// The events this state needs.
    fn query(&self) -> Query;
}

/// How events change a state: the fold.
pub trait StateMutate: StateQuery {
    /// Applies one event.
    fn mutate(&mut self, event: Self::Event);
}

/// A fold that needs more than each event's payload: its position, tags or
/// metadata. Implement it instead of [`StateMutate`] (every `StateMutate`
/// state is a `SequencedMutate` already, through a blanket impl), and the
/// state can be read by decisions, alone or in a tuple, like any other.
///
/// ```
/// use dcb_core::{Event, Position, Sequenced, SequencedMutate, StateQuery};
///
/// #[derive(Event, Debug, Clone)]
/// enum PriceEvent {
///     PriceChanged { #[id] product: String, price: u32 },
/// }
///
/// /// Where the product's price last changed.
/// #[derive(StateQuery, Clone)]
/// #[state_query(PriceEvent)]
/// struct LastChange { #[id] product: String, at: Option<Position> }
///
/// impl SequencedMutate for LastChange {
///     fn mutate(&mut self, event: Sequenced<PriceEvent>) {
///         self.at = Some(event.position);
///     }
/// }
/// ```
pub trait SequencedMutate: StateQuery {
    /// Applies one event with everything the store keeps about it.
    fn mutate(&mut self, event: Sequenced<Self::Event>);
}

impl<S: StateMutate> SequencedMutate for S {
    fn mutate(&mut self, event: Sequenced<Self::Event>) {
        StateMutate::mutate(self, event.event)
    }
}

/// Builds the query of a state over event enum `E` with the given id tags:
/// one item per group of event types that carry the same subset of those tags.
///
/// This is what `#[derive(StateQuery)]` calls; it is public for hand-written
/// states.
///
/// ```
/// use dcb_core::{state_query_for, Event, EventSchema, EventType, Tag, CodecError, Query};
/// # struct Ev;
/// # impl Event for Ev {
/// #     const SCHEMA: &'static [EventSchema] = &[
/// #         EventSchema { event_type: "Opened", tag_keys: &["account"] },
/// #         EventSchema { event_type: "RatesChanged", tag_keys: &[] },
/// #     ];
/// #     fn event_type(&self) -> EventType { unimplemented!() }
/// #     fn tags(&self) -> Vec<Tag> { vec![] }
/// #     fn encode(&self) -> Result<Vec<u8>, CodecError> { Ok(vec![]) }
/// #     fn decode(_: &str, _: &[u8]) -> Result<Self, CodecError> { Ok(Ev) }
/// # }
/// let q = state_query_for::<Ev>(&[Tag::new("account", "a1")]);
/// assert!(q.matches("Opened", &[Tag::new("account", "a1")]));
/// assert!(!q.matches("Opened", &[Tag::new("account", "a2")]));
/// // a type without the `account` tag is read whole
/// assert!(q.matches("RatesChanged", &[]));
/// ```
pub fn state_query_for<E: Event>(ids: &[Tag]) -> Query {
    let mut items: Vec<QueryItem> = Vec::new();
    for schema in E::SCHEMA {
        let tags: Vec<Tag> = ids
            .iter()
            .filter(|t| schema.tag_keys.contains(&t.key()))
            .cloned()
            .collect();
        let ty = EventType::from_static(schema.event_type);
        match items.iter_mut().find(|i| i.tags == tags) {
            Some(item) => {
                if !item.types.contains(&ty) {
                    item.types.push(ty)
                }
            }
            None => items.push(QueryItem {
                types: vec![ty],
                tags,
            }),
        }
    }
    Query::from_items(items)
}

/// What a decision reads: one state, a tuple of states, or `()` for a
/// stateless decision.
///
/// The queries of a tuple's members are unioned into one read; each event is
/// folded into every member whose own query matches it.
pub trait DecisionState: Clone + Send + Sync + 'static {
    /// One query per member, in order.
    fn queries(&self) -> Vec<Query>;

    /// Folds `event` into the members whose query (from `queries`, same order)
    /// matches it.
    ///
    /// # Errors
    /// The event does not decode as a member's event type.
    fn apply(&mut self, event: &SequencedEvent, queries: &[Query]) -> Result<(), DecodeError>;

    /// The union of the members' queries.
    fn query(&self) -> Query {
        self.queries()
            .into_iter()
            .fold(Query::none(), |acc, q| acc.union(q))
    }

    /// The key snapshots of this state are saved under, or `None` (the
    /// default) when it is not snapshotted. Wrap a state in
    /// [`Snapshotted`](crate::Snapshotted) rather than implementing this.
    ///
    /// The key must change whenever the query or the meaning of the encoded
    /// state does (see [`snapshot_key`](crate::snapshot_key)).
    fn snapshot_key(&self) -> Option<String> {
        None
    }

    /// The state, encoded for a snapshot; `None` when it is not snapshotted
    /// or does not encode.
    fn encode_snapshot(&self) -> Option<Vec<u8>> {
        None
    }

    /// Replaces this state (as built by the decision, nothing folded yet)
    /// with the one encoded in `bytes`. Returns false, leaving the state
    /// untouched, when the bytes do not decode as a state over the same
    /// query: a snapshot is applied whole or not at all.
    fn restore_snapshot(&mut self, bytes: &[u8]) -> bool {
        let _ = bytes;
        false
    }
}

fn fold_member<S: SequencedMutate>(
    state: &mut S,
    event: &SequencedEvent,
) -> Result<(), DecodeError> {
    SequencedMutate::mutate(state, event.decode::<S::Event>()?);
    Ok(())
}

impl<S: SequencedMutate + Clone> DecisionState for S {
    fn queries(&self) -> Vec<Query> {
        vec![self.query()]
    }

    fn apply(&mut self, event: &SequencedEvent, queries: &[Query]) -> Result<(), DecodeError> {
        if queries[0].matches(event.event_type().as_str(), event.tags()) {
            fold_member(self, event)?;
        }
        Ok(())
    }
}

impl DecisionState for () {
    fn queries(&self) -> Vec<Query> {
        Vec::new()
    }

    fn apply(&mut self, _event: &SequencedEvent, _queries: &[Query]) -> Result<(), DecodeError> {
        Ok(())
    }
}

macro_rules! tuple_state {
    ($($name:ident $idx:tt),+) => {
        impl<$($name: SequencedMutate + Clone),+> DecisionState for ($($name,)+) {
            fn queries(&self) -> Vec<Query> {
                vec![$(self.$idx.query()),+]
            }

            fn apply(&mut self, event: &SequencedEvent, queries: &[Query]) -> Result<(), DecodeError> {
                $(
                    if queries[$idx].matches(event.event_type().as_str(), event.tags()) {
                        fold_member(&mut self.$idx, event)?;
                    }
                )+
                Ok(())
            }
        }
    };
}

tuple_state!(A 0, B 1);
tuple_state!(A 0, B 1, C 2);
tuple_state!(A 0, B 1, C 2, D 3);
tuple_state!(A 0, B 1, C 2, D 3, E 4);
