//! The AiHummer gateway: the child process that serves HTTP.
//!
//! # Layout
//!
//! - [`config`]: the environment turned into typed settings, validated once at start.
//! - [`listeners`]: sockets inherited systemd-style (`LISTEN_FDS`) or bound here; the only
//!   module with `unsafe`.
//! - [`state`]: the readiness phase and the draining/leader flags the routes report.
//! - [`http`]: the HTTP surface: the router, the inbound handler, the JSON error answer.
//! - [`serve`]: accepting and serving connections within the connection cap and the read
//!   timeouts, and the lame-duck drain.
//! - [`descriptors`]: the descriptor limit raised, and the connection cap fitted under it.
//! - [`database`]: pools and the startup sequence (connect, migrate, verify the app role).
//! - [`migrate`]: embedded migrations applied under an advisory lock.
//! - [`advisory`]: session advisory locks (migrations, leadership) as small verbs, waited
//!   for in bounded rounds.
//! - [`session`]: dedicated connections for those locks, refused behind a transaction
//!   pooler.
//! - [`tenant`]: the app pool, and its transactions: each switches to `aihummer_app` and
//!   is scoped to one workspace for row-level security.
//! - [`inbound`]: inbound messages: validation, and storing each with its reply.
//! - [`responder`]: the turn that writes a reply (built-in, deterministic).
//! - [`outbox`]: delivery of queued replies to the webhook, at least once, idempotently.
//! - [`leader`]: one leader across all gateways, by advisory lock, published on a channel.
//! - [`scheduler`]: jobs run while that channel says this gateway leads, fenced per time
//!   slot in the database.
//! - [`metrics`]: the Prometheus registry and its handles.
//! - [`admin`]: operator commands (`aihummer-gateway outbox ...`).
//! - [`app`]: wires the parts together; [`app::run`] is what `main` calls.

pub mod admin;
pub mod advisory;
pub mod app;
pub mod config;
pub mod database;
pub mod descriptors;
pub mod http;
pub mod inbound;
pub mod leader;
pub mod listeners;
pub mod metrics;
pub mod migrate;
pub mod outbox;
pub mod responder;
pub mod scheduler;
pub mod serve;
pub mod session;
pub mod state;
pub mod tenant;
pub mod warm;

/// This binary's version: the package version, or `AIHUMMER_BUILD_VERSION` at build time.
pub const VERSION: &str = env!("AIHUMMER_VERSION");
