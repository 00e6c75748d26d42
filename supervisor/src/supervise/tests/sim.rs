//! A simulated world for the machine: gateways that become ready (or not) after some
//! probes, drain (or ignore SIGTERM), and crash when told to; an install dir; clients;
//! and a clock that only moves when a test says so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use semver::Version;

use crate::process::probe::Verdict;
use crate::supervise::events::{
    Binary, CheckReport, CheckRequest, ChildId, ClientId, Effect, FailureKind, Found, Input,
    InstallView, Outcome, Permit, Reply, StageFailure, Staged,
};
use crate::supervise::machine::{Config, Machine};

/// How a gateway the world starts behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behaviour {
    /// `exec` fails.
    pub spawn_fails: bool,
    /// Probes answered "not ready" before the first "ready"; `None`: never ready.
    pub ready_after: Option<u32>,
    /// Reports a version other than the one it was started as, when it is a staged
    /// release (a mislabelled artifact); installed binaries report what they are.
    pub wrong_version: bool,
    /// How long it drains after SIGTERM; `None`: it ignores SIGTERM.
    pub drains_for: Option<Duration>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            spawn_fails: false,
            ready_after: Some(0),
            wrong_version: false,
            drains_for: Some(Duration::from_millis(50)),
        }
    }
}

/// A child as the world sees it.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    pub version: Version,
    pub behaviour: Behaviour,
    pub probes: u32,
    /// Answers probes "not ready" (its database is down), whatever its behaviour.
    pub unready: bool,
}

/// The simulated world around one machine.
pub struct World {
    pub machine: Machine,
    pub now: Instant,
    /// Every effect the machine asked for, with when.
    pub effects: Vec<(Instant, Effect)>,
    /// Children running now.
    pub live: BTreeMap<ChildId, Process>,
    /// Every child ever started.
    pub started: Vec<ChildId>,
    /// Behaviours for the next children started, in order; then the default.
    pub next_behaviours: Vec<Behaviour>,
    /// Inputs due later (probe answers, exits after a drain).
    pending: Vec<(Instant, Input)>,
    /// Checks asked for and not answered yet.
    pub checks: Vec<CheckRequest>,
    /// What each client was told.
    pub replies: BTreeMap<ClientId, Vec<Reply>>,
    next_client: u64,
    next_pid: u32,
    /// The install dir: `current` and `previous`.
    pub current: Version,
    pub previous: Option<Version>,
    pub quarantined: BTreeSet<String>,
    /// When the machine asked to exit.
    pub exited_at: Option<Instant>,
    /// When the first stop was sent.
    pub stop_at: Option<Instant>,
    /// Whether the node is in a fleet: a granted permit takes the rollout lease.
    pub fleet: bool,
    /// Permits for the next automatic checks that find a version, in order; then a grant.
    pub permits: Vec<Permit>,
    /// The version this node holds the fleet's lease for, as the database would say.
    pub lease: Option<Version>,
    /// Versions halted fleet-wide by this node.
    pub halted: BTreeSet<String>,
}

pub fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

/// A config with short timeouts: ready within 2s, drain within 1s (+2s grace).
pub fn config() -> Config {
    Config {
        ready_timeout: Duration::from_secs(2),
        drain_timeout: Duration::from_secs(1),
        shutdown_delay: Duration::ZERO,
        soak_window: Duration::from_secs(300),
        apply: false,
        update_source: Ok(()),
        install: Some(InstallView {
            current: Some(v("1.0.0")),
            previous: Some(v("0.9.0")),
            quarantined: Vec::new(),
        }),
    }
}

impl World {
    /// A world whose machine starts at once with `config`; the first gateway runs 1.0.0.
    pub fn new(config: Config) -> World {
        World::with(config, Vec::new())
    }

    /// As [`World::new`], the first children behaving as `behaviours` say.
    pub fn with(config: Config, behaviours: Vec<Behaviour>) -> World {
        let start = Instant::now();
        let previous = config.install.as_ref().and_then(|i| i.previous.clone());
        let machine = Machine::new(config, start);
        let mut world = World {
            machine,
            now: start,
            effects: Vec::new(),
            live: BTreeMap::new(),
            started: Vec::new(),
            next_behaviours: behaviours,
            pending: Vec::new(),
            checks: Vec::new(),
            replies: BTreeMap::new(),
            next_client: 0,
            next_pid: 100,
            current: v("1.0.0"),
            previous,
            quarantined: BTreeSet::new(),
            exited_at: None,
            stop_at: None,
            fleet: false,
            permits: Vec::new(),
            lease: None,
            halted: BTreeSet::new(),
        };
        world.settle();
        world
    }

    /// Hands `input` to the machine now and carries out what it asks for.
    pub fn input(&mut self, input: Input) {
        if let Input::Stop(_) = input {
            self.stop_at.get_or_insert(self.now);
        }
        self.machine.handle(self.now, input);
        self.settle();
    }

    /// A new client id.
    pub fn client(&mut self) -> ClientId {
        self.next_client += 1;
        let client = ClientId(self.next_client);
        self.replies.insert(client, Vec::new());
        client
    }

    /// Lets `duration` pass, delivering everything due meanwhile in time order.
    pub fn advance(&mut self, duration: Duration) {
        let until = self.now + duration;
        loop {
            let due_input = self.pending.iter().map(|(at, _)| *at).min();
            let due_timeout = self.machine.poll_timeout();
            let next = [due_input, due_timeout].into_iter().flatten().min();
            match next {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    if due_input == Some(at) {
                        let index = self
                            .pending
                            .iter()
                            .position(|(when, _)| *when == at)
                            .expect("a due input");
                        let (_, input) = self.pending.remove(index);
                        self.deliver(input);
                    } else {
                        self.machine.handle_timeout(self.now);
                        self.settle();
                    }
                }
                _ => break,
            }
        }
        self.now = until;
    }

    /// The child `child` crashes on its own now.
    pub fn crash(&mut self, child: ChildId) {
        if self.live.remove(&child).is_some() {
            self.machine.handle(
                self.now,
                Input::Exited {
                    child,
                    status: "exit code 1".into(),
                },
            );
            self.settle();
        }
    }

    /// Answers the oldest outstanding check with `found` and, when it asked for a stage,
    /// `staged`.
    pub fn finish_check(&mut self, found: Found, staged: Option<Result<Version, bool>>) -> bool {
        if self.checks.is_empty() {
            return false;
        }
        let request = self.checks.remove(0);
        let permit = match &found {
            Found::Available(version) if request.automatic && request.stage => {
                let permit = if self.permits.is_empty() {
                    Permit::Granted { lease: self.fleet }
                } else {
                    self.permits.remove(0)
                };
                if permit == (Permit::Granted { lease: true }) {
                    self.lease = Some(version.clone());
                }
                Some(permit)
            }
            _ => None,
        };
        let granted = permit
            .as_ref()
            .is_none_or(|permit| matches!(permit, Permit::Granted { .. }));
        let staged = staged
            .filter(|_| request.stage && granted)
            .map(|result| match result {
                Ok(version) => Staged {
                    result: Ok(PathBuf::from(format!(
                        "/versions/{version}/aihummer-gateway"
                    ))),
                    version,
                },
                Err(blames_release) => Staged {
                    version: v("1.5.0"),
                    result: Err(StageFailure {
                        message: "sha256 mismatch".into(),
                        blames_release,
                    }),
                },
            });
        self.machine.handle(
            self.now,
            Input::Checked(CheckReport {
                explicit: request.explicit,
                check_only: request.check_only,
                found,
                staged,
                permit,
            }),
        );
        self.settle();
        true
    }

    /// The child serving, as the machine's status says.
    pub fn serving(&self) -> Option<ChildId> {
        let pid = self.machine.status().active.as_ref()?.pid;
        self.live
            .iter()
            .find(|(_, p)| p.pid == pid)
            .map(|(id, _)| *id)
    }

    /// The final outcomes a client got.
    pub fn outcomes(&self, client: ClientId) -> Vec<Outcome> {
        self.replies[&client]
            .iter()
            .filter_map(|r| match r {
                Reply::Done(outcome) => Some(outcome.clone()),
                Reply::Step(_) => None,
            })
            .collect()
    }

    /// How many times an effect matching `f` was asked for.
    pub fn count(&self, f: impl Fn(&Effect) -> bool) -> usize {
        self.effects.iter().filter(|(_, e)| f(e)).count()
    }

    fn deliver(&mut self, input: Input) {
        match &input {
            Input::Exited { child, .. } | Input::Probed { child, .. } => {
                if !self.live.contains_key(child) {
                    return;
                }
                if let Input::Exited { .. } = input {
                    self.live.remove(child);
                }
            }
            _ => {}
        }
        self.machine.handle(self.now, input);
        self.settle();
    }

    /// Carries out every effect, the way the driver does: results known at once are fed
    /// back at once, the rest are scheduled.
    pub fn settle(&mut self) {
        loop {
            let effects = self.machine.take_effects();
            if effects.is_empty() {
                return;
            }
            for effect in effects {
                self.effects.push((self.now, effect.clone()));
                if let Some(input) = self.perform(effect) {
                    self.machine.handle(self.now, input);
                }
            }
        }
    }

    fn perform(&mut self, effect: Effect) -> Option<Input> {
        let now = self.now;
        match effect {
            Effect::Spawn { child, binary } => {
                let behaviour = if self.next_behaviours.is_empty() {
                    Behaviour::default()
                } else {
                    self.next_behaviours.remove(0)
                };
                if behaviour.spawn_fails {
                    return Some(Input::SpawnFailed {
                        child,
                        reason: "no such file".into(),
                    });
                }
                let version = match &binary {
                    Binary::Current => self.current.clone(),
                    Binary::Installed(version) => version.clone(),
                    Binary::Staged(path) => {
                        let dir = path.parent().and_then(|p| p.file_name());
                        v(dir.and_then(|d| d.to_str()).unwrap_or("0.0.1"))
                    }
                };
                let mut behaviour = behaviour;
                behaviour.wrong_version &= matches!(binary, Binary::Staged(_));
                self.next_pid += 1;
                let pid = self.next_pid;
                self.started.push(child);
                self.live.insert(
                    child,
                    Process {
                        pid,
                        version,
                        behaviour,
                        probes: 0,
                        unready: false,
                    },
                );
                Some(Input::Spawned {
                    child,
                    pid,
                    binary: PathBuf::from(format!("/bin/gateway-{pid}")),
                })
            }
            Effect::Probe(child) => {
                let process = self.live.get_mut(&child)?;
                process.probes += 1;
                let verdict = match process.behaviour.ready_after {
                    _ if process.unready => Verdict::NotReady("database unavailable".into()),
                    Some(after) if process.probes > after => Verdict::Ready {
                        version: if process.behaviour.wrong_version {
                            "6.6.6".into()
                        } else {
                            process.version.to_string()
                        },
                        health_only: false,
                    },
                    _ => Verdict::NotReady("migrations running".into()),
                };
                self.pending.push((
                    now + Duration::from_millis(2),
                    Input::Probed { child, verdict },
                ));
                None
            }
            Effect::Terminate(child) => {
                let process = self.live.get(&child)?;
                if let Some(drain) = process.behaviour.drains_for {
                    let status = "exit code 0".to_string();
                    self.pending
                        .push((now + drain, Input::Exited { child, status }));
                }
                None
            }
            Effect::Kill(child) => {
                self.live.remove(&child)?;
                Some(Input::Exited {
                    child,
                    status: "signal 9 (SIGKILL)".into(),
                })
            }
            Effect::Reply { client, reply } => {
                self.replies.entry(client).or_default().push(reply);
                None
            }
            Effect::Notify(_) | Effect::Withdraw(_) => None,
            Effect::Check(request) => {
                self.checks.push(request);
                None
            }
            Effect::Switch(version) => {
                let old = std::mem::replace(&mut self.current, version.clone());
                self.previous = [Some(old), self.previous.take()]
                    .into_iter()
                    .flatten()
                    .find(|p| *p != version && !self.quarantined.contains(&p.to_string()));
                Some(Input::Switched {
                    version,
                    result: Ok(self.install()),
                })
            }
            Effect::ReleaseLease => {
                self.lease = None;
                None
            }
            Effect::Quarantine { version, reason } => {
                self.quarantined.insert(version.to_string());
                self.halted.insert(version.to_string());
                if self.lease.as_ref() == Some(&version) {
                    self.lease = None;
                }
                if self.previous.as_ref() == Some(&version) {
                    self.previous = None;
                }
                Some(Input::Quarantined {
                    version,
                    reason,
                    result: Ok(self.install()),
                })
            }
            Effect::Exit => {
                self.exited_at.get_or_insert(now);
                None
            }
        }
    }
}

impl World {
    /// The install dir as the driver would report it.
    fn install(&self) -> InstallView {
        InstallView {
            current: Some(self.current.clone()),
            previous: self.previous.clone(),
            quarantined: self
                .quarantined
                .iter()
                .map(|q| format!("{q}: .."))
                .collect(),
        }
    }

    /// The world after the first gateway became ready.
    pub fn serving_one(config: Config) -> World {
        let mut world = World::new(config);
        world.advance(Duration::from_millis(10));
        assert!(world.serving().is_some(), "the first gateway serves");
        world
    }
}

/// One millisecond, the scenarios' smallest step.
pub const MS: Duration = Duration::from_millis(1);

/// A gateway that never becomes ready.
pub fn never_ready() -> Behaviour {
    Behaviour {
        ready_after: None,
        ..Behaviour::default()
    }
}

/// A gateway that never becomes ready and drains quickly: a start that keeps failing.
pub fn crash_looping() -> Behaviour {
    Behaviour {
        ready_after: None,
        drains_for: Some(Duration::from_millis(20)),
        ..Behaviour::default()
    }
}

/// The failure a client was told, when its one outcome is a failure.
pub fn failed(outcomes: &[Outcome]) -> Option<(FailureKind, String)> {
    match outcomes {
        [Outcome::Failed { kind, message }] => Some((*kind, message.clone())),
        _ => None,
    }
}
