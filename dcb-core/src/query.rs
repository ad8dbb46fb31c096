//! Queries over tagged events and the append condition built from them.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::tag::{EventType, Position, Tag};

/// One alternative of a [`Query`]: an event matches when its type is one of
/// `types` (or `types` is empty) **and** it carries every tag in `tags`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueryItem {
    /// Accepted types; empty accepts any type.
    pub types: Vec<EventType>,
    /// Required tags; all must be present.
    pub tags: Vec<Tag>,
}

impl QueryItem {
    /// An item that matches every event.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds accepted types.
    pub fn types<I, T>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<EventType>,
    {
        self.types.extend(types.into_iter().map(Into::into));
        self
    }

    /// An item over every event type of `E` (an event enum or one of its
    /// `#[stream]`s), with any tags.
    pub fn of<E: Event>() -> Self {
        QueryItem::new().types(E::event_types())
    }

    /// Adds required tags.
    pub fn tags<I>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = Tag>,
    {
        self.tags.extend(tags);
        self
    }

    /// Whether an event of `event_type` with `tags` matches this item.
    pub fn matches(&self, event_type: &str, tags: &[Tag]) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t.as_str() == event_type))
            && self.tags.iter().all(|t| tags.contains(t))
    }
}

/// A selection of events: a list of [`QueryItem`]s, OR-ed.
///
/// [`Query::all`] matches every event; [`Query::none`] (no items) matches none,
/// which is what a stateless decision reads.
///
/// Name types and tags through the enums `#[derive(Event)]` generates, so
/// that a misspelt one is a compile error rather than a query that silently
/// matches nothing:
///
/// ```
/// use dcb_core::{Event, Query, QueryItem, Tag};
///
/// #[derive(Event, Debug)]
/// enum BankEvent {
///     #[event(rename = "AccountOpened")]
///     Opened { #[id] account: String },
///     Deposited { #[id] account: String, amount: u64 },
///     Withdrawn { #[id] account: String, #[id] by: String, amount: u64 },
/// }
///
/// let q = Query::from_items([
///     QueryItem::new()
///         .types([BankEventType::Deposited, BankEventType::Withdrawn])
///         .tags([BankEventTag::Account.of("a1")]),
///     QueryItem::new().types([BankEventType::Opened]),
/// ]);
/// let withdrawn = |account: &str| BankEvent::Withdrawn {
///     account: account.into(),
///     by: "bob".into(),
///     amount: 5,
/// };
/// assert!(q.matches_event(&withdrawn("a1")));
/// assert!(!q.matches_event(&withdrawn("a2")));
/// assert!(q.matches("AccountOpened", &[]));
/// assert!(Query::all().matches("Anything", &[]));
/// assert!(!Query::none().matches("Anything", &[]));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Query {
    items: Vec<QueryItem>,
}

impl Query {
    /// A query that matches every event.
    pub fn all() -> Self {
        Query {
            items: vec![QueryItem::new()],
        }
    }

    /// A query that matches no event.
    pub fn none() -> Self {
        Query { items: Vec::new() }
    }

    /// A query from items (OR-ed).
    pub fn from_items(items: impl IntoIterator<Item = QueryItem>) -> Self {
        Query {
            items: items.into_iter().collect(),
        }
    }

    /// Events of any of `types`.
    pub fn types<I, T>(types: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<EventType>,
    {
        Query::from_items([QueryItem::new().types(types)])
    }

    /// Events of every type of `E` (an event enum or one of its
    /// `#[stream]`s): what a listener of `E` reads by default.
    pub fn of<E: Event>() -> Self {
        Query::from_items([QueryItem::of::<E>()])
    }

    /// Events carrying all of `tags`.
    pub fn tags(tags: impl IntoIterator<Item = Tag>) -> Self {
        Query::from_items([QueryItem::new().tags(tags)])
    }

    /// The items.
    pub fn items(&self) -> &[QueryItem] {
        &self.items
    }

    /// Whether this query matches nothing.
    pub fn is_none(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether this query matches everything (some item has no types and no tags).
    pub fn is_all(&self) -> bool {
        self.items
            .iter()
            .any(|i| i.types.is_empty() && i.tags.is_empty())
    }

    /// Adds an item (OR).
    pub fn or(mut self, item: QueryItem) -> Self {
        self.items.push(item);
        self
    }

    /// The union of two queries, dropping duplicate items.
    pub fn union(mut self, other: Query) -> Self {
        for item in other.items {
            if !self.items.contains(&item) {
                self.items.push(item);
            }
        }
        self
    }

    /// Whether an event of `event_type` with `tags` matches.
    pub fn matches(&self, event_type: &str, tags: &[Tag]) -> bool {
        self.items.iter().any(|i| i.matches(event_type, tags))
    }

    /// Whether `event` matches (by its type and tags; nothing is encoded).
    pub fn matches_event<E: Event>(&self, event: &E) -> bool {
        self.matches(event.event_type().as_str(), &event.tags())
    }

    /// This query without `types`: they are taken out of every item that
    /// lists types, and an item left with none is dropped (an item of any
    /// type stays as it is). Handy for a decision's narrower
    /// [`validation_query`](crate::Decision::validation_query): the state's
    /// query minus the events that cannot invalidate the decision.
    ///
    /// ```
    /// use dcb_core::{Event, Query, QueryItem};
    ///
    /// #[derive(Event, Debug)]
    /// enum BankEvent {
    ///     Deposited { #[id] account: String, amount: u64 },
    ///     Withdrawn { #[id] account: String, amount: u64 },
    /// }
    ///
    /// let state = Query::from_items([QueryItem::of::<BankEvent>()
    ///     .tags([BankEventTag::Account.of("a1")])]);
    /// let check = state.without_types([BankEventType::Deposited]);
    /// let deposit = BankEvent::Deposited { account: "a1".into(), amount: 1 };
    /// let withdrawal = BankEvent::Withdrawn { account: "a1".into(), amount: 1 };
    /// assert!(check.matches_event(&withdrawal));
    /// assert!(!check.matches_event(&deposit));
    /// ```
    pub fn without_types<I, T>(self, types: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<EventType>,
    {
        let removed: Vec<EventType> = types.into_iter().map(Into::into).collect();
        let items = self
            .items
            .into_iter()
            .filter_map(|mut item| {
                if item.types.is_empty() {
                    return Some(item);
                }
                item.types.retain(|t| !removed.contains(t));
                (!item.types.is_empty()).then_some(item)
            })
            .collect();
        Query { items }
    }
}

impl FromIterator<QueryItem> for Query {
    fn from_iter<T: IntoIterator<Item = QueryItem>>(iter: T) -> Self {
        Query::from_items(iter)
    }
}

/// The condition of a conditional append: fail if any event matching
/// `fail_if_events_match` was recorded after `after` (or at all, when `after`
/// is `None`, which is how uniqueness checks are written).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppendCondition {
    /// Events that must not exist (after `after`).
    pub fail_if_events_match: Query,
    /// The position the decision read up to; `None` checks the whole log.
    pub after: Option<Position>,
}

impl AppendCondition {
    /// Fails if any event matches `query`, anywhere in the log.
    pub fn never_matched(query: Query) -> Self {
        AppendCondition {
            fail_if_events_match: query,
            after: None,
        }
    }

    /// Fails if an event matching `query` was recorded after `after`.
    pub fn not_after(query: Query, after: Option<Position>) -> Self {
        AppendCondition {
            fail_if_events_match: query,
            after,
        }
    }
}
