//! The machine tested without processes, sockets or real time: a simulated world carries
//! out its effects ([`sim`]), scenario tests walk every state ([`transitions`], [`updates`], [`fleet`]), and a
//! property test drives random input sequences while checking the invariants that make
//! the product safe ([`properties`]).

mod check_only;
mod fleet;
mod properties;
mod sim;
mod transitions;
mod updates;
