//! Pieces both binaries share so they read the environment and log alike. Nothing here
//! knows about the other process: the supervisor and the gateway still meet only at their
//! documented sockets, signals, routes and exit codes.
//!
//! - [`settings`]: parsers for listen addresses and durations in `AIHUMMER_*` variables.
//! - [`logging`]: `tracing` output, human on a terminal, JSON otherwise.

pub mod logging;
pub mod settings;
