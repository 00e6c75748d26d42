//! The control socket, in layers: [`protocol`] (the typed, versioned wire types),
//! [`framing`] (newline-delimited JSON lines under caps and timeouts), [`server`] (one
//! connection, and the accept loop), [`socket`] (the socket file), [`access`] (who may use
//! it) and [`client`] (one request from the CLI, to a server it trusts). The server and the client speak through the one
//! framing; binding asks a live socket who it is the way the client does. The wire types,
//! the server's entry points and the socket binding are re-exported here.
//!
//! A client never hurts the supervisor or other clients: peers are checked with
//! SO_PEERCRED (root, the supervisor's own uid or the admin group; never the gateway), a request line is capped and must arrive
//! in time, replies are written under a timeout, each connection runs in its own task, and
//! past a cap clients are told the supervisor is busy.

pub mod access;
pub mod client;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod framing;
pub mod protocol;
pub mod server;
pub mod socket;

pub use access::Access;
pub use protocol::{
    Body, CheckReport, Command, ErrorCode, ErrorReply, Event, GatewayInfo, GatewayState,
    GatewayVersion, HandoffRecord, Message, NodeIdentity, PROTOCOL_VERSION, ProcessInfo, Progress,
    Request, RestartReport, Stage, StatusReport, SupervisorState, UpToDateReport, UpdateInfo,
    VersionReport,
};
pub use server::{Service, serve};
pub use socket::{BindError, bind};
