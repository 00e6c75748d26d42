//! Inbound messages: what a valid one is, and how it is stored with its reply.
//!
//! - [`message`]: a message's wire format and validation, and its derived idempotency key
//!   (pure).
//! - [`store`]: the SQL verb that stores a message and queues its reply in one transaction.
//!
//! The HTTP side (signature, statuses) is [`crate::http::inbound`].

pub mod message;
pub mod store;

pub use message::{Message, MessageError};
