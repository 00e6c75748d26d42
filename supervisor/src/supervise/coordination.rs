//! The driver's side of fleet coordination: what the machine's [`Permit`]s, lease
//! releases and halts mean in I/O. An automatic handoff needs the update window to be
//! open and, when the node shares a database with a fleet, the rollout lease; a halted
//! version gets neither. Failures to reach the database make the node wait, never
//! install: coordination fails safe.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use semver::Version;

use super::events::Permit;
use crate::fleet::{Fleet, Lease, UpdateWindow};

/// How soon a node waiting for the lease asks again.
pub const LEASE_POLL: Duration = Duration::from_secs(5);
/// How soon a node that could not reach the fleet database asks again.
const OUTAGE_POLL: Duration = Duration::from_secs(15);

/// The window and the fleet, as the driver uses them.
#[derive(Debug, Clone, Default)]
pub struct Coordination {
    /// `AIHUMMER_UPDATE_WINDOW`.
    pub window: Option<UpdateWindow>,
    /// The fleet's tables, when `AIHUMMER_DATABASE_URL` is set.
    pub fleet: Option<Arc<Fleet>>,
}

impl Coordination {
    /// Whether an automatic update to `version` may hand off now.
    pub async fn permit(&self, version: &Version) -> Permit {
        if let Some(window) = &self.window
            && let Some(opens_in) = window.wait(SystemTime::now())
        {
            return Permit::Wait {
                reason: format!("outside the update window {window}"),
                retry_in: opens_in.max(Duration::from_secs(1)),
            };
        }
        let Some(fleet) = &self.fleet else {
            return Permit::Granted { lease: false };
        };
        match fleet.acquire(version).await {
            Ok(Lease::Granted) => Permit::Granted { lease: true },
            Ok(Lease::Held {
                node,
                version: rolling,
            }) => Permit::Wait {
                reason: format!("node {node} holds the rollout lease, rolling out {rolling}"),
                retry_in: LEASE_POLL,
            },
            Ok(Lease::Halted { node, reason }) => {
                Permit::Halted(format!("halted by node {node}: {reason}"))
            }
            Err(err) => Permit::Wait {
                reason: err.to_string(),
                retry_in: OUTAGE_POLL,
            },
        }
    }

    /// Why `version` is halted fleet-wide, if it is. An operator's plain `aihummer
    /// update` is refused such a version; with the database unreachable it is not
    /// held back (the operator is there to judge).
    pub async fn halted(&self, version: &Version) -> Option<String> {
        let fleet = self.fleet.as_ref()?;
        match fleet.halted(version).await {
            Ok(halt) => halt.map(|(node, reason)| format!("halted by node {node}: {reason}")),
            Err(err) => {
                tracing::warn!(error = %err, %version, "cannot tell whether the version is halted fleet-wide");
                None
            }
        }
    }

    /// Gives the rollout lease back, off the loop.
    pub fn release(&self) {
        if let Some(fleet) = self.fleet.clone() {
            tokio::spawn(async move {
                if let Err(err) = fleet.release().await {
                    tracing::warn!(error = %err, "cannot release the rollout lease; it expires by itself");
                }
            });
        }
    }

    /// Halts `version` fleet-wide, off the loop.
    pub fn halt(&self, version: Version, reason: String) {
        if let Some(fleet) = self.fleet.clone() {
            tokio::spawn(async move {
                if let Err(err) = fleet.halt(&version, &reason).await {
                    tracing::error!(error = %err, %version, "cannot halt the version fleet-wide; other nodes may still install it");
                }
            });
        }
    }
}
