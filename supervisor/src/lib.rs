//! The AiHummer supervisor and its operator CLI.
//!
//! `aihummer run` owns the public listener and the control socket, runs
//! `aihummer-gateway` as its child, restarts it after a crash and hands off to a new child
//! without refusing or failing a request, also to a new version from the release CDN. The
//! other subcommands are clients of a running supervisor's control socket.
//!
//! # Layout
//!
//! - [`config`]: the environment turned into typed settings (addresses, paths, timeouts).
//! - [`process`]: the gateway processes and systemd: raw descriptor plumbing and the
//!   switch to the gateway's user (the crate's only `unsafe`), spawning, signalling and
//!   reaping a child in a process group of its own, probing it, notifying systemd.
//! - [`supervise`]: the supervisor's state machine (no I/O, one function per state) and
//!   the driver that carries out what it decides.
//! - [`control`]: the control socket in layers: `protocol` (typed, versioned wire types),
//!   `framing` (the one newline-delimited JSON framing, capped and timed), `server` (one
//!   connection over any stream, and the accept loop), `socket` (binding the socket file),
//!   `access` (who may use it: SO_PEERCRED, groups, the gateway's process groups) and
//!   `client` (one request with its progress, to a server whose owner it trusts).
//! - [`cli`]: the `status`, `version`, `restart`, `update` and `rollback` commands and their
//!   human and `--json` output, over `control::client`; and `update --check`, which also
//!   works without a supervisor.
//! - [`update`]: the update pipeline, from the release CDN to a verified gateway in the
//!   install dir: URLs, fetch, signature, manifest, decision, stage. Built from plain
//!   options that [`config`] derives from the settings.
//! - [`install`]: the install dir: every path in it, `current`/`previous` links, the
//!   staging area, the bootstrap install, pruning, `state.json`.
//! - [`docgen`]: man pages and shell completions from the clap definitions (hidden
//!   `generate` subcommand).
//! - [`durable`]: crash-safe file writes (atomic replace, directory fsync).
//! - [`failpoint`]: named crash points for the crash-safety suites (debug builds only).
//! - [`fleet`]: the nodes sharing one database: the registry, the rollout lease, halted
//!   versions, rollout cohorts and the update window (the supervisor's own tables).
//! - [`publish`]: the publisher side, writing the CDN layout (`aihummer-publish`).
//! - [`metrics_endpoint`]: the node's `/metrics` at `AIHUMMER_METRICS_ADDR` (the
//!   supervisor's metrics, then the serving gateway's).
//! - [`app`]: wires the parts together for `aihummer run`.
//!
//! Data flows one way: [`config`] → [`update`] → [`install`]; the state machine in
//! [`supervise`] decides, and only its driver touches [`process`], [`update`] and
//! [`install`].
//!
//! # Exit codes
//!
//! `0` success; `1` the operation failed (the reason is printed on one line); `2` bad
//! usage; [`EXIT_NO_SUPERVISOR`] when no supervisor answers at the control socket;
//! [`EXIT_UPDATE_AVAILABLE`] from `aihummer update --check` when a newer version is offered.

#![warn(missing_docs)]

pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod docgen;
pub mod durable;
pub mod failpoint;
pub mod fleet;
pub mod install;
pub mod metrics_endpoint;
pub mod process;
pub mod publish;
pub mod supervise;
pub mod update;

/// This binary's version: the package version, or `AIHUMMER_BUILD_VERSION` at build time.
pub const VERSION: &str = env!("AIHUMMER_VERSION");

/// Exit code of a client command when no supervisor is running at the control socket.
pub const EXIT_NO_SUPERVISOR: u8 = 3;

/// Exit code of `aihummer update --check` when a newer version is available.
pub const EXIT_UPDATE_AVAILABLE: u8 = 100;
