//! Tags, event types and positions: the newtypes every query is built from.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A `key:value` label on an event. Queries select events by tags.
///
/// Derived from `#[id]` fields: the key is the field name, the value is the
/// field's `Display` output. The key must not contain `:`; the value may.
///
/// ```
/// use dcb_core::Tag;
/// let tag = Tag::new("cart_id", 42);
/// assert_eq!(tag.as_str(), "cart_id:42");
/// assert_eq!(tag.key(), "cart_id");
/// assert_eq!(tag.value(), "42");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tag(String);

impl Tag {
    /// A tag from a key and any displayable value.
    ///
    /// # Panics
    /// Panics when `key` is empty or contains `:`; keys come from field names,
    /// so this is a programming error. Use [`Tag::parse`] for untrusted input.
    pub fn new(key: &str, value: impl fmt::Display) -> Self {
        assert!(
            !key.is_empty() && !key.contains(':'),
            "a tag key must be non-empty and must not contain ':' (got {key:?})"
        );
        Tag(format!("{key}:{value}"))
    }

    /// Parses `key:value`, as stored.
    ///
    /// # Errors
    /// Returns an error naming the input when there is no `:` or the key is empty.
    pub fn parse(s: impl Into<String>) -> Result<Self, InvalidTag> {
        let s = s.into();
        match s.find(':') {
            Some(i) if i > 0 => Ok(Tag(s)),
            _ => Err(InvalidTag(s)),
        }
    }

    /// The whole tag, `key:value`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `:`.
    pub fn key(&self) -> &str {
        self.0.split_once(':').map(|(k, _)| k).unwrap_or(&self.0)
    }

    /// The part after the first `:`.
    pub fn value(&self) -> &str {
        self.0.split_once(':').map(|(_, v)| v).unwrap_or("")
    }

    /// Consumes the tag and returns `key:value`.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({:?})", self.0)
    }
}

/// A string that is not a valid `key:value` tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tag {0:?}: expected `key:value` with a non-empty key")]
pub struct InvalidTag(pub String);

/// The stable name of an event type, as stored in the log.
///
/// Defaults to the enum variant's name; rename it with `#[event(rename = "...")]`
/// so refactoring Rust code never changes stored data.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventType(Cow<'static, str>);

impl EventType {
    /// An event type from a static name (what the derive generates).
    pub const fn from_static(name: &'static str) -> Self {
        EventType(Cow::Borrowed(name))
    }

    /// An event type from a runtime string (what a store reads back).
    pub fn new(name: impl Into<String>) -> Self {
        EventType(Cow::Owned(name.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&'static str> for EventType {
    fn from(s: &'static str) -> Self {
        EventType::from_static(s)
    }
}

impl From<String> for EventType {
    fn from(s: String) -> Self {
        EventType::new(s)
    }
}

impl PartialEq<str> for EventType {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for EventType {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventType({:?})", self.as_str())
    }
}

/// The place of an event in the log: unique, strictly increasing in commit
/// order, starting at 1, with no gaps visible to readers.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// The first position a store assigns.
    pub const FIRST: Position = Position(1);

    /// The number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The position after this one.
    pub const fn next(self) -> Position {
        Position(self.0 + 1)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u64> for Position {
    fn from(v: u64) -> Self {
        Position(v)
    }
}
