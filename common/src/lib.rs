//! Pieces both binaries share so they read the environment, retry and log alike. Nothing
//! here knows about the other process: the supervisor and the gateway still meet only at
//! their documented sockets, signals, routes and exit codes.
//!
//! - [`settings`]: the `AIHUMMER_*` reader and value parsers, errors naming the variable.
//! - [`redact`]: URLs shown in logs and errors without credentials or query strings.
//! - [`backoff`]: exponential retry delays with jitter, a pure value.
//! - [`sockets`]: the names and numbering of sockets passed to a gateway.
//! - [`logging`]: `tracing` output, human on a terminal, JSON otherwise.

pub mod backoff;
pub mod logging;
pub mod redact;
pub mod settings;
pub mod sockets;
