//! Positions in the database: `bigint` columns hold them, 0 stands for "none
//! yet" (an empty log, a checkpoint before the first event). Every
//! conversion between [`Position`] and `i64` goes through here.

use dcb_core::Position;

/// The column value of `position` (positions past `i64::MAX` cannot be
/// stored; they saturate, which no real log reaches).
pub(crate) fn to_db(position: Position) -> i64 {
    i64::try_from(position.get()).unwrap_or(i64::MAX)
}

/// The column value of an optional position: 0 for none.
pub(crate) fn opt_to_db(position: Option<Position>) -> i64 {
    position.map_or(0, to_db)
}

/// The position a column holds: `None` for 0 (or a negative value, which
/// the framework never writes).
pub(crate) fn from_db(value: i64) -> Option<Position> {
    u64::try_from(value).ok().filter(|v| *v > 0).map(Position)
}

/// The position a column holds, 0 (none yet) included.
pub(crate) fn from_db_or_zero(value: i64) -> Position {
    Position(u64::try_from(value).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_saturates() {
        assert_eq!(from_db(to_db(Position(42))), Some(Position(42)));
        assert_eq!(from_db(0), None);
        assert_eq!(from_db(-5), None);
        assert_eq!(opt_to_db(None), 0);
        assert_eq!(to_db(Position(u64::MAX)), i64::MAX);
        assert_eq!(from_db_or_zero(-1), Position(0));
    }
}
