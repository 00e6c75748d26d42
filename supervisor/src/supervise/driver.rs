//! The thin async driver around [`Machine`]: it feeds the machine inputs (from its inbox)
//! and the time, and carries out the effects the machine asks for: spawning and
//! signalling gateways, probing them, running update checks off the loop, switching the
//! install, replying to clients and notifying systemd. It decides nothing itself.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use semver::Version;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::check_task::Checker;
use super::coordination::Coordination;
use super::events::{Binary, ChildId, ClientId, Effect, Input, InstallView, Notify};
use super::inputs::{self, Message};
use super::machine::{Config, Machine};
use super::metrics::{Observer, Registered};
use crate::config::{Settings, UpdateMode};
use crate::control::{Body, NodeIdentity, ProcessInfo, StatusReport};
use crate::fleet::NodeId;
use crate::install::{self, Layout};
use crate::process::child::{self, Gateway};
use crate::process::{notify, probe};
use crate::update::{Updater, UpdaterError};

/// What the rest of the process reads from a running supervisor.
pub struct Views {
    /// The status report, updated on every change.
    pub status: watch::Receiver<StatusReport>,
    /// The supervisor's metrics.
    pub metrics: Registered,
    /// The serving gateway's probe listener, where its own metrics are read.
    pub active_probe: watch::Receiver<Option<SocketAddr>>,
}

/// How often the loop pulses when nothing else happens: the watchdog and the start
/// extension ride on it.
const PULSE: Duration = Duration::from_secs(5);
/// Margin added to a start extension, so systemd's deadline always outlasts the next pulse.
const EXTEND_MARGIN: Duration = Duration::from_secs(15);

/// Owns the public listener, every gateway child and the machine deciding about them.
pub struct Driver {
    settings: Settings,
    public: TcpListener,
    machine: Machine,
    inbox: mpsc::UnboundedReceiver<Message>,
    sender: mpsc::UnboundedSender<Message>,
    checker: Option<Checker>,
    coordination: Coordination,
    layout: Option<Layout>,
    children: HashMap<ChildId, Gateway>,
    clients: HashMap<ClientId, mpsc::UnboundedSender<Body>>,
    next_client: u64,
    me: ProcessInfo,
    node: NodeIdentity,
    status: watch::Sender<StatusReport>,
    /// Whether systemd was told the service is ready.
    announced: bool,
    observer: Observer,
    active_probe: watch::Sender<Option<SocketAddr>>,
}

impl Driver {
    /// A supervisor serving `public`, taking its inputs from `inbox`, into which `sender`
    /// sends. `updater` is the update pipeline, if a CDN is configured; `node` is this
    /// node's id, and `coordination` its update window and fleet. Installs the
    /// gateway about to run into an empty install dir first, so a rollback target exists
    /// after the first update.
    pub async fn new(
        settings: Settings,
        public: TcpListener,
        (sender, inbox): (
            mpsc::UnboundedSender<Message>,
            mpsc::UnboundedReceiver<Message>,
        ),
        updater: Option<Updater>,
        (node, coordination): (NodeId, Coordination),
    ) -> Result<(Self, Views), prometheus::Error> {
        let metrics = Registered::new()?;
        let layout = settings.state_dir.clone().map(Layout::new);
        if let Some(layout) = &layout {
            install_bootstrap(&settings, layout).await;
        }
        let install = layout.as_ref().map(|layout| match layout.repair() {
            Ok(state) => view(&state),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the install state");
                InstallView::default()
            }
        });
        let config = Config {
            ready_timeout: settings.ready_timeout,
            drain_timeout: settings.drain_timeout,
            shutdown_delay: settings.shutdown_delay,
            soak_window: settings.soak_window,
            apply: settings.update_mode == UpdateMode::Apply,
            update_source: match &updater {
                Some(_) => Ok(()),
                None => Err(UpdaterError::NoSource.to_string()),
            },
            install,
        };
        let now = Instant::now();
        let machine = Machine::new(config, now.into_std());
        let checker = updater.map(|updater| Checker {
            updater: Arc::new(updater),
            layout: layout.clone(),
            coordination: coordination.clone(),
            cohort: node.cohort(),
            sender: sender.clone(),
        });
        let me = ProcessInfo {
            version: crate::VERSION.to_string(),
            pid: std::process::id(),
            started_at: super::status::rfc3339(SystemTime::now()),
        };
        let node = NodeIdentity {
            id: node.to_string(),
            cohort: node.cohort(),
        };
        let mut report = machine.status().report(
            me.clone(),
            (
                settings.update_mode.as_str(),
                settings.update_channel.as_str(),
            ),
            (now.into_std(), SystemTime::now()),
        );
        report.node = Some(node.clone());
        let (status, status_rx) = watch::channel(report);
        let (active_probe, active_probe_rx) = watch::channel(None);
        let driver = Driver {
            settings,
            public,
            machine,
            inbox,
            sender,
            checker,
            coordination,
            layout,
            children: HashMap::new(),
            clients: HashMap::new(),
            next_client: 0,
            me,
            node,
            status,
            announced: false,
            observer: Observer::new(metrics.clone()),
            active_probe,
        };
        let views = Views {
            status: status_rx,
            metrics,
            active_probe: active_probe_rx,
        };
        Ok((driver, views))
    }

    /// Runs until a stop has drained every child.
    pub async fn run(mut self) {
        if self.settings.update_mode != UpdateMode::Off {
            tokio::spawn(inputs::update_timer(
                self.sender.clone(),
                self.settings.update_interval,
            ));
        }
        let watchdog = notify::watchdog_interval();
        if let Some(interval) = watchdog {
            tracing::info!(interval = ?interval, "systemd watchdog enabled");
        }
        let period = watchdog.map_or(PULSE, |w| (w / 2).min(PULSE));
        let mut pulse = tokio::time::interval(period.max(Duration::from_millis(10)));
        pulse.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.carry_out();
            self.publish();
            if self.machine.is_stopped() {
                return;
            }
            let timeout = self.machine.poll_timeout().map(Instant::from_std);
            tokio::select! {
                _ = pulse.tick() => self.pulse(watchdog.is_some()),
                message = self.inbox.recv() => match message {
                    Some(message) => self.receive(message),
                    // Every sender is gone: nothing more can arrive but the timeouts.
                    None => std::future::pending::<()>().await,
                },
                () = sleep_until(timeout) => {
                    self.machine.handle_timeout(Instant::now().into_std());
                }
            }
        }
    }

    /// The loop turned: pet the watchdog, and while the first gateway is gated, ask
    /// systemd to wait for it rather than kill the start at `TimeoutStartSec`.
    fn pulse(&self, watchdog: bool) {
        if watchdog {
            notify::watchdog();
        }
        if !self.announced
            && let Some(deadline) = self.machine.first_start_deadline()
        {
            let left = deadline.saturating_duration_since(Instant::now().into_std());
            notify::extend_start(left + super::machine::DRAIN_GRACE + EXTEND_MARGIN);
        }
    }

    fn receive(&mut self, message: Message) {
        let input = match message {
            Message::Input(input) => input,
            Message::Client { request, replies } => {
                let client = ClientId(self.next_client);
                self.next_client += 1;
                self.clients.insert(client, replies);
                request.input(client)
            }
        };
        let exited = match &input {
            Input::Exited { child, .. } => Some(*child),
            _ => None,
        };
        match &input {
            Input::Exited { child, .. } => self.observer.exited(Instant::now().into_std(), *child),
            Input::Checked(report) => self.observer.checked(&report.found, SystemTime::now()),
            _ => {}
        }
        self.machine.handle(Instant::now().into_std(), input);
        if let Some(child) = exited {
            self.children.remove(&child);
        }
    }

    /// Carries out every effect asked for, feeding back the results that are known at
    /// once, until the machine asks for nothing more.
    fn carry_out(&mut self) {
        loop {
            let effects = self.machine.take_effects();
            if effects.is_empty() {
                return;
            }
            for effect in effects {
                if let Some(input) = self.perform(effect) {
                    self.machine.handle(Instant::now().into_std(), input);
                }
            }
        }
    }

    fn perform(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Spawn { child, binary } => {
                let serving = self.machine.status().active.is_some();
                let spawned = self.spawn(child, binary.clone());
                let now = Instant::now().into_std();
                self.observer
                    .spawned(now, child, &binary, serving, &spawned);
                Some(spawned)
            }
            Effect::Probe(child) => {
                if let Some(gateway) = self.children.get(&child) {
                    let (addr, pid) = (gateway.probe, gateway.pid);
                    let sender = self.sender.clone();
                    tokio::spawn(async move {
                        let verdict = probe::readiness(addr, pid).await;
                        let _ = sender.send(Message::Input(Input::Probed { child, verdict }));
                    });
                }
                None
            }
            Effect::Withdraw(child) => {
                if let Some(gateway) = self.children.get(&child) {
                    gateway.withdraw();
                }
                None
            }
            Effect::Terminate(child) => {
                if let Some(gateway) = self.children.get(&child) {
                    gateway.terminate();
                }
                None
            }
            Effect::Kill(child) => {
                if let Some(gateway) = self.children.get(&child) {
                    gateway.kill();
                }
                None
            }
            Effect::Reply { client, reply } => {
                let done = matches!(reply, super::events::Reply::Done(_));
                if let Some(replies) = self.clients.get(&client) {
                    // A client that went away is simply forgotten; the operation goes on.
                    let _ = replies.send(inputs::body(reply));
                }
                if done {
                    self.clients.remove(&client);
                }
                None
            }
            Effect::Notify(Notify::Ready(line)) => {
                self.announced = true;
                notify::ready(&line);
                None
            }
            Effect::Notify(Notify::Status(line)) => {
                notify::status(&line);
                None
            }
            Effect::Notify(Notify::Stopping) => {
                notify::stopping();
                None
            }
            Effect::Check(request) => {
                if let Some(checker) = &self.checker {
                    checker.spawn(request);
                }
                None
            }
            Effect::ReleaseLease => {
                self.coordination.release();
                None
            }
            Effect::Switch(version) => Some(self.switch(version)),
            Effect::Quarantine { version, reason } => {
                self.coordination.halt(version.clone(), reason.clone());
                Some(self.quarantine(version, reason))
            }
            Effect::Exit => None,
        }
    }

    fn spawn(&mut self, child: ChildId, binary: Binary) -> Input {
        let path = match binary {
            Binary::Current => self
                .settings
                .gateway_binary()
                .map_err(|err| err.to_string()),
            Binary::Installed(version) => match &self.layout {
                Some(layout) => Ok(layout.binary(&version)),
                None => Err(format!(
                    "{version} is not installed: AIHUMMER_STATE_DIR is unset"
                )),
            },
            Binary::Staged(path) => Ok(path),
        };
        let sender = self.sender.clone();
        let spawned = path.and_then(|path| {
            let on_exit = move |status| {
                let status = child::describe(status);
                let _ = sender.send(Message::Input(Input::Exited { child, status }));
            };
            Gateway::spawn(&path, &self.public, &self.settings.launch, on_exit)
                .map(|gateway| (gateway, path))
                .map_err(|err| err.to_string())
        });
        match spawned {
            Ok((gateway, binary)) => {
                let pid = gateway.pid;
                self.children.insert(child, gateway);
                Input::Spawned { child, pid, binary }
            }
            Err(reason) => Input::SpawnFailed { child, reason },
        }
    }

    fn switch(&self, version: Version) -> Input {
        let result = match &self.layout {
            Some(layout) => install::switch(layout, &version)
                .map(|state| view(&state))
                .map_err(|err| err.to_string()),
            None => Err("AIHUMMER_STATE_DIR is unset".to_string()),
        };
        Input::Switched { version, result }
    }

    fn quarantine(&self, version: Version, reason: String) -> Input {
        let result = match &self.layout {
            Some(layout) => install::quarantine(layout, &version, &reason)
                .map(|state| view(&state))
                .map_err(|err| err.to_string()),
            None => Err("AIHUMMER_STATE_DIR is unset".to_string()),
        };
        Input::Quarantined {
            version,
            reason,
            result,
        }
    }

    /// Publishes the status when it changed, and the metrics derived from it.
    fn publish(&mut self) {
        let status = self.machine.status();
        self.observer.observe(Instant::now().into_std(), status);
        let probe = status.active.as_ref().and_then(|active| {
            self.children
                .values()
                .find(|gateway| gateway.pid == active.pid)
                .map(|gateway| gateway.probe)
        });
        self.active_probe.send_if_modified(|current| {
            let changed = *current != probe;
            *current = probe;
            changed
        });
        let mut report = self.machine.status().report(
            self.me.clone(),
            (
                self.settings.update_mode.as_str(),
                self.settings.update_channel.as_str(),
            ),
            (Instant::now().into_std(), SystemTime::now()),
        );
        report.node = Some(self.node.clone());
        self.status.send_if_modified(|current| {
            let changed = *current != report;
            if changed {
                *current = report;
            }
            changed
        });
    }
}

/// On a first start with an install dir but nothing installed, installs the gateway
/// about to run as `versions/<its version>/` and `current`. A failure is logged; the
/// gateway still runs from where it is.
async fn install_bootstrap(settings: &Settings, layout: &Layout) {
    if matches!(layout.current(), Ok(Some(_))) {
        return;
    }
    let binary: PathBuf = match settings.gateway_binary() {
        Ok(binary) => binary,
        Err(err) => {
            tracing::warn!(error = %err, "no gateway to install into the install dir");
            return;
        }
    };
    match install::install_bootstrap(layout, &binary, install::SMOKE_TIMEOUT).await {
        Ok(version) => {
            tracing::info!(%version, from = %binary.display(), "installed the bootstrap gateway");
        }
        Err(err) => tracing::warn!(error = %err, "cannot install the bootstrap gateway"),
    }
}

/// The install as the machine sees it.
fn view(state: &install::State) -> InstallView {
    InstallView {
        current: state.current.clone(),
        previous: state.previous.clone(),
        quarantined: install::quarantine_list(state),
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
