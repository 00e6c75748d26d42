//! The install dir (`AIHUMMER_STATE_DIR`): its layout and every path in it, the
//! `current`/`previous` switch, the staging area a binary is proven in before it is
//! installed, the bootstrap install, and `state.json` (highest trusted version,
//! quarantine, last check). The update pipeline writes into it; nothing here knows
//! where a binary came from.
//!
//! - [`layout`]: paths, links, switching, pruning.
//! - [`state`]: `state.json` and the verbs that change it.
//! - [`staging`]: `staging/`, its lock, and committing a proven binary into `versions/`.
//! - [`smoke`]: `<binary> --version`, the check every installed binary passes.
//! - [`bootstrap`]: the first start's gateway installed as the first version.
//! - [`error`]: why the install dir could not be read or changed.

pub mod bootstrap;
pub mod error;
pub mod layout;
pub mod smoke;
pub mod staging;
pub mod state;
#[cfg(test)]
pub(crate) mod testing;

pub use bootstrap::install_bootstrap;
pub use error::InstallError;
pub use layout::{GATEWAY_FILE, KEEP_VERSIONS, Layout, switch};
pub use smoke::{SMOKE_TIMEOUT, SmokeError, smoke_test};
pub use staging::Staging;
pub use state::{
    CheckOutcome, LastCheck, STATE_SCHEMA, State, quarantine, quarantine_list, record_check,
};
