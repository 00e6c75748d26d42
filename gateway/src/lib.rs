//! The AiHummer gateway: the child process that serves HTTP.
//!
//! # Layout
//!
//! - [`config`]: the environment turned into typed settings, validated once at start.
//! - [`listeners`]: sockets inherited systemd-style (`LISTEN_FDS`) or bound here; the only
//!   module with `unsafe`.
//! - [`state`]: the readiness phase and the draining/leader flags the routes report.
//! - [`routes`]: the HTTP surface (`/healthz`, `/readyz`, `/v1/ping`).
//! - [`serve`]: accepting and serving connections, and the lame-duck drain.
//! - [`database`]: pools and the startup sequence (connect, migrate, verify the app role).
//! - [`migrate`]: embedded migrations applied under an advisory lock.
//! - [`tenant`]: transactions scoped to one workspace for row-level security.
//! - [`inbound`]: `POST /v1/inbound/generic`, signed messages in, replies queued.
//! - [`responder`]: the turn that writes a reply (built-in, deterministic).
//! - [`outbox`]: delivery of queued replies to the webhook, at least once, idempotently.
//! - [`leader`]: one leader across all gateways, by advisory lock.
//! - [`scheduler`]: jobs the leader runs, fenced per time slot in the database.
//! - [`admin`]: operator commands (`aihummer-gateway outbox ...`).
//! - [`app`]: wires the parts together; [`app::run`] is what `main` calls.

pub mod admin;
pub mod app;
pub mod config;
pub mod database;
pub mod inbound;
pub mod leader;
pub mod listeners;
pub mod migrate;
pub mod outbox;
pub mod responder;
pub mod routes;
pub mod scheduler;
pub mod serve;
pub mod state;
pub mod tenant;

/// This binary's version: the package version, or `AIHUMMER_BUILD_VERSION` at build time.
pub const VERSION: &str = env!("AIHUMMER_VERSION");
