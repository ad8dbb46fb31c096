//! PostgreSQL backend for dcb (in progress).
