//! The HTTP-facing parts: the routers and their handlers, and the JSON error they answer
//! with.
//!
//! - [`routes`]: the public and the private router, ping, outbox counts, the fallbacks.
//! - [`health`]: `/healthz` and `/readyz`, with generic reasons in public.
//! - [`inbound`]: the `POST /v1/inbound/generic` handler (signature, parsing, statuses).
//! - [`metrics`]: `GET /metrics` and the layer counting every request.
//! - [`signature`]: the inbound signature scheme, checked without I/O.
//! - [`error`]: the `{"error":{"code","message"}}` answer every handler fails with.

pub mod error;
pub mod health;
pub mod inbound;
pub mod metrics;
pub mod routes;
pub mod signature;
