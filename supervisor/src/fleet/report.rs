//! What `aihummer fleet status` shows: every node registered in the database, the rollout
//! lease and the halted versions. Wire types (the control socket carries them as they
//! are, and `--json` prints them) and the human rendering.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The whole fleet as the database sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetReport {
    /// Every node that ever registered, by host, address and id.
    pub nodes: Vec<NodeInfo>,
    /// The node rolling out a version now, if any.
    pub lease: Option<LeaseInfo>,
    /// Versions no node installs automatically.
    pub halted: Vec<HaltInfo>,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id (`AIHUMMER_STATE_DIR/node-id`).
    pub node_id: String,
    /// Its host name.
    pub host: String,
    /// Its public listener.
    pub address: String,
    /// The gateway version it serves, if one serves.
    pub version: Option<String>,
    /// Its supervisor's version.
    pub supervisor_version: String,
    /// The supervisor's state (as in `aihummer status`), or `stopped`.
    pub state: String,
    /// Its last update check, or what it waits for.
    pub detail: Option<String>,
    /// Its rollout cohort, 0 to 99.
    pub cohort: u8,
    /// When its supervisor started (RFC 3339, UTC).
    pub started_at: String,
    /// When it last reported (RFC 3339, UTC).
    pub last_seen: String,
    /// Milliseconds since it last reported.
    pub seen_ms_ago: u64,
    /// It stopped reporting without saying it stopped (its host or supervisor died).
    pub stale: bool,
}

/// The rollout lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The node holding it.
    pub node_id: String,
    /// The version it rolls out.
    pub version: String,
    /// Since when (RFC 3339, UTC).
    pub acquired_at: String,
    /// Milliseconds until it expires unless renewed (negative: expired).
    pub expires_in_ms: i64,
}

/// A version halted fleet-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltInfo {
    /// The version.
    pub version: String,
    /// The node that refused or rolled it back.
    pub node_id: String,
    /// Why.
    pub reason: String,
    /// When (RFC 3339, UTC).
    pub halted_at: String,
}

impl FleetReport {
    /// The report for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "nodes: {}", self.nodes.len());
        for node in &self.nodes {
            let health = if node.stale {
                " (STALE: not reporting)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {} {} {}  serving {}  {}{}  cohort {}  seen {:.1}s ago",
                node.node_id,
                node.host,
                node.address,
                node.version.as_deref().unwrap_or("nothing"),
                node.state,
                health,
                node.cohort,
                node.seen_ms_ago as f64 / 1000.0,
            );
            if let Some(detail) = &node.detail {
                let _ = writeln!(out, "    {detail}");
            }
        }
        match &self.lease {
            Some(lease) => {
                let _ = writeln!(
                    out,
                    "rollout lease: node {} rolling out {} since {} (expires in {:.1}s unless renewed)",
                    lease.node_id,
                    lease.version,
                    lease.acquired_at,
                    lease.expires_in_ms as f64 / 1000.0
                );
            }
            None => out.push_str("rollout lease: free\n"),
        }
        if self.halted.is_empty() {
            out.push_str("halted versions: none\n");
        } else {
            out.push_str("halted versions:\n");
            for halt in &self.halted {
                let _ = writeln!(
                    out,
                    "  {} by node {} at {}: {}",
                    halt.version, halt.node_id, halt.halted_at, halt.reason
                );
            }
        }
        out
    }
}
