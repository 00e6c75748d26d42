//! The machine's vocabulary: the inputs it is fed, the effects it asks for, and what it
//! tells waiting clients. Plain data: no channels, no sockets, no processes, so the
//! machine can be driven by a test as easily as by [`super::driver`].
//!
//! Children and clients are named by ids the machine hands out ([`ChildId`]) or the
//! driver does ([`ClientId`]); the driver keeps what those ids stand for.

use std::path::PathBuf;
use std::time::Duration;

use semver::Version;

pub use crate::control::Stage;
use crate::process::probe::Verdict;

/// A gateway child, as the machine names it (pids are known only once it runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildId(pub u64);

/// A control-socket client waiting for an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// Something for the machine to act on. Each comes with the time it is handled at.
#[derive(Debug, Clone)]
pub enum Input {
    /// SIGTERM or SIGINT: drain every gateway and exit.
    Stop(&'static str),
    /// SIGHUP or the periodic timer: check for an update.
    CheckRequested,
    /// `aihummer restart`.
    Restart(ClientId),
    /// `aihummer update [--version X]`.
    Update {
        /// Who waits for the outcome.
        client: ClientId,
        /// The version asked for, as typed.
        version: Option<String>,
    },
    /// `aihummer rollback`.
    Rollback(ClientId),
    /// `aihummer update --check`: check the channel now, install nothing.
    CheckOnly(ClientId),
    /// Download progress of the update clients wait on.
    UpdateProgress(Step),
    /// A check (and a stage, when asked) ended.
    Checked(CheckReport),
    /// A child asked for by [`Effect::Spawn`] runs.
    Spawned {
        /// The child.
        child: ChildId,
        /// Its pid.
        pid: u32,
        /// The binary it runs, resolved.
        binary: PathBuf,
    },
    /// A child asked for by [`Effect::Spawn`] could not be started.
    SpawnFailed {
        /// The child.
        child: ChildId,
        /// Why, for people.
        reason: String,
    },
    /// A probe asked for by [`Effect::Probe`] answered (or gave up).
    Probed {
        /// The child probed.
        child: ChildId,
        /// What the probe learned.
        verdict: Verdict,
    },
    /// A child exited and was reaped.
    Exited {
        /// The child.
        child: ChildId,
        /// Its exit status, described for people.
        status: String,
    },
    /// An [`Effect::Switch`] was carried out: `current` names `version` now, or the
    /// reason it does not.
    Switched {
        /// The version switched to.
        version: Version,
        /// The install after the switch, or why the switch failed.
        result: Result<InstallView, String>,
    },
    /// An [`Effect::Quarantine`] was carried out.
    Quarantined {
        /// The version quarantined.
        version: Version,
        /// Why it was.
        reason: String,
        /// The install after the quarantine, or why it could not be saved.
        result: Result<InstallView, String>,
    },
}

/// The install dir, as the driver last read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallView {
    /// The version that runs when nothing else is asked for.
    pub current: Option<Version>,
    /// The rollback target (never a quarantined version).
    pub previous: Option<Version>,
    /// The quarantine, as `status` lists it (`version: reason`).
    pub quarantined: Vec<String>,
}

/// Which binary a new child runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binary {
    /// Whatever is installed (`current`) or configured: a restart or a plain start.
    Current,
    /// This installed version (`versions/<version>/`): a rollback.
    Installed(Version),
    /// This freshly staged file: an update.
    Staged(PathBuf),
}

/// What the machine asks its driver to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Start a gateway; answer with [`Input::Spawned`] or [`Input::SpawnFailed`].
    Spawn {
        /// The id to report it under.
        child: ChildId,
        /// What to run.
        binary: Binary,
    },
    /// Probe a child's readiness; answer with [`Input::Probed`].
    Probe(ChildId),
    /// Send SIGUSR1: the child turns `/readyz` 503 and keeps serving.
    Withdraw(ChildId),
    /// Send SIGTERM: the child drains and exits.
    Terminate(ChildId),
    /// Send SIGKILL: the drain deadline passed.
    Kill(ChildId),
    /// Tell a waiting client something.
    Reply {
        /// Who.
        client: ClientId,
        /// What.
        reply: Reply,
    },
    /// Tell systemd something.
    Notify(Notify),
    /// Run an update check (and a stage) off the loop; answer with [`Input::Checked`].
    Check(CheckRequest),
    /// Point `current` at `version`; answer with [`Input::Switched`].
    Switch(Version),
    /// Give the fleet's rollout lease back (the version soaked, or its handoff did not
    /// happen through no fault of its own). Fire and forget.
    ReleaseLease,
    /// Quarantine `version` (and halt it fleet-wide, freeing the rollout lease if it was
    /// taken for it); answer with [`Input::Quarantined`].
    Quarantine {
        /// The version.
        version: Version,
        /// Why.
        reason: String,
    },
    /// Every child is gone after a stop: the supervisor may exit.
    Exit,
}

/// A systemd notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    /// `READY=1` with a status line: the first gateway serves.
    Ready(String),
    /// `STATUS=`: a one-line status.
    Status(String),
    /// `STOPPING=1`.
    Stopping,
}

/// What the pipeline is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    /// The version serving now.
    pub running: Version,
    /// The version an operator asked for by name.
    pub requested: Option<Version>,
    /// Whether to stage an available version.
    pub stage: bool,
    /// Whether `aihummer update` asked (its clients get progress and the outcome).
    pub explicit: bool,
    /// Whether `aihummer update --check` asked (its clients get the outcome).
    pub check_only: bool,
    /// Whether the check runs on its own (the timer, SIGHUP, a retry): a partial rollout
    /// may hold it back, and when it stages, the handoff needs a [`Permit`] first.
    pub automatic: bool,
}

/// Whether an automatic update may hand off now: the update window, and in a fleet the
/// rollout lease and the halted versions, say so before anything is staged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    /// Hand off; `lease` says whether the fleet's rollout lease was taken for it (given
    /// back once the version has soaked).
    Granted {
        /// Whether the lease is held now.
        lease: bool,
    },
    /// Not now: why, and when to check again.
    Wait {
        /// For people.
        reason: String,
        /// When to check again.
        retry_in: Duration,
    },
    /// The fleet halted the version; why.
    Halted(String),
}

/// What a check found, as the machine needs it.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// Whether `aihummer update` asked for it.
    pub explicit: bool,
    /// Whether `aihummer update --check` asked for it.
    pub check_only: bool,
    /// The check's outcome.
    pub found: Found,
    /// The stage of the version found, when one was asked for.
    pub staged: Option<Staged>,
    /// For an automatic check in `apply` mode that found a version: whether it may be
    /// installed now (nothing is staged without a grant).
    pub permit: Option<Permit>,
}

/// A check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The running version is the channel's.
    UpToDate(Version),
    /// The running version is newer than the channel's offer (installed by name, or the
    /// channel was switched): nothing to install.
    Ahead {
        /// The version serving.
        running: Version,
        /// The channel's newest.
        offered: Version,
    },
    /// A newer version is on offer.
    Available(Version),
    /// A newer version is rolled out to a share of the fleet this node is not in yet.
    OutsideRollout {
        /// The version on offer.
        offered: Version,
        /// Its rollout percentage.
        rollout: u8,
        /// This node's cohort.
        cohort: u8,
    },
    /// The channel offers something this install refuses; the reason.
    Refused(String),
    /// The check could not be done; the reason.
    Failed(String),
}

/// A staged version, or why staging it failed.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The version.
    pub version: Version,
    /// Where it lies now, or why staging failed.
    pub result: Result<PathBuf, StageFailure>,
}

/// Why staging failed.
#[derive(Debug, Clone)]
pub struct StageFailure {
    /// For people.
    pub message: String,
    /// Whether the release itself is at fault (a bad hash, a binary that does not run),
    /// which quarantines it, rather than this host or the network.
    pub blames_release: bool,
}

/// What a waiting client is told: steps, then exactly one outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A step of the operation.
    Step(Step),
    /// The end.
    Done(Outcome),
}

/// A step of a handoff or an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Which.
    pub stage: Stage,
    /// For people.
    pub message: String,
    /// The gateway it concerns.
    pub pid: Option<u32>,
    /// Bytes downloaded so far and in all ([`Stage::Downloading`]).
    pub bytes: Option<(u64, u64)>,
}

/// How a client's request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A gateway serves after a start, restart, update or rollback.
    HandedOff {
        /// The gateway it took over from, if one served.
        old_pid: Option<u32>,
        /// The gateway serving now.
        new_pid: u32,
        /// The version it reported.
        version: Option<String>,
        /// From the request to the old gateway gone.
        took: Duration,
    },
    /// Nothing newer: this version serves and is the channel's.
    UpToDate(Version),
    /// What `aihummer update --check` found (nothing was installed).
    Checked {
        /// The version serving, the check was made against.
        running: Version,
        /// The channel's newest version.
        offered: Version,
        /// Whether `offered` is newer than `running` and may be installed.
        available: bool,
    },
    /// The request failed or was refused; the old gateway, if any, still serves.
    Failed {
        /// What kind of failure.
        kind: FailureKind,
        /// One line for people.
        message: String,
    },
}

/// Kinds of [`Outcome::Failed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A start or handoff is under way; try again once it ends.
    Busy,
    /// The candidate did not take over.
    HandoffFailed,
    /// The update was refused or could not be checked, downloaded or staged.
    UpdateFailed,
    /// There is no version to roll back to.
    NoRollback,
    /// The supervisor is stopping.
    Stopping,
}

impl Outcome {
    /// A failure of `kind`.
    pub fn failed(kind: FailureKind, message: impl Into<String>) -> Outcome {
        Outcome::Failed {
            kind,
            message: message.into(),
        }
    }
}
