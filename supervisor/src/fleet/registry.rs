//! The node's heartbeat: its row in the registry kept current from the supervisor's
//! status (at every change, and every [`HEARTBEAT`] at least), the rollout lease renewed
//! with it, and a last word when the supervisor stops. A database outage is logged once
//! when it starts and once when it ends, and changes nothing else.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::store::{Fleet, FleetError, Heartbeat};
use crate::control::StatusReport;
use crate::control::protocol::wire_name;

/// The longest time between two heartbeats. Well inside the lease's TTL, so a few missed
/// beats cost nothing.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// The shortest time between two heartbeats, so a burst of status changes (a handoff)
/// costs a few writes, not dozens.
const SPACING: Duration = Duration::from_millis(200);
/// How long the last word at stop may take before the supervisor exits without it.
const FAREWELL: Duration = Duration::from_secs(3);

/// What this node says about itself.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The host name.
    pub host: String,
    /// The public listener.
    pub address: String,
}

/// Reports the node until `status`'s sender is gone.
pub async fn run(fleet: Arc<Fleet>, identity: Identity, mut status: watch::Receiver<StatusReport>) {
    let mut down: Option<String> = None;
    loop {
        let beat = heartbeat(&identity, &status.borrow_and_update(), None);
        let result = match fleet.heartbeat(&beat).await {
            Ok(()) => fleet.renew().await,
            Err(err) => Err(err),
        };
        report_outage(&mut down, result);
        tokio::time::sleep(SPACING).await;
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT - SPACING) => {}
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}

/// Logs the start and the end of an outage, not every failed beat.
fn report_outage(down: &mut Option<String>, result: Result<(), FleetError>) {
    match (result, down.is_some()) {
        (Ok(()), true) => {
            *down = None;
            tracing::info!("fleet database reachable again; this node reports to it");
        }
        (Err(err), false) => {
            tracing::warn!(error = %err, "this node cannot report to the fleet database; it keeps serving and tries again");
            *down = Some(err.to_string());
        }
        _ => {}
    }
}

/// The supervisor stops: gives the lease back and marks the node stopped, within
/// [`FAREWELL`].
pub async fn farewell(fleet: &Fleet, identity: &Identity, last: &StatusReport) {
    let last_word = async {
        if let Err(err) = fleet.release().await {
            tracing::warn!(error = %err, "cannot release the rollout lease; it expires by itself");
        }
        let beat = heartbeat(identity, last, Some("stopped"));
        if let Err(err) = fleet.heartbeat(&beat).await {
            tracing::warn!(error = %err, "cannot mark this node stopped in the fleet database");
        }
    };
    if tokio::time::timeout(FAREWELL, last_word).await.is_err() {
        tracing::warn!("the fleet database did not answer in time; this node will show as stale");
    }
    fleet.close().await;
}

fn heartbeat(identity: &Identity, status: &StatusReport, state: Option<&str>) -> Heartbeat {
    let state = state.map_or_else(|| wire_name(&status.state), str::to_string);
    Heartbeat {
        host: identity.host.clone(),
        address: identity.address.clone(),
        version: status.active.as_ref().and_then(|a| a.version.clone()),
        state,
        detail: status.update.last_result.clone(),
        started_at: status.supervisor.started_at.clone(),
    }
}
