//! The process layer: everything that touches a gateway process or systemd. The state
//! machine never calls these; its driver does.

pub mod child;
pub mod fds;
pub mod groups;
pub mod identity;
pub mod notify;
pub mod probe;
