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
//! - [`fds`]: every piece of raw descriptor plumbing: sockets inherited from systemd, the
//!   listeners handed to children. The crate's only `unsafe`.
//! - [`child`]: spawning one gateway with its sockets, signalling, reaping.
//! - [`probe`]: asking a child's private probe listener whether it is ready.
//! - [`backoff`]: crash-restart delays, a pure value.
//! - [`handoff`]: the pure parts of a handoff: the readiness gate and its failures.
//! - [`supervise`]: the supervisor's state machine, one function per state.
//! - [`control`]: the control socket's typed, versioned protocol and its server.
//! - [`cli`]: the `status`, `version`, `restart`, `update` and `rollback` clients, and
//!   `update --check`, which also works without a supervisor.
//! - [`notify`]: systemd notifications (`READY=1`, `STATUS=`, `WATCHDOG=1`).
//! - [`soak`]: the window after an update in which a crash-looping version is rolled back.
//! - [`checks`]: update check requests, merged while a check or a handoff runs; the
//!   timer's jitter.
//! - [`update`]: the update pipeline, from the release CDN to a verified gateway in the
//!   install dir: URLs, fetch, signature, manifest, decision, stage. Built from plain
//!   options that [`config`] derives from the settings.
//! - [`install`]: the install dir: every path in it, `current`/`previous` links, the
//!   staging area, the bootstrap install, pruning, `state.json`.
//! - [`durable`]: crash-safe file writes (atomic replace, directory fsync).
//! - [`publish`]: the publisher side, writing the CDN layout (`aihummer-publish`).
//!
//! Settings flow one way: [`config`] → [`update`] → [`install`].
//! - [`app`]: wires the parts together for `aihummer run`.
//!
//! # Exit codes
//!
//! `0` success; `1` the operation failed (the reason is printed on one line); `2` bad
//! usage; [`EXIT_NO_SUPERVISOR`] when no supervisor answers at the control socket;
//! [`EXIT_UPDATE_AVAILABLE`] from `aihummer update --check` when a newer version is offered.

#![warn(missing_docs)]

pub mod app;
pub mod backoff;
pub mod checks;
pub mod child;
pub mod cli;
pub mod config;
pub mod control;
pub mod durable;
pub mod fds;
pub mod handoff;
pub mod install;
pub mod notify;
pub mod probe;
pub mod publish;
pub mod soak;
pub mod supervise;
pub mod update;

/// This binary's version: the package version, or `AIHUMMER_BUILD_VERSION` at build time.
pub const VERSION: &str = env!("AIHUMMER_VERSION");

/// Exit code of a client command when no supervisor is running at the control socket.
pub const EXIT_NO_SUPERVISOR: u8 = 3;

/// Exit code of `aihummer update --check` when a newer version is available.
pub const EXIT_UPDATE_AVAILABLE: u8 = 100;
