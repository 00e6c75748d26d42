//! The transactional outbox: replies written with their inbound message, delivered by any
//! gateway, at least once, with the same `Idempotency-Key` on every attempt.
//!
//! - [`store`]: the SQL verbs, one statement or transaction each.
//! - [`policy`]: what a delivery attempt's result means, and when to retry (pure).
//! - [`deliver`]: the worker that claims due rows and posts them to the webhook.
//! - [`housekeeping`]: the leader's periodic purge, counts and overdue warning.

pub mod deliver;
pub mod housekeeping;
pub mod policy;
pub mod store;
