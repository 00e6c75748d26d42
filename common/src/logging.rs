//! Log output: human-readable on a terminal, JSON lines otherwise (journald, files, pipes).
//!
//! The level comes from `AIHUMMER_LOG`, then `RUST_LOG`, else `info`, for both binaries,
//! so one journal reads alike for the supervisor and its gateways.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, early in `main`.
pub fn init() {
    let filter = EnvFilter::try_from_env("AIHUMMER_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if under_journald || !std::io::stderr().is_terminal() {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
