//! `Ping`: the event and job payload the latency variants send, carrying the
//! moment it was sent (microseconds since this process's clock base), so the
//! receiving side measures send→receive without any shared map.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dcb_core::{Codec, CodecError, Event, EventSchema, EventType, JsonCodec, Tag};
use serde::{Deserialize, Serialize};

/// The event type name.
pub const PING: &str = "BenchPing";

/// One timestamped message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// When it was sent, in µs since [`base`].
    pub sent_us: u64,
    /// A sequence number (also the `ping` tag, and the Kafka key).
    pub seq: u64,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Microseconds since the clock base, now.
pub fn now_us() -> u64 {
    base().elapsed().as_micros() as u64
}

/// The time from `sent_us` to now (zero if the clock says otherwise).
pub fn since(sent_us: u64) -> Duration {
    Duration::from_micros(now_us().saturating_sub(sent_us))
}

impl Ping {
    /// A ping sent now.
    pub fn now(seq: u64) -> Ping {
        Ping {
            sent_us: now_us(),
            seq,
        }
    }
}

impl Event for Ping {
    const SCHEMA: &'static [EventSchema] = &[EventSchema {
        event_type: PING,
        tag_keys: &["ping"],
    }];

    fn event_type(&self) -> EventType {
        EventType::from_static(PING)
    }

    fn tags(&self) -> Vec<Tag> {
        vec![Tag::new("ping", self.seq)]
    }

    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        JsonCodec::encode(self)
    }

    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, CodecError> {
        match event_type {
            PING => JsonCodec::decode(payload),
            other => Err(CodecError::UnknownType(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_measures() {
        let p = Ping::now(7);
        let back = Ping::decode(PING, &p.encode().unwrap()).unwrap();
        assert_eq!(back, p);
        assert!(since(p.sent_us) < Duration::from_secs(5));
        assert!(Ping::decode("Other", b"{}").is_err());
    }
}
