//! Derive macros for [dcb](https://docs.rs/dcb-core): `#[derive(Event)]` and
//! `#[derive(StateQuery)]`.
//!
//! Do not depend on this crate directly: `dcb-core` re-exports both derives
//! under the names of the traits they implement (`dcb_core::Event`,
//! `dcb_core::StateQuery`), and the generated code only refers to
//! `::dcb_core` paths.
//!
//! # `#[derive(Event)]`
//!
//! Implements `dcb_core::Event` for an enum whose variants are event types.
//!
//! ```
//! use dcb_core::{Event, EventSchema, Tag};
//!
//! fn no_fingerprint() -> String {
//!     "none".to_owned()
//! }
//!
//! #[derive(Event, Debug, Clone, PartialEq)]
//! #[stream(CartItems, [ItemAdded, ItemRemoved])]
//! pub enum CartEvent {
//!     /// Stored as "CartCreated", whatever the variant is called in Rust.
//!     #[event(rename = "CartCreated")]
//!     Created {
//!         #[id]
//!         cart_id: String,
//!     },
//!     ItemAdded {
//!         #[id]
//!         cart_id: String,
//!         #[id]
//!         sku: u64,
//!         quantity: u32,
//!         /// Added later: payloads written before it still decode.
//!         #[serde(default = "no_fingerprint")]
//!         fingerprint: String,
//!     },
//!     ItemRemoved {
//!         #[id]
//!         cart_id: String,
//!         #[id]
//!         sku: u64,
//!     },
//!     /// A unit variant: its payload is `{}`.
//!     Cleared,
//! }
//!
//! let added = CartEvent::ItemAdded {
//!     cart_id: "c1".into(),
//!     sku: 42,
//!     quantity: 2,
//!     fingerprint: "f".into(),
//! };
//! assert_eq!(added.event_type(), "ItemAdded");
//! assert_eq!(added.tags(), vec![Tag::new("cart_id", "c1"), Tag::new("sku", 42)]);
//! assert_eq!(
//!     CartEvent::SCHEMA[0],
//!     EventSchema { event_type: "CartCreated", tag_keys: &["cart_id"] }
//! );
//!
//! // The payload is the fields as a JSON object (the default codec).
//! let bytes = added.encode()?;
//! assert_eq!(CartEvent::decode("ItemAdded", &bytes)?, added);
//! let old = br#"{"cart_id":"c1","sku":42,"quantity":2}"#;
//! assert!(matches!(
//!     CartEvent::decode("ItemAdded", old)?,
//!     CartEvent::ItemAdded { fingerprint, .. } if fingerprint == "none"
//! ));
//!
//! // The `#[stream]` sub-enum converts both ways.
//! let sub = CartItems::try_from(added.clone()).expect("ItemAdded is in CartItems");
//! assert_eq!(CartEvent::from(sub), added);
//! assert!(CartItems::try_from(CartEvent::Cleared).is_err());
//! # Ok::<(), dcb_core::CodecError>(())
//! ```
//!
//! Attributes:
//!
//! | where | attribute | meaning |
//! |---|---|---|
//! | enum | `#[event(codec = path::To::Codec)]` | the [`Codec`](https://docs.rs/dcb-core) type for payloads (default `dcb_core::JsonCodec`) |
//! | enum | `#[event(types = Name, tags = Name)]` | names of the generated enums of event types and tag keys (default `{Enum}Type`, `{Enum}Tag`) |
//! | enum | `#[stream(Name, [VariantA, VariantB])]` (repeatable) | generates `enum Name` with those variants (see below) |
//! | variant | `#[event(rename = "Name")]` | the stored type name (default: the variant's name); names must be unique |
//! | variant | `#[event(alias = "Old")]` (repeatable) | an older stored name this variant also reads (same payload shape, or one `#[serde]` field attributes absorb) |
//! | variant | `#[event(upcast(from = "Old", with = path))]` (repeatable) | an older stored name whose payload `path: fn(&[u8]) -> Result<Vec<u8>, CodecError>` rewrites into the current shape first |
//! | field | `#[id]` | the field becomes tags `field_name:value` (value via `Display`) |
//! | field | `#[id(key = "account")]` | the field becomes tags `account:value`: another key than its name (e.g. `from` and `to` both tag `account`); a key is a lower-case identifier |
//! | field | `#[serde(...)]` | serde field attributes, applied to the payload |
//!
//! Next to the enum, with its visibility, the derive generates two enums for
//! writing queries the compiler checks (a misspelt name is a compile error,
//! not a query that silently matches nothing):
//!
//! - `{Enum}Type`, one variant per event type (`CartEventType::ItemAdded`),
//!   convertible into `dcb_core::EventType`:
//!   `Query::types([CartEventType::ItemAdded])`;
//! - `{Enum}Tag`, one variant per tag key (`CartEventTag::CartId`), with
//!   `.of(value)` building the tag: `CartEventTag::CartId.of("c1")`.
//!
//! Aliases and upcasts are how stored data outlives renamed or reshaped
//! events: new events are always written under the current name, while
//! `decode`, `SCHEMA` and so every query over the enum also cover the old
//! names.
//!
//! - Variants have named fields or none; the field names are the payload's
//!   keys. Tuple variants and generic enums are rejected.
//! - An `#[id]` field of type `Option<T>` gives zero or one tag, `Vec<T>` one
//!   tag per element, any other type exactly one tag and must implement
//!   `Display` (`String`, `Uuid`, integers, displayable newtypes). Floats,
//!   `bool`, references, tuples, arrays and nested `Option`/`Vec` are
//!   rejected at compile time.
//! - `SCHEMA` lists every variant in declaration order with the keys of its
//!   `#[id]` fields.
//! - The payload is written through private shadow structs that derive serde,
//!   so the enum itself needs no `Serialize`/`Deserialize`. Field attributes
//!   such as `rename`, `alias`, `default`, `default = "path"`, `flatten`,
//!   `skip_serializing_if`, `serialize_with`, `deserialize_with` and `with`
//!   work as usual; `borrow` is rejected (decoded events own their data).
//!   On a variant, `#[serde(rename_all = "...")]` and
//!   `#[serde(deny_unknown_fields)]` apply to its payload.
//! - A unit variant encodes as an empty map (`{}` in JSON) and also decodes
//!   from an empty or `null` payload.
//! - `decode` of a type name the enum does not hold returns
//!   `CodecError::UnknownType`.
//!
//! `#[stream(Name, [A, B])]` generates, next to the enum and with the same
//! visibility, `enum Name` holding just the listed variants (in list order)
//! with the same fields, type names, tags and payloads, deriving `Debug` and
//! `Clone` and implementing `Event` with the same codec. It also implements
//! `From<Name>` for the parent and `TryFrom<Parent>` for `Name`, whose error
//! is the parent event itself when it is not in the stream. States usually
//! fold such a stream.
//!
//! # `#[derive(StateQuery)]`
//!
//! Implements `dcb_core::StateQuery` for a struct with named fields: which
//! events the state needs. The fold itself is a hand-written
//! `dcb_core::StateMutate`.
//!
//! ```
//! use dcb_core::{Event, Query, QueryItem, StateMutate, StateQuery};
//!
//! #[derive(Event, Debug, Clone)]
//! #[stream(CartItems, [ItemAdded, Cleared])]
//! pub enum CartEvent {
//!     ItemAdded {
//!         #[id]
//!         cart_id: String,
//!         sku: u64,
//!     },
//!     Cleared {
//!         #[id]
//!         cart_id: String,
//!     },
//!     PricesChanged,
//! }
//!
//! #[derive(StateQuery)]
//! #[state_query(CartItems, rename = "CartItems")]
//! struct CartItemsState {
//!     #[id]
//!     cart_id: String,
//!     skus: Vec<u64>,
//! }
//!
//! impl StateMutate for CartItemsState {
//!     fn mutate(&mut self, event: CartItems) {
//!         match event {
//!             CartItems::ItemAdded { sku, .. } => self.skus.push(sku),
//!             CartItems::Cleared { .. } => self.skus.clear(),
//!         }
//!     }
//! }
//!
//! let state = CartItemsState { cart_id: "c1".into(), skus: vec![] };
//! assert_eq!(CartItemsState::NAME, "CartItems");
//! assert_eq!(
//!     state.query(),
//!     Query::from_items([QueryItem::new()
//!         .types([CartEventType::ItemAdded, CartEventType::Cleared])
//!         .tags([CartEventTag::CartId.of("c1")])])
//! );
//! ```
//!
//! Attributes:
//!
//! | where | attribute | meaning |
//! |---|---|---|
//! | struct | `#[state_query(Stream)]` (required) | the event enum or `#[stream]` the state folds (`type Event`) |
//! | struct | `#[state_query(Stream, rename = "Name")]` | sets `NAME` (default: the struct's name) |
//! | field | `#[id]` / `#[id(key = "..")]` | the state's ids: the query asks each event type for those of these tags it carries |
//!
//! An id whose key no event type of the stream carries is a compile error
//! (it would filter nothing, and the state would read every boundary's
//! events).
//!
//! `query()` is `dcb_core::state_query_for::<Stream>(&[Tag::new("field", &self.field), ..])`:
//! one query item per group of event types carrying the same subset of the
//! ids, so an event type without a given id is not filtered by it. A state's
//! `#[id]` fields are single values (no `Option`/`Vec`) that implement
//! `Display`. Generic structs are supported.
#![warn(missing_docs)]

mod attr;
mod ctxt;
mod event;
mod state_query;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Implements `dcb_core::Event` for an enum: see the crate docs.
///
/// Use it as `dcb_core::Event`.
#[proc_macro_derive(Event, attributes(event, id, stream, serde))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    event::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Implements `dcb_core::StateQuery` for a struct: see the crate docs.
///
/// Use it as `dcb_core::StateQuery`.
#[proc_macro_derive(StateQuery, attributes(state_query, id))]
pub fn derive_state_query(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    state_query::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Runs the README's example as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
