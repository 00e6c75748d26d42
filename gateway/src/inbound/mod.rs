//! Inbound messages: what a valid one is, and how it is stored with its reply.
//!
//! - [`message`]: a message's wire format and validation, and its derived idempotency key
//!   (pure).
//! - [`store`]: the SQL verb that stores a message and queues its reply in one transaction.
//! - [`batch`]: group commit, messages arriving together stored by one statement.
//! - [`wake`]: one `NOTIFY` to the outbox deliverers for the messages stored meanwhile.
//!
//! The HTTP side (signature, statuses) is [`crate::http::inbound`].

pub mod batch;
pub mod message;
pub mod store;
pub mod wake;

pub use message::{Message, MessageError};
pub use wake::Wake;
