//! This node's identity in the fleet: a random id kept in the install dir, so it survives
//! restarts, upgrades and reboots, and the rollout cohort derived from it.
//!
//! The cohort is the first 8 bytes of `sha256(node id)` read as a big-endian integer,
//! modulo 100: a number from 0 to 99 that never changes for a node. A release with
//! `"rollout": N` is installed automatically by the nodes whose cohort is below N, so
//! raising N only ever adds nodes, and a node inside 10% stays inside 50%.

use std::fmt;
use std::io;
use std::path::Path;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::durable::{self, FileError};

/// The file in the install dir holding the node id.
pub const FILE: &str = "node-id";

/// A node's stable id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeId(String);

/// Why the node id could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum NodeIdError {
    /// The file exists but does not hold an id.
    #[error("{path} does not hold a node id ({found:?}); delete it to have a new id made")]
    Invalid {
        /// The file.
        path: String,
        /// What it holds.
        found: String,
    },
    /// Reading it failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// Writing a new one failed.
    #[error(transparent)]
    Write(#[from] FileError),
}

impl NodeId {
    /// The id kept in `state_dir`, created on first use.
    pub fn load_or_create(state_dir: &Path) -> Result<NodeId, NodeIdError> {
        let path = state_dir.join(FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let id = text.trim();
                match Uuid::parse_str(id) {
                    Ok(_) => Ok(NodeId(id.to_string())),
                    Err(_) => Err(NodeIdError::Invalid {
                        path: path.display().to_string(),
                        found: id.chars().take(64).collect(),
                    }),
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                // On a first start the install dir may not exist yet; it is created as
                // the install would create it.
                std::fs::create_dir_all(state_dir).map_err(durable::io_err("create", state_dir))?;
                let id = Uuid::new_v4().to_string();
                durable::write_atomic(&path, format!("{id}\n").as_bytes(), 0o644)?;
                Ok(NodeId(id))
            }
            Err(source) => Err(NodeIdError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// An id for this process only, for a supervisor without an install dir: it takes part
    /// in the fleet view, but its cohort changes at every start.
    pub fn ephemeral() -> NodeId {
        NodeId(Uuid::new_v4().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The rollout cohort, 0 to 99.
    pub fn cohort(&self) -> u8 {
        cohort(&self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The cohort of a node id: `u64::from_be_bytes(sha256(id)[..8]) % 100`.
pub fn cohort(id: &str) -> u8 {
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // Below 100, so the cast cannot truncate.
    (u64::from_be_bytes(first) % 100) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = NodeId::load_or_create(dir.path()).expect("create");
        let again = NodeId::load_or_create(dir.path()).expect("load");
        assert_eq!(first, again);
        assert_eq!(first.cohort(), again.cohort());
    }

    #[test]
    fn a_missing_install_dir_is_created_for_the_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let id = NodeId::load_or_create(&state).expect("create");
        assert_eq!(NodeId::load_or_create(&state).expect("load"), id);
    }

    #[test]
    fn a_damaged_id_file_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), "not an id").expect("write");
        let err = NodeId::load_or_create(dir.path()).expect_err("refused");
        assert!(err.to_string().contains("node-id"), "{err}");
    }

    #[test]
    fn cohorts_are_stable_and_spread_over_0_to_99() {
        assert_eq!(cohort("a"), cohort("a"));
        let mut seen = [0u32; 100];
        for _ in 0..10_000 {
            seen[usize::from(NodeId::ephemeral().cohort())] += 1;
        }
        // 100 per bucket expected; a bucket under 40 or over 200 means a skewed hash.
        assert!(seen.iter().all(|&n| (40..200).contains(&n)), "{seen:?}");
    }
}
