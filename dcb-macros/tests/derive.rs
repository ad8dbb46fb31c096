//! Runtime tests of `#[derive(Event)]` and `#[derive(StateQuery)]`, used the
//! way applications use them: through `dcb_core`.

use std::fmt;

use dcb_core::{
    Codec, CodecError, Event, EventSchema, Query, QueryItem, StateMutate, StateQuery, Tag,
};
use uuid::Uuid;

/// A displayable newtype id.
#[derive(Debug, Clone, PartialEq)]
pub struct Sku(pub String);

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sku-{}", self.0)
    }
}

impl serde::Serialize for Sku {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Sku {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Sku)
    }
}

fn default_fingerprint() -> String {
    "none".to_owned()
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn upper<S: serde::Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_uppercase())
}

fn lower<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(|s| s.to_lowercase())
}

/// Cents stored as a string.
mod as_string {
    pub fn serialize<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Event, Debug, Clone, PartialEq)]
#[stream(CartLifecycle, [Created, Cleared])]
#[stream(CartItems, [ItemAdded, Created])]
pub enum CartEvent {
    /// A cart was opened.
    #[event(rename = "CartCreated")]
    Created {
        #[id]
        cart_id: Uuid,
    },
    ItemAdded {
        #[id]
        cart_id: Uuid,
        #[id]
        sku: Sku,
        #[serde(rename = "qty", alias = "quantity")]
        quantity: u32,
        #[serde(default = "default_fingerprint")]
        fingerprint: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    Cleared,
    Empty {},
    Tagged {
        #[id]
        order: u64,
        #[id]
        coupon: Option<String>,
        #[id]
        r#ref: Vec<String>,
    },
    Custom {
        #[serde(serialize_with = "upper", deserialize_with = "lower")]
        name: String,
        #[serde(with = "as_string")]
        cents: u64,
        #[serde(skip_serializing_if = "is_zero", default)]
        count: u32,
    },
}

fn cart() -> Uuid {
    Uuid::from_u128(0x1234)
}

fn all_events() -> Vec<CartEvent> {
    vec![
        CartEvent::Created { cart_id: cart() },
        CartEvent::ItemAdded {
            cart_id: cart(),
            sku: Sku("a1".into()),
            quantity: 2,
            fingerprint: "fp".into(),
            note: Some("gift".into()),
        },
        CartEvent::ItemAdded {
            cart_id: cart(),
            sku: Sku("a2".into()),
            quantity: 1,
            fingerprint: "fp".into(),
            note: None,
        },
        CartEvent::Cleared,
        CartEvent::Empty {},
        CartEvent::Tagged {
            order: 7,
            coupon: None,
            r#ref: vec![],
        },
        CartEvent::Tagged {
            order: 7,
            coupon: Some("XMAS".into()),
            r#ref: vec!["a".into(), "b".into()],
        },
        CartEvent::Custom {
            name: "bob".into(),
            cents: 1234,
            count: 0,
        },
    ]
}

fn json(e: &impl Event) -> serde_json::Value {
    serde_json::from_slice(&e.encode().unwrap()).unwrap()
}

#[test]
fn type_names_default_to_the_variant_and_can_be_renamed() {
    assert_eq!(
        CartEvent::Created { cart_id: cart() }.event_type(),
        "CartCreated"
    );
    assert_eq!(CartEvent::Cleared.event_type(), "Cleared");
    assert_eq!(CartEvent::Empty {}.event_type(), "Empty");
    let names: Vec<String> = CartEvent::event_types()
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(
        names,
        [
            "CartCreated",
            "ItemAdded",
            "Cleared",
            "Empty",
            "Tagged",
            "Custom"
        ]
    );
    assert!(CartEvent::handles("CartCreated"));
    assert!(!CartEvent::handles("Created"));
}

#[test]
fn schema_lists_every_variant_with_its_tag_keys() {
    assert_eq!(
        CartEvent::SCHEMA,
        &[
            EventSchema {
                event_type: "CartCreated",
                tag_keys: &["cart_id"]
            },
            EventSchema {
                event_type: "ItemAdded",
                tag_keys: &["cart_id", "sku"]
            },
            EventSchema {
                event_type: "Cleared",
                tag_keys: &[]
            },
            EventSchema {
                event_type: "Empty",
                tag_keys: &[]
            },
            EventSchema {
                event_type: "Tagged",
                tag_keys: &["order", "coupon", "ref"]
            },
            EventSchema {
                event_type: "Custom",
                tag_keys: &[]
            },
        ]
    );
}

#[test]
fn tags_from_uuid_newtype_integer_option_and_vec() {
    let events = all_events();
    let cart_tag = Tag::new("cart_id", cart());
    assert_eq!(events[0].tags(), vec![cart_tag.clone()]);
    assert_eq!(
        events[1].tags(),
        vec![cart_tag, Tag::parse("sku:sku-a1").unwrap()]
    );
    assert!(events[3].tags().is_empty());
    assert_eq!(events[5].tags(), vec![Tag::new("order", 7u64)]);
    assert_eq!(
        events[6].tags(),
        vec![
            Tag::new("order", 7u64),
            Tag::new("coupon", "XMAS"),
            Tag::new("ref", "a"),
            Tag::new("ref", "b"),
        ]
    );
}

#[test]
fn string_ids_become_tags() {
    #[derive(Event, Debug)]
    enum AccountEvent {
        Opened {
            #[id]
            account: String,
        },
    }
    let e = AccountEvent::Opened {
        account: "acc-1".into(),
    };
    assert_eq!(e.tags(), vec![Tag::new("account", "acc-1")]);
}

#[test]
fn every_variant_shape_round_trips() {
    for e in all_events() {
        let bytes = e.encode().unwrap();
        let back = CartEvent::decode(e.event_type().as_str(), &bytes).unwrap();
        assert_eq!(back, e, "payload {}", String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn payload_is_the_fields_as_a_json_object() {
    let events = all_events();
    assert_eq!(json(&events[0]), serde_json::json!({ "cart_id": cart() }));
    assert_eq!(
        json(&events[1]),
        serde_json::json!({
            "cart_id": cart(),
            "sku": "a1",
            "qty": 2,
            "fingerprint": "fp",
            "note": "gift",
        })
    );
    // skip_serializing_if
    assert!(json(&events[2]).get("note").is_none());
    assert_eq!(json(&CartEvent::Cleared), serde_json::json!({}));
    assert_eq!(json(&CartEvent::Empty {}), serde_json::json!({}));
    // raw identifiers lose their prefix
    assert_eq!(json(&events[5])["ref"], serde_json::json!([]));
    // serialize_with, with, skip_serializing_if with a user function
    assert_eq!(
        json(&events[7]),
        serde_json::json!({ "name": "BOB", "cents": "1234" })
    );
}

#[test]
fn field_serde_attributes_apply_when_decoding() {
    // alias, deserialize_with, `with`, `default`
    let e = CartEvent::decode("Custom", br#"{"name":"ALICE","cents":"99"}"#).unwrap();
    assert_eq!(
        e,
        CartEvent::Custom {
            name: "alice".into(),
            cents: 99,
            count: 0
        }
    );
    let e = CartEvent::decode(
        "ItemAdded",
        format!(
            r#"{{"cart_id":"{}","sku":"x","quantity":3,"fingerprint":"f"}}"#,
            cart()
        )
        .as_bytes(),
    )
    .unwrap();
    assert!(matches!(
        e,
        CartEvent::ItemAdded {
            quantity: 3,
            note: None,
            ..
        }
    ));
}

#[test]
fn old_payload_without_a_defaulted_field_still_decodes() {
    // Written before `fingerprint` existed.
    let old = format!(r#"{{"cart_id":"{}","sku":"a1","qty":2}}"#, cart());
    let e = CartEvent::decode("ItemAdded", old.as_bytes()).unwrap();
    assert_eq!(
        e,
        CartEvent::ItemAdded {
            cart_id: cart(),
            sku: Sku("a1".into()),
            quantity: 2,
            fingerprint: "none".into(),
            note: None,
        }
    );
}

#[test]
fn unit_variants_decode_from_an_empty_object_null_or_nothing() {
    for payload in [&b"{}"[..], b"null", b"", b"  "] {
        assert_eq!(
            CartEvent::decode("Cleared", payload).unwrap(),
            CartEvent::Cleared
        );
    }
    assert!(matches!(
        CartEvent::decode("Cleared", b"42"),
        Err(CodecError::Decode(_))
    ));
}

#[test]
fn unknown_type_and_bad_payload_errors() {
    assert_eq!(
        CartEvent::decode("Nope", b"{}"),
        Err(CodecError::UnknownType("Nope".into()))
    );
    // the variant name is not the stored name once renamed
    assert_eq!(
        CartEvent::decode("Created", b"{}"),
        Err(CodecError::UnknownType("Created".into()))
    );
    match CartEvent::decode("CartCreated", b"{}") {
        Err(CodecError::Decode(msg)) => assert!(msg.contains("cart_id"), "{msg}"),
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[test]
fn stream_converts_to_and_from_the_parent() {
    let created = CartEvent::Created { cart_id: cart() };
    let sub = CartLifecycle::try_from(created.clone()).unwrap();
    assert!(matches!(sub, CartLifecycle::Created { cart_id } if cart_id == cart()));
    assert_eq!(CartEvent::from(sub), created);

    let cleared = CartLifecycle::try_from(CartEvent::Cleared).unwrap();
    assert!(matches!(cleared, CartLifecycle::Cleared));
    assert_eq!(CartEvent::from(cleared.clone()), CartEvent::Cleared);

    // not in the stream: the event comes back
    let other = all_events().remove(1);
    assert_eq!(CartLifecycle::try_from(other.clone()).unwrap_err(), other);
}

#[test]
fn stream_has_the_parents_names_tags_and_payloads() {
    assert_eq!(
        CartLifecycle::SCHEMA,
        &[CartEvent::SCHEMA[0], CartEvent::SCHEMA[2]]
    );
    // in the order of the `#[stream]` list
    assert_eq!(
        CartItems::SCHEMA,
        &[CartEvent::SCHEMA[1], CartEvent::SCHEMA[0]]
    );
    for e in all_events() {
        if let Ok(sub) = CartItems::try_from(e.clone()) {
            assert_eq!(sub.event_type(), e.event_type());
            assert_eq!(sub.tags(), e.tags());
            let bytes = sub.encode().unwrap();
            assert_eq!(bytes, e.encode().unwrap());
            // decodes as the parent and as the stream
            assert_eq!(
                CartEvent::decode(e.event_type().as_str(), &bytes).unwrap(),
                e
            );
            let back = CartItems::decode(e.event_type().as_str(), &bytes).unwrap();
            assert_eq!(CartEvent::from(back), e);
        }
    }
    assert_eq!(
        CartItems::decode("Cleared", b"{}").unwrap_err(),
        CodecError::UnknownType("Cleared".into())
    );
    let debug = format!("{:?}", CartLifecycle::Cleared);
    assert_eq!(debug, "Cleared");
}

#[derive(StateQuery)]
#[state_query(CartItems)]
struct CartItemsState {
    #[id]
    cart_id: Uuid,
    count: u32,
}

impl StateMutate for CartItemsState {
    fn mutate(&mut self, event: CartItems) {
        if let CartItems::ItemAdded { quantity, .. } = event {
            self.count += quantity;
        }
    }
}

#[derive(StateQuery)]
#[state_query(CartEvent, rename = "CartWithOrder")]
struct CartOrderState {
    #[id]
    cart_id: Uuid,
    #[id]
    order: u64,
}

#[test]
fn state_query_name_and_query() {
    assert_eq!(CartItemsState::NAME, "CartItemsState");
    assert_eq!(CartOrderState::NAME, "CartWithOrder");

    let mut state = CartItemsState {
        cart_id: cart(),
        count: 0,
    };
    let tag = Tag::new("cart_id", cart());
    assert_eq!(
        state.query(),
        Query::from_items([QueryItem::new()
            .types(["ItemAdded", "CartCreated"])
            .tags([tag.clone()])])
    );
    state.mutate(CartItems::try_from(all_events().remove(1)).unwrap());
    assert_eq!(state.count, 2);
}

#[test]
fn state_query_tags_each_event_type_with_the_ids_it_carries() {
    let state = CartOrderState {
        cart_id: cart(),
        order: 7,
    };
    let cart_tag = Tag::new("cart_id", cart());
    let order_tag = Tag::new("order", 7u64);
    assert_eq!(
        state.query(),
        Query::from_items([
            QueryItem::new()
                .types(["CartCreated", "ItemAdded"])
                .tags([cart_tag.clone()]),
            QueryItem::new().types(["Cleared", "Empty", "Custom"]),
            QueryItem::new().types(["Tagged"]).tags([order_tag.clone()]),
        ])
    );
    let q = state.query();
    assert!(q.matches("ItemAdded", std::slice::from_ref(&cart_tag)));
    assert!(!q.matches("ItemAdded", &[Tag::new("cart_id", "other")]));
    assert!(q.matches("Tagged", &[order_tag]));
    assert!(!q.matches("Tagged", &[cart_tag]));
}

#[derive(StateQuery)]
#[state_query(CartEvent)]
struct Generic<T: Send + Sync + 'static> {
    #[id]
    cart_id: String,
    _data: Vec<T>,
}

#[test]
fn state_query_passes_generics_through() {
    let s = Generic::<u8> {
        cart_id: "c".into(),
        _data: vec![],
    };
    assert_eq!(<Generic<u8> as StateQuery>::NAME, "Generic");
    assert!(s
        .query()
        .matches("CartCreated", &[Tag::new("cart_id", "c")]));
}

/// JSON with a version prefix, to see that the codec is the one used.
pub struct PrefixedJson;

impl Codec for PrefixedJson {
    fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
        let mut out = b"v1:".to_vec();
        out.extend(serde_json::to_vec(value).map_err(|e| CodecError::Encode(e.to_string()))?);
        Ok(out)
    }

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        let rest = bytes
            .strip_prefix(b"v1:")
            .ok_or_else(|| CodecError::Decode("missing v1: prefix".into()))?;
        serde_json::from_slice(rest).map_err(|e| CodecError::Decode(e.to_string()))
    }
}

mod codecs {
    pub use super::PrefixedJson as Prefixed;
}

#[derive(Event, Debug, PartialEq)]
#[event(codec = codecs::Prefixed)]
#[stream(Pings, [Ping])]
enum Versioned {
    Ping {
        #[id]
        n: u32,
    },
    Pong,
}

#[test]
fn custom_codec() {
    let bytes = Versioned::Ping { n: 3 }.encode().unwrap();
    assert_eq!(bytes, br#"v1:{"n":3}"#);
    assert_eq!(
        Versioned::decode("Ping", &bytes).unwrap(),
        Versioned::Ping { n: 3 }
    );
    assert!(matches!(
        Versioned::decode("Ping", br#"{"n":3}"#),
        Err(CodecError::Decode(_))
    ));
    assert_eq!(Versioned::Pong.encode().unwrap(), b"v1:{}");
    // the stream uses the same codec
    assert_eq!(Pings::Ping { n: 3 }.encode().unwrap(), bytes);
    assert_eq!(Versioned::Pong.tags(), vec![]);
}

#[test]
fn records_carry_type_tags_and_payload() {
    let record = CartEvent::Created { cart_id: cart() }.to_record().unwrap();
    assert_eq!(record.event_type, "CartCreated");
    assert_eq!(record.tags, vec![Tag::new("cart_id", cart())]);
    assert_eq!(
        record.decode::<CartEvent>().unwrap(),
        CartEvent::Created { cart_id: cart() }
    );
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Address {
    pub city: String,
    pub zip: String,
}

#[derive(Event, Debug, PartialEq)]
enum ProfileEvent {
    #[serde(rename_all = "camelCase")]
    Moved {
        #[id]
        user_id: u64,
        #[serde(flatten)]
        new_address: Address,
        moved_on: String,
    },
}

#[test]
fn variant_serde_attributes_and_flatten() {
    let e = ProfileEvent::Moved {
        user_id: 1,
        new_address: Address {
            city: "Lyon".into(),
            zip: "69001".into(),
        },
        moved_on: "2024-01-01".into(),
    };
    assert_eq!(
        json(&e),
        serde_json::json!({
            "userId": 1,
            "city": "Lyon",
            "zip": "69001",
            "movedOn": "2024-01-01",
        })
    );
    assert_eq!(
        ProfileEvent::decode("Moved", &e.encode().unwrap()).unwrap(),
        e
    );
}

#[derive(Event, Debug, PartialEq)]
enum Strict {
    #[serde(deny_unknown_fields)]
    Done {
        #[id]
        task: u64,
    },
}

#[test]
fn deny_unknown_fields_on_a_variant() {
    assert!(Strict::decode("Done", br#"{"task":1}"#).is_ok());
    assert!(matches!(
        Strict::decode("Done", br#"{"task":1,"other":2}"#),
        Err(CodecError::Decode(_))
    ));
}

/// Two fields of one event tag the same key (`#[id(key = ..)]`), and the
/// generated enums of types and keys name them for queries.
#[derive(Event, Debug, Clone, PartialEq)]
#[event(types = LedgerTypes)]
enum LedgerEvent {
    Transferred {
        #[id(key = "account")]
        from: String,
        #[id(key = "account")]
        to: String,
        amount: u64,
    },
    #[event(rename = "AccountOpened")]
    Opened {
        #[id]
        account: String,
    },
}

#[test]
fn custom_tag_keys_and_typed_names() {
    let t = LedgerEvent::Transferred {
        from: "a".into(),
        to: "b".into(),
        amount: 5,
    };
    assert_eq!(
        t.tags(),
        vec![Tag::new("account", "a"), Tag::new("account", "b")]
    );
    assert_eq!(LedgerEvent::SCHEMA[0].tag_keys, &["account"]);
    assert_eq!(LedgerTypes::Opened.as_str(), "AccountOpened");
    assert_eq!(
        LedgerTypes::ALL,
        &[LedgerTypes::Transferred, LedgerTypes::Opened]
    );
    assert_eq!(LedgerEventTag::ALL, &[LedgerEventTag::Account]);
    assert_eq!(LedgerEventTag::Account.of("a"), Tag::new("account", "a"));

    let q = Query::from_items([QueryItem::new()
        .types([LedgerTypes::Transferred, LedgerTypes::Opened])
        .tags([LedgerEventTag::Account.of("b")])]);
    assert!(q.matches("Transferred", &t.tags()));
    assert!(!q.matches("Opened", &t.tags()));
    assert_eq!(
        Query::of::<LedgerEvent>(),
        Query::types(["Transferred", "AccountOpened"])
    );
}

/// A state over a custom key reads both sides of a transfer.
#[derive(StateQuery)]
#[state_query(LedgerEvent)]
struct Balance {
    #[id]
    account: String,
    balance: i64,
}

impl StateMutate for Balance {
    fn mutate(&mut self, event: LedgerEvent) {
        match event {
            LedgerEvent::Transferred { from, amount, .. } if from == self.account => {
                self.balance -= amount as i64
            }
            LedgerEvent::Transferred { amount, .. } => self.balance += amount as i64,
            LedgerEvent::Opened { .. } => {}
        }
    }
}

#[test]
fn a_state_over_a_custom_key_matches_either_field() {
    let state = Balance {
        account: "b".into(),
        balance: 0,
    };
    let t = LedgerEvent::Transferred {
        from: "a".into(),
        to: "b".into(),
        amount: 5,
    };
    assert!(state.query().matches("Transferred", &t.tags()));
}

/// The old shape of `Deposited`, stored as `MoneyDeposited` in euros.
fn deposit_v1(old: &[u8]) -> Result<Vec<u8>, CodecError> {
    let old: serde_json::Value =
        serde_json::from_slice(old).map_err(|e| CodecError::Decode(e.to_string()))?;
    let euros = old["euros"]
        .as_u64()
        .ok_or_else(|| CodecError::Decode("euros missing".into()))?;
    Ok(
        serde_json::json!({ "account": old["account"], "cents": euros * 100 })
            .to_string()
            .into_bytes(),
    )
}

#[derive(Event, Debug, Clone, PartialEq)]
enum MoneyEvent {
    #[event(upcast(from = "MoneyDeposited", with = deposit_v1))]
    Deposited {
        #[id]
        account: String,
        cents: u64,
    },
    #[event(alias = "Withdrawal", alias = "MoneyWithdrawn")]
    Withdrawn {
        #[id]
        account: String,
        cents: u64,
    },
}

#[test]
fn old_names_are_read_as_the_current_variant() {
    let old = br#"{"account":"a1","euros":3}"#;
    assert_eq!(
        MoneyEvent::decode("MoneyDeposited", old).unwrap(),
        MoneyEvent::Deposited {
            account: "a1".into(),
            cents: 300
        }
    );
    let renamed = br#"{"account":"a1","cents":5}"#;
    assert_eq!(
        MoneyEvent::decode("MoneyWithdrawn", renamed).unwrap(),
        MoneyEvent::decode("Withdrawn", renamed).unwrap()
    );
    // New events are written under the current name only.
    let event = MoneyEvent::Withdrawn {
        account: "a1".into(),
        cents: 1,
    };
    assert_eq!(event.event_type(), "Withdrawn");
    // Queries over the enum read the old names too.
    let types: Vec<String> = MoneyEvent::event_types()
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect();
    assert_eq!(
        types,
        [
            "Deposited",
            "MoneyDeposited",
            "Withdrawn",
            "Withdrawal",
            "MoneyWithdrawn"
        ]
    );
    assert_eq!(MoneyEventType::ALL.len(), 2);
    assert!(MoneyEvent::decode("MoneyDeposited", b"{}").is_err());
}
