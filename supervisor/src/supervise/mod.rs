//! The supervisor proper: a state machine that decides ([`machine`], [`updates`]) and a
//! driver that acts ([`driver`]), meeting only in the plain data of [`events`].
//!
//! - [`events`]: inputs, effects and replies, the machine's whole vocabulary.
//! - [`machine`]: the states and their transitions, one function per state; no I/O. Its
//!   `handoff` part handles children (spawned, probed, gated, crashed, drained), its
//!   `lifecycle` part enters states and holds the verbs every state uses, its `states`
//!   part has one function per state.
//! - [`updates`]: the machine's update side: checks, staging outcomes, quarantine, soak.
//! - [`gate`], [`soak`], [`backoff`], [`checks`], [`clients`]: pure pieces it uses.
//! - [`status`]: what `aihummer status` shows, converted to the protocol's report at the edge.
//! - [`driver`]: carries out effects (processes, probes, checks, install, replies);
//!   `check_task` runs a check off its loop, and [`coordination`] asks the update window
//!   and the fleet for permits, releases the rollout lease and halts versions.
//! - [`metrics`]: the supervisor's Prometheus metrics, derived by the driver.
//! - [`inputs`]: signals, the update timer, and the control socket's adapter.

pub mod backoff;
mod check_task;
pub mod checks;
pub mod clients;
pub mod coordination;
pub mod driver;
pub mod events;
pub mod gate;
mod handoff;
pub mod inputs;
mod lifecycle;
pub mod machine;
pub mod metrics;
pub mod soak;
mod states;
pub mod status;
mod updates;

#[cfg(test)]
mod tests;

pub use coordination::Coordination;
pub use driver::{Driver, Views};
pub use inputs::{Handle, Message, forward_signals};
pub use machine::{Config, Machine};
