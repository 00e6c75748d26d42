//! The operator commands that talk to a running supervisor (`status`, `version`,
//! `restart`, `update`, `rollback`) through [`control::client`], and `update --check`, which
//! reads the same environment as the supervisor and works without one. This module only
//! chooses the request and renders the answer: human output is short; `--json` prints one
//! JSON document on stdout, stable for scripts. Failures are a [`ClientError`] whose
//! one-line message `main` prints.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use semver::Version;

use crate::config::{ConfigError, Settings};
use crate::control::client::{CallError, ask};
use crate::control::{self, Body, Command, Progress, RestartReport, Stage, StatusReport};
use crate::install::{self, Layout};
use crate::update::{Checked, Updater, UpdaterError};
use crate::{EXIT_NO_SUPERVISOR, EXIT_UPDATE_AVAILABLE, VERSION};

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
    /// An answer of the wrong kind.
    #[error("unexpected answer from the supervisor: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Call(CallError::NoSupervisor { .. }) => EXIT_NO_SUPERVISOR,
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
/// a terminal, one plain line per event otherwise, nothing with `--json`.
struct ProgressView {
    quiet: bool,
    terminal: bool,
    prefix: &'static str,
    bar: Option<indicatif::ProgressBar>,
}

impl ProgressView {
    fn new(json: bool, prefix: &'static str) -> Self {
        use std::io::IsTerminal;
        ProgressView {
            quiet: json,
            terminal: std::io::stderr().is_terminal(),
            prefix,
            bar: None,
        }
    }

    fn show(&mut self, p: &Progress) {
        if self.quiet {
            return;
        }
        match (p.stage, p.done, p.total, self.terminal) {
            (Stage::Downloading, Some(done), Some(total), true) => {
                let bar = self.bar.get_or_insert_with(|| {
                    let bar = indicatif::ProgressBar::new(total);
                    if let Ok(style) = indicatif::ProgressStyle::with_template(
                        "{prefix}: [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    ) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar.set_prefix(self.prefix);
                    bar
                });
                bar.set_position(done);
            }
            _ => {
                if let Some(bar) = self.bar.take() {
                    bar.finish();
                }
                eprintln!("{}: {}", self.prefix, p.message);
            }
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

/// `aihummer update --check [--json]`: asks the CDN whether a newer version than the
/// running gateway's is offered. Returns the exit code: 0 up to date,
/// [`EXIT_UPDATE_AVAILABLE`] when one is; a refused manifest or a failed check is an error.
/// Needs no supervisor: it reads the same environment one would.
pub async fn update_check(path: &Path, json: bool) -> Result<u8, ClientError> {
    let settings = Settings::from_env()?;
    let updater = Updater::new(settings.update_options().ok_or(UpdaterError::NoSource)?)?;
    let running = running_version(path, &settings).await?;
    let checked = updater.check(&running, None).await?;
    // What the channel offers, beside `version` (the newest of it and what runs).
    let mut offered = None;
    let (code, result, version, line) = match &checked {
        Checked::UpToDate(version) => (
            0,
            "up_to_date",
            version,
            format!("up to date: {version} is the newest on this channel"),
        ),
        // A node ahead of its channel (after `update --version`, or a channel switch) has
        // nothing to install: up to date for a monitoring script, with both versions said.
        Checked::Ahead {
            running,
            offered: o,
        } => {
            offered = Some(o);
            (
                0,
                "up_to_date",
                running,
                format!("up to date: {running} runs; the channel offers {o}"),
            )
        }
        Checked::Available(offer) => (
            EXIT_UPDATE_AVAILABLE,
            "available",
            &offer.version,
            format!("update available: {} (running {running})", offer.version),
        ),
        Checked::Refused(refusal) => return Err(ClientError::UpdateRefused(refusal.to_string())),
    };
    if json {
        let doc = json!({
            "result": result,
            "version": version.to_string(),
            "running": running.to_string(),
            "offered": offered.unwrap_or(version).to_string(),
            "channel": settings.update_channel.as_str(),
        });
        println!("{doc}");
    } else {
        println!("{line}");
    }
    Ok(code)
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

/// A unit enum's wire name (`handing_off`), for human output that matches `--json`.
fn label(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "unknown".into(),
    }
}

/// The human form of a status report.
pub fn render_status(r: &StatusReport) -> String {
    let gateway = |g: &control::GatewayInfo| {
        format!(
            "pid {}, version {}, {}{}, since {}",
            g.pid,
            g.version.as_deref().unwrap_or("unknown"),
            label(&g.state),
            if g.health_only { " (health-only)" } else { "" },
            g.started_at
        )
    };
    let mut out = format!(
        "supervisor: {} (pid {}), {}\n",
        r.supervisor.version,
        r.supervisor.pid,
        label(&r.state)
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
    if let Some(e) = &r.last_error {
        out += &format!("last error: {}: {}\n", e.at, e.message);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::fixtures;
    use crate::control::{Event, SupervisorState};

    #[test]
    fn the_human_status_names_the_gateway_and_the_last_error() {
        let mut report = fixtures::status();
        report.state = SupervisorState::HandingOff;
        if let Some(active) = &mut report.active {
            active.health_only = true;
        }
        report.last_error = Some(Event {
            at: "t2".into(),
            message: "the new gateway (pid 2) exited with exit code 1".into(),
        });
        let text = render_status(&report);
        assert!(
            text.contains("supervisor: 1.0.0 (pid 1), handing_off"),
            "{text}"
        );
        assert!(
            text.contains("active gateway: pid 2, version 1.0.0, ready (health-only)"),
            "{text}"
        );
        assert!(
            text.contains("last error: t2: the new gateway (pid 2) exited"),
            "{text}"
        );
    }

    #[test]
    fn only_a_missing_supervisor_has_its_own_exit_code() {
        let missing = ClientError::from(CallError::NoSupervisor {
            path: "/run/x.sock".into(),
            reason: "No such file or directory".into(),
        });
        assert_eq!(missing.exit_code(), EXIT_NO_SUPERVISOR);
        assert!(
            missing
                .to_string()
                .starts_with("no supervisor is running at /run/x.sock")
        );
        let failed = ClientError::from(CallError::Failed("x".into()));
        assert_eq!(failed.exit_code(), 1);
        assert_eq!(ClientError::UpdateRefused("x".into()).exit_code(), 1);
    }
}
