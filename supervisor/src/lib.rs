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
//! - [`process`]: the gateway processes and systemd: raw descriptor plumbing (the
//!   crate's only `unsafe`), spawning, signalling and reaping a child, probing it,
//!   notifying systemd.
//! - [`supervise`]: the supervisor's state machine (no I/O, one function per state) and
//!   the driver that carries out what it decides.
//! - [`control`]: the control socket in layers: `protocol` (typed, versioned wire types),
//!   `framing` (the one newline-delimited JSON framing, capped and timed), `server` (one
//!   connection over any stream, and the accept loop), `socket` (binding the socket file,
//!   the SO_PEERCRED check) and `client` (one request with its progress).
//! - [`cli`]: the `status`, `version`, `restart`, `update` and `rollback` commands and their
//!   human and `--json` output, over `control::client`; and `update --check`, which also
//!   works without a supervisor.
//! - [`updater`]: the update pipeline's I/O: fetch, verify, decide, stage.
//! - [`manifest`]: a channel's `latest.json` parsed into a typed manifest; artifact URLs.
//! - [`decide`]: the update decision (channels, SemVer, downgrade floor, quarantine), pure.
//! - [`signature`]: minisign verification of `latest.json` against the pinned key.
//! - [`fetch`]: the release CDN over HTTPS or `file://`: manifest and artifact downloads.
//! - [`stage`]: a downloaded or bootstrap gateway verified into `versions/<version>/`.
//! - [`install`]: the install dir: `current`/`previous` links, pruning, `state.json`.
//! - [`publish`]: the publisher side, writing the CDN layout (`aihummer-publish`).
//! - [`app`]: wires the parts together for `aihummer run`.
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
pub mod decide;
pub mod fetch;
pub mod install;
pub mod manifest;
pub mod process;
pub mod publish;
pub mod signature;
pub mod stage;
pub mod supervise;
pub mod updater;

/// This binary's version: the package version, or `AIHUMMER_BUILD_VERSION` at build time.
pub const VERSION: &str = env!("AIHUMMER_VERSION");

/// Exit code of a client command when no supervisor is running at the control socket.
pub const EXIT_NO_SUPERVISOR: u8 = 3;

/// Exit code of `aihummer update --check` when a newer version is available.
pub const EXIT_UPDATE_AVAILABLE: u8 = 100;
