//! The operator commands that talk to a running supervisor (`status`, `version`,
//! `restart`, `update`, `rollback`, `update --check`) through [`control::client`];
//! `update --check` also works without one, from this process's environment. This module only
//! chooses the request and renders the answer: human output is short; `--json` prints one
//! JSON document on stdout, stable for scripts. Failures are a [`ClientError`] whose
//! one-line message `main` prints.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use semver::Version;

use crate::config::{ConfigError, Settings};
use crate::control::client::{CallError, ask};
use crate::control::protocol::wire_name;
use crate::control::{
    self, Body, Command, ErrorCode, Progress, RestartReport, Stage, StatusReport,
};
use crate::install::{self, Layout};
use crate::update::{Checked, Updater, UpdaterError};
use crate::{EXIT_NO_SUPERVISOR, EXIT_UPDATE_AVAILABLE, VERSION};

pub mod fleet;

/// How long a `status` or `version` answer may take.
const QUICK_ANSWER: Duration = Duration::from_secs(10);

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Talking to the supervisor failed, or it answered with a refusal or failure.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The environment does not describe a usable setup.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The update check or install failed.
    #[error(transparent)]
    Update(#[from] UpdaterError),
    /// The update check found the channel's offer unacceptable.
    #[error("{0}")]
    UpdateRefused(String),
    /// The version of the gateway that runs could not be established.
    #[error("cannot tell which gateway version runs: {0}")]
    RunningVersion(String),
    /// No supervisor answers, and this shell names no database to read the fleet from.
    #[error(
        "no supervisor answers, and AIHUMMER_DATABASE_URL is unset here; run this where the service's environment is, or as a user allowed on the control socket"
    )]
    NoFleet,
    /// The fleet's database cannot be used.
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    /// An answer of the wrong kind.
    #[error("unexpected answer from the supervisor: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Call(CallError::NoSupervisor { .. }) | ClientError::NoFleet => {
                EXIT_NO_SUPERVISOR
            }
            _ => 1,
        }
    }
}

/// `aihummer status [--json]`.
pub async fn status(path: &Path, json: bool) -> Result<(), ClientError> {
    let report = match ask(path, Command::Status, |_| {}, Some(QUICK_ANSWER)).await? {
        Body::Status(report) => report,
        other => return Err(ClientError::Unexpected(format!("{other:?}"))),
    };
    if json {
        println!("{}", to_json(&report)?);
    } else {
        print!("{}", render_status(&report));
    }
    Ok(())
}

/// `aihummer version [--json]`: this binary's version, and with a reachable supervisor
/// also the supervisor's and the active gateway's.
pub async fn version(path: &Path, json: bool) -> Result<(), ClientError> {
    let report = match ask(path, Command::Version, |_| {}, Some(QUICK_ANSWER)).await {
        Ok(Body::Version(report)) => Some(report),
        Ok(other) => return Err(ClientError::Unexpected(format!("{other:?}"))),
        Err(CallError::NoSupervisor { .. }) => None,
        Err(err) => return Err(err.into()),
    };
    if json {
        let doc = json!({
            "version": VERSION,
            "supervisor": report.as_ref().map(|r| json!({ "version": r.version, "pid": r.pid })),
            "gateway": report.as_ref().and_then(|r| r.gateway.as_ref()).map(|g| json!({ "version": g.version, "pid": g.pid })),
        });
        println!("{doc}");
        return Ok(());
    }
    println!("aihummer {VERSION}");
    match report {
        None => println!("supervisor: not running at {}", path.display()),
        Some(report) => {
            println!("supervisor: {} (pid {})", report.version, report.pid);
            match report.gateway {
                Some(g) => println!(
                    "gateway: {} (pid {})",
                    g.version.as_deref().unwrap_or("unknown"),
                    g.pid
                ),
                None => println!("gateway: none serving"),
            }
        }
    }
    Ok(())
}

/// `aihummer restart [--json]`: a zero-downtime handoff to a fresh gateway. Progress goes
/// to stderr; exit 0 only once the new gateway serves and the old one is gone.
pub async fn restart(path: &Path, json: bool) -> Result<(), ClientError> {
    let show = |p: &Progress| {
        if !json {
            eprintln!("restart: {}", p.message);
        }
    };
    let report = match ask(path, Command::Restart, show, None).await? {
        Body::Restarted(report) => report,
        other => return Err(ClientError::Unexpected(format!("{other:?}"))),
    };
    if json {
        println!("{}", to_json(&report)?);
    } else {
        println!(
            "restarted: gateway pid {} (version {}) serving{} in {}ms",
            report.new_pid,
            report.version.as_deref().unwrap_or("unknown"),
            report
                .old_pid
                .map(|p| format!(", replaced pid {p}"))
                .unwrap_or_default(),
            report.duration_ms
        );
    }
    Ok(())
}

/// `aihummer update [--version X] [--json]`: the supervisor checks, downloads, verifies,
/// stages and hands off. Progress goes to stderr: a progress bar on a terminal, plain
/// lines otherwise. Exits 0 only once the new version serves (or nothing newer exists).
pub async fn update(path: &Path, version: Option<String>, json: bool) -> Result<(), ClientError> {
    let mut shown = ProgressView::new(json, "update");
    let body = ask(path, Command::Update { version }, |p| shown.show(p), None).await;
    shown.finish();
    match body? {
        Body::Restarted(report) => print_handoff(&report, json, "updated"),
        Body::UpToDate(report) => {
            if json {
                println!(
                    "{}",
                    to_json(&json!({ "result": "up_to_date", "version": report.version }))?
                );
            } else {
                println!(
                    "up to date: {} is serving and is the newest on this channel",
                    report.version
                );
            }
            Ok(())
        }
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

/// `aihummer rollback [--json]`: hands back to the previous installed version with the
/// same zero-downtime handoff; exits 0 once it serves.
pub async fn rollback(path: &Path, json: bool) -> Result<(), ClientError> {
    let mut shown = ProgressView::new(json, "rollback");
    let body = ask(path, Command::Rollback, |p| shown.show(p), None).await;
    shown.finish();
    match body? {
        Body::Restarted(report) => print_handoff(&report, json, "rolled back"),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

fn print_handoff(report: &RestartReport, json: bool, what: &str) -> Result<(), ClientError> {
    if json {
        println!("{}", to_json(report)?);
    } else {
        println!(
            "{what}: gateway {} (pid {}) serving{} in {}ms",
            report.version.as_deref().unwrap_or("unknown"),
            report.new_pid,
            report
                .old_pid
                .map(|p| format!(", old pid {p} gone"))
                .unwrap_or_default(),
            report.duration_ms
        );
    }
    Ok(())
}

/// Shows progress events on stderr: a byte progress bar for the download when stderr is
/// a terminal, one plain line per event otherwise, nothing with `--json`. The bar is
/// replaced by one plain line when the download ends, so what follows starts on a line of
/// its own, and its rate is measured from the bar's first frame, not from zero bytes.
struct ProgressView {
    quiet: bool,
    prefix: &'static str,
    /// Where a bar is drawn; `None` when stderr is not a terminal.
    bar_target: Option<Box<dyn Fn() -> indicatif::ProgressDrawTarget>>,
    /// Writes one plain line.
    say: Box<dyn FnMut(&str)>,
    bar: Option<indicatif::ProgressBar>,
}

impl ProgressView {
    fn new(json: bool, prefix: &'static str) -> Self {
        use std::io::IsTerminal;
        let bar_target: Option<Box<dyn Fn() -> indicatif::ProgressDrawTarget>> =
            if std::io::stderr().is_terminal() {
                Some(Box::new(indicatif::ProgressDrawTarget::stderr))
            } else {
                None
            };
        ProgressView {
            quiet: json,
            prefix,
            bar_target,
            say: Box::new(|line| eprintln!("{line}")),
            bar: None,
        }
    }

    fn show(&mut self, p: &Progress) {
        if self.quiet {
            return;
        }
        match (p.stage, p.done, p.total, &self.bar_target) {
            (Stage::Downloading, Some(done), Some(total), Some(target)) => {
                let prefix = self.prefix;
                let bar = self.bar.get_or_insert_with(|| {
                    let bar = indicatif::ProgressBar::with_draw_target(
                        Some(total),
                        indicatif::ProgressDrawTarget::hidden(),
                    );
                    if let Ok(style) = indicatif::ProgressStyle::with_template(
                        "{prefix}: [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    ) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar.set_prefix(prefix);
                    // The first event may report megabytes already fetched: start the
                    // rate there, or the first frame claims gigabytes per second.
                    bar.set_position(done);
                    bar.reset_eta();
                    bar.set_draw_target(target());
                    bar.tick();
                    bar
                });
                bar.set_position(done);
            }
            _ => {
                self.finish();
                (self.say)(&format!("{}: {}", self.prefix, p.message));
            }
        }
    }

    /// Ends a bar, leaving one plain line with what was downloaded in its place.
    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            let (done, total) = (bar.position(), bar.length().unwrap_or_default());
            (self.say)(&format!(
                "{}: downloaded {} of {}",
                self.prefix,
                indicatif::HumanBytes(done),
                indicatif::HumanBytes(total)
            ));
        }
    }
}

/// `aihummer update --check [--json]`: asks whether a newer version than the running
/// gateway's is offered. Returns the exit code: 0 up to date, [`EXIT_UPDATE_AVAILABLE`]
/// when one is; a refused manifest or a failed check is an error. A running supervisor
/// checks with its own settings (and shows the check in `status`); only when none answers
/// (or one too old to know the command) is the check made here, from this environment.
pub async fn update_check(path: &Path, json: bool) -> Result<u8, ClientError> {
    let found = match check_by_supervisor(path).await? {
        Some(found) => found,
        None => check_here(path).await?,
    };
    let code = if found.available {
        EXIT_UPDATE_AVAILABLE
    } else {
        0
    };
    let (running, offered) = (&found.running, &found.offered);
    if json {
        let doc = json!({
            "result": if found.available { "available" } else { "up_to_date" },
            "version": if found.available { offered } else { running },
            "running": running,
            "offered": offered,
            "channel": found.channel,
        });
        println!("{doc}");
    } else if found.available {
        println!("update available: {offered} (running {running})");
    } else if offered == running {
        println!("up to date: {running} is the newest on this channel");
    } else {
        // A node ahead of its channel (after `update --version`, or a channel switch) has
        // nothing to install: up to date for a monitoring script, with both versions said.
        println!("up to date: {running} runs; the channel offers {offered}");
    }
    Ok(code)
}

/// What an update check found, wherever it ran.
struct CheckFound {
    running: String,
    offered: String,
    available: bool,
    channel: String,
}

/// The running supervisor's check, or `None` when no supervisor answers or it predates
/// the `check` command.
async fn check_by_supervisor(path: &Path) -> Result<Option<CheckFound>, ClientError> {
    let stream = match control::client::connect(path).await {
        Ok(stream) => stream,
        Err(CallError::NoSupervisor { .. }) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let report = match control::client::call(stream, Command::Check, |_| {}).await? {
        Body::Checked(report) => report,
        Body::Error(reply) if reply.code == ErrorCode::BadRequest => return Ok(None),
        Body::Error(reply) => return Err(CallError::Failed(reply.message).into()),
        other => return Err(ClientError::Unexpected(format!("{other:?}"))),
    };
    let channel = match ask(path, Command::Status, |_| {}, Some(QUICK_ANSWER)).await? {
        Body::Status(status) => status.update.channel,
        other => return Err(ClientError::Unexpected(format!("{other:?}"))),
    };
    Ok(Some(CheckFound {
        running: report.running,
        offered: report.offered,
        available: report.available,
        channel,
    }))
}

/// The check made by this process from its own environment.
async fn check_here(path: &Path) -> Result<CheckFound, ClientError> {
    let settings = Settings::from_env()?;
    let updater = Updater::new(settings.update_options().ok_or(UpdaterError::NoSource)?)?;
    let running = running_version(path, &settings).await?;
    let (offered, available) = match updater.check(&running, None).await? {
        Checked::UpToDate(version) => (version, false),
        Checked::Ahead { offered, .. } => (offered, false),
        Checked::Available(offer) => (offer.version, true),
        // Unreachable without a cohort: an operator's check is never held back.
        Checked::OutsideRollout { offered, .. } => (offered, true),
        Checked::Refused(refusal) => return Err(ClientError::UpdateRefused(refusal.to_string())),
    };
    Ok(CheckFound {
        running: running.to_string(),
        offered: offered.to_string(),
        available,
        channel: settings.update_channel.as_str().to_string(),
    })
}

/// The version of the gateway that runs: the running supervisor's active gateway if one
/// answers, else the installed `current`, else what the configured binary reports.
async fn running_version(path: &Path, settings: &Settings) -> Result<Version, ClientError> {
    let bad = |err: &dyn std::fmt::Display| ClientError::RunningVersion(err.to_string());
    if let Ok(Body::Version(report)) = ask(path, Command::Version, |_| {}, Some(QUICK_ANSWER)).await
        && let Some(version) = report.gateway.and_then(|g| g.version)
    {
        return Version::parse(&version).map_err(|err| bad(&err));
    }
    if let Some(dir) = &settings.state_dir
        && let Some(version) = Layout::new(dir).current().map_err(|err| bad(&err))?
    {
        return Ok(version);
    }
    let binary = settings.gateway_binary()?;
    install::smoke_test(&binary, None, install::SMOKE_TIMEOUT)
        .await
        .map_err(|err| bad(&err))
}

fn to_json(value: &impl serde::Serialize) -> Result<String, ClientError> {
    serde_json::to_string(value).map_err(|err| ClientError::Unexpected(err.to_string()))
}

/// The human form of a status report.
pub fn render_status(r: &StatusReport) -> String {
    let gateway = |g: &control::GatewayInfo| {
        format!(
            "pid {}, version {}, {}{}, since {}",
            g.pid,
            g.version.as_deref().unwrap_or("unknown"),
            wire_name(&g.state),
            if g.health_only { " (health-only)" } else { "" },
            g.started_at
        )
    };
    let mut out = format!(
        "supervisor: {} (pid {}), {}\n",
        r.supervisor.version,
        r.supervisor.pid,
        wire_name(&r.state)
    );
    out += &format!(
        "active gateway: {}\n",
        r.active.as_ref().map_or("none".into(), gateway)
    );
    if let Some(c) = &r.candidate {
        out += &format!("candidate: {}\n", gateway(c));
    }
    if let Some(d) = &r.draining {
        out += &format!("draining: {}\n", gateway(d));
    }
    out += &format!(
        "updates: mode {}, channel {}, last check {}\n",
        r.update.mode,
        r.update.channel,
        match (&r.update.last_check, &r.update.last_result) {
            (Some(at), Some(result)) => format!("{at}: {result}"),
            _ => "never".into(),
        }
    );
    if let Some(version) = &r.update.available {
        out += &format!("update available: {version}\n");
    }
    if !r.quarantined.is_empty() {
        out += &format!("quarantined: {}\n", r.quarantined.join(", "));
    }
    if let Some(h) = &r.last_handoff {
        out += &format!(
            "last handoff: {} at {}: {}\n",
            if h.ok { "ok" } else { "failed" },
            h.at,
            h.message
        );
    }
    if r.crash_restarts > 0 {
        out += &format!("crash restarts: {}\n", r.crash_restarts);
    }
    if let Some(node) = &r.node {
        out += &format!("node: {} (rollout cohort {})\n", node.id, node.cohort);
    }
    if let Some(e) = &r.last_error {
        out += &format!("last error: {}: {}\n", e.at, e.message);
    }
    out
}

#[cfg(test)]
mod tests;
