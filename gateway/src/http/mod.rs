//! The HTTP-facing parts: the router and its handlers, and the JSON error they answer with.
//!
//! - [`routes`]: the router, health, readiness, ping, outbox counts and the fallbacks.
//! - [`inbound`]: the `POST /v1/inbound/generic` handler (signature, parsing, statuses).
//! - [`error`]: the `{"error":{"code","message"}}` answer every handler fails with.

pub mod error;
pub mod inbound;
pub mod routes;
