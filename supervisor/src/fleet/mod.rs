//! The fleet: nodes sharing one PostgreSQL database coordinate through it, with no other
//! service. Each supervisor registers its node ([`registry`]); automatic updates in `apply`
//! mode take the one rollout lease before a handoff and give it back after the soak
//! window, so one node at a time upgrades; a version one node refuses or rolls back is
//! halted for all ([`store`]). Which nodes install a staged rollout comes from the node's
//! stable cohort ([`node`]); when a handoff may start, from `AIHUMMER_UPDATE_WINDOW`
//! ([`window`]). `aihummer fleet status` reads it all back ([`report`]).

pub mod node;
pub mod registry;
pub mod report;
pub mod schema;
pub mod store;
pub mod window;

pub use node::NodeId;
pub use report::FleetReport;
pub use store::{Fleet, FleetError, Lease};
pub use window::UpdateWindow;
