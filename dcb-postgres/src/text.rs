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

/// `text` if PostgreSQL can store it as is (no NUL, at most `max_bytes`),
/// else a description of what is wrong, naming `field`.
pub(crate) fn check(field: &str, text: &str, max_bytes: usize) -> Result<(), String> {
    if text.contains('\0') {
        return Err(format!(
            "{field} contains a NUL character, which PostgreSQL cannot store: {:?}",
            storable(text)
        ));
    }
    if text.len() > max_bytes {
        return Err(format!(
            "{field} is {} bytes long; at most {max_bytes} are allowed",
            text.len()
        ));
    }
    Ok(())
}

/// The first JSON string (key or value) in `value` that holds a NUL, as a
/// path such as `$.items[2].name`.
pub(crate) fn json_nul_path(value: &serde_json::Value) -> Option<String> {
    fn walk(value: &serde_json::Value, path: &mut String) -> bool {
        match value {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            serde_json::Value::Object(fields) => fields.iter().any(|(key, item)| {
                let len = path.len();
                path.push('.');
                path.push_str(&storable(key));
                let found = key.contains('\0') || walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    let mut path = "$".to_string();
    walk(value, &mut path).then_some(path)
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

    #[test]
    fn checks_and_finds_nul_in_json() {
        assert!(check("kind", "ok", 10).is_ok());
        assert!(check("kind", "a\0", 10).unwrap_err().contains("kind"));
        assert!(check("kind", "0123456789x", 10)
            .unwrap_err()
            .contains("11 bytes"));
        let value = serde_json::json!({"a": [1, {"b": "x\u{0}"}]});
        assert_eq!(json_nul_path(&value).as_deref(), Some("$.a[1].b"));
        assert_eq!(json_nul_path(&serde_json::json!({"a": "b"})), None);
        let key = serde_json::json!({"k\u{0}": 1});
        assert_eq!(json_nul_path(&key).as_deref(), Some("$.k\\0"));
    }
}
