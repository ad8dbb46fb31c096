//! Text the framework writes into PostgreSQL on its own account (error
//! messages, park reasons, status texts, operator requests), made storable.
//!
//! PostgreSQL refuses a NUL character in `text` (SQLSTATE 22021) and in
//! `jsonb` strings (22P05). An error message can carry one from anywhere (a
//! decoder quoting its input, a message from a remote system), and a write
//! that fails on it would leave the framework unable to record the very
//! failure it is handling: a job that can never die, a listener that can
//! never park. So every such text goes through [`storable`] first: each NUL
//! becomes the two characters `\0`, and the text is cut (at a character
//! boundary) to at most [`MAX_TEXT_BYTES`], with a note saying how long it
//! was.
//!
//! ```
//! use dcb_postgres::text::storable;
//! assert_eq!(storable("bad uuid: \u{0}"), "bad uuid: \\0");
//! let long = "x".repeat(100_000);
//! assert!(storable(&long).len() <= dcb_postgres::text::MAX_TEXT_BYTES);
//! ```

use std::borrow::Cow;

/// The longest text [`storable`] returns, in bytes.
pub const MAX_TEXT_BYTES: usize = 8 * 1024;

/// `text` with every NUL escaped as `\0` and cut to [`MAX_TEXT_BYTES`].
/// Borrows when nothing needed changing.
pub fn storable(text: &str) -> Cow<'_, str> {
    bounded(text, MAX_TEXT_BYTES)
}

/// [`storable`] with another length limit (at least 64 bytes).
pub fn bounded(text: &str, max_bytes: usize) -> Cow<'_, str> {
    let max_bytes = max_bytes.max(64);
    let escaped: Cow<'_, str> = if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\\0"))
    } else {
        Cow::Borrowed(text)
    };
    if escaped.len() <= max_bytes {
        return escaped;
    }
    let note = format!(" [... cut, {} bytes in all]", escaped.len());
    let mut end = max_bytes.saturating_sub(note.len());
    while !escaped.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{note}", &escaped[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_nul_and_bounds_length_at_a_char_boundary() {
        assert!(matches!(storable("fine"), Cow::Borrowed("fine")));
        assert_eq!(storable("a\0b\0"), "a\\0b\\0");
        let long = "é".repeat(10_000);
        let cut = storable(&long);
        assert!(cut.len() <= MAX_TEXT_BYTES, "{}", cut.len());
        assert!(cut.ends_with("[... cut, 20000 bytes in all]"), "{cut}");
        let nuls = "\0".repeat(MAX_TEXT_BYTES);
        let cut = storable(&nuls);
        assert!(cut.len() <= MAX_TEXT_BYTES && !cut.contains('\0'));
        assert_eq!(bounded("abc", 0), "abc");
    }
}
