//! The update pipeline: from the release CDN to a verified gateway in the install dir.
//!
//! ```text
//! urls ─ fetch ─ signature ─ manifest ─ decide ─ download ─ stage ──▶ crate::install
//!          └──────────── pipeline strings them together ───────────┘
//! ```
//!
//! - [`channel`]: the release channels.
//! - [`urls`]: every URL resolved (base, manifest, signature, artifact) and the scheme rules.
//! - [`fetch`]: the CDN client and the manifest request.
//! - [`download`]: an artifact streamed to a writer, hashed on the way.
//! - [`signature`]: minisign verification of `latest.json` against the pinned key.
//! - [`manifest`]: `latest.json` as a typed value, parsed and serialized.
//! - [`decide`]: the update decision (channels, SemVer, downgrade floor, quarantine), pure.
//! - [`stage`]: a downloaded artifact verified into `versions/<version>/`.
//! - [`pipeline`]: check, verify, decide and stage in order, with retries.
//! - [`settings`]: the `AIHUMMER_UPDATE_*` settings (keys, download limits), read through
//!   the caller's lookup.
//!
//! The pipeline takes its settings as plain values ([`UpdaterOptions`]); nothing here
//! reads the process environment. The publisher's side of the same layout is [`crate::publish`].

pub mod channel;
pub mod decide;
pub mod download;
pub mod fetch;
pub mod manifest;
pub mod pipeline;
pub mod settings;
pub mod signature;
pub mod stage;
#[cfg(test)]
mod testing;
pub mod urls;

pub use channel::{Channel, UnknownChannel};
pub use pipeline::{Checked, Offer, Run, Updater, UpdaterError, UpdaterOptions};
pub use settings::{UpdateSettingError, UpdateSettings};
pub use signature::{SignatureError, TrustedKeys};
pub use urls::{UrlError, parse_base_url};
