//! Kafka integration for dcb: translators (topics into decisions), a publishing
//! processor and an event relay. Not built yet: this crate is a placeholder so
//! the workspace has its final shape; it exports nothing.
