//! `aihummer fleet status [--json]` and `aihummer fleet resume VERSION`: asked of the
//! running supervisor (which has the database settings of the service), else answered
//! from this shell's `AIHUMMER_DATABASE_URL`.

use std::path::Path;

use serde_json::json;

use super::{ClientError, QUICK_ANSWER, to_json};
use crate::control::client::{CallError, ask};
use crate::control::{Body, Command};
use crate::fleet::{Fleet, NodeId};
use crate::supervise::inputs::fleet_query;

/// `aihummer fleet status [--json]`.
pub async fn status(path: &Path, json: bool) -> Result<(), ClientError> {
    match answer(path, None).await? {
        Body::Fleet(report) if json => println!("{}", to_json(&report)?),
        Body::Fleet(report) => print!("{}", report.render()),
        other => return Err(ClientError::Unexpected(format!("{other:?}"))),
    }
    Ok(())
}

/// `aihummer fleet resume VERSION [--json]`.
pub async fn resume(path: &Path, version: String, json: bool) -> Result<(), ClientError> {
    match answer(path, Some(version)).await? {
        Body::FleetResumed(report) if json => {
            println!(
                "{}",
                json!({"ok": true, "version": report.version, "was_halted": report.was_halted})
            );
        }
        Body::FleetResumed(report) if report.was_halted => println!(
            "{} is no longer halted: nodes in apply mode install it on their own again",
            report.version
        ),
        Body::FleetResumed(report) => println!("{} was not halted", report.version),
        other => return Err(ClientError::Unexpected(format!("{other:?}"))),
    }
    Ok(())
}

async fn answer(path: &Path, resume: Option<String>) -> Result<Body, ClientError> {
    let command = match &resume {
        None => Command::Fleet,
        Some(version) => Command::FleetResume {
            version: version.clone(),
        },
    };
    let body = match ask(path, command, |_| {}, Some(QUICK_ANSWER)).await {
        Ok(body) => body,
        Err(CallError::NoSupervisor { .. }) => here(resume).await?,
        Err(err) => return Err(err.into()),
    };
    match body {
        Body::Error(reply) => Err(CallError::Failed(reply.message).into()),
        body => Ok(body),
    }
}

/// No supervisor answers: the database this shell names.
async fn here(resume: Option<String>) -> Result<Body, ClientError> {
    let url = std::env::var("AIHUMMER_DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .ok_or(ClientError::NoFleet)?;
    let fleet = Fleet::new(&url, NodeId::ephemeral())?;
    let body = fleet_query(&fleet, resume).await;
    fleet.close().await;
    Ok(body)
}
