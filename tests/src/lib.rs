//! Cross-crate tests for dcb.
