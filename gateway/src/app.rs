//! The gateway's lifecycle: serve at once (health first), bring the database up, serve
//! full, and drain on the shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aihummer_common::redact;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, DbTarget};
use crate::database::{self, StartupError};
use crate::descriptors;
use crate::http::inbound::Inbound;
use crate::http::metrics as http_metrics;
use crate::http::routes;
use crate::http::signature::Verifier;
use crate::inbound::Wake;
use crate::inbound::batch::Batch;
use crate::leader::Elector;
use crate::listeners::{self, ListenerError, Listeners};
use crate::metrics::Metrics;
use crate::outbox::deliver::Deliverer;
use crate::responder::Builtin;
use crate::scheduler::{self, Scheduler};
use crate::serve::{Drained, Server};
use crate::state::{Pools, Shared};

/// How long closing the pools may take after the drain.
const POOL_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a supervised gateway checks that its supervisor is still its parent.
const PARENT_CHECK: Duration = Duration::from_millis(500);

/// Why the gateway stopped with an error; [`GatewayError::exit_code`] is its exit status.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listening sockets could not be set up.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// The async runtime or a listener registration failed.
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// The metrics registry could not be built.
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The database startup failed for good.
    #[error(transparent)]
    Startup(#[from] StartupError),
}

impl GatewayError {
    /// 3 when the database refuses to be used (a migration conflicts, failed or is dirty;
    /// `AIHUMMER_DATABASE_URL` goes through a transaction pooler; `AIHUMMER_DB_APP_URL`'s
    /// login or `aihummer_app` could skip row-level security), 1 for the rest. Each is
    /// something an operator must fix; restarting alone never helps.
    pub fn exit_code(&self) -> u8 {
        match self {
            GatewayError::Startup(StartupError::Migration(_) | StartupError::UnsafeAppRole(_)) => 3,
            _ => 1,
        }
    }
}

/// Builds the runtime and runs the gateway until SIGTERM or SIGINT has drained it.
pub fn start(
    mut config: Config,
    inherited: Result<Option<Listeners>, ListenerError>,
) -> Result<(), GatewayError> {
    let deliveries = match config.reply_webhook {
        Some(_) => Deliverer::most_in_flight(config.outbox_concurrency),
        None => 0,
    };
    config.limits.max_connections = descriptors::fit(config.limits.max_connections, deliveries);
    let mut listeners = match inherited? {
        Some(listeners) => listeners,
        None => listeners::bind(config.addr)?,
    };
    listeners.add_operator(config.metrics_addr)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // A probe socket means a supervisor started this process and owns its lifecycle.
    let supervised = listeners.probe.is_some();
    let result = runtime.block_on(async {
        let signal = shutdown_signal()?;
        let shutdown = async move {
            tokio::select! {
                _ = signal => {}
                _ = supervisor_gone(), if supervised => {}
            }
        };
        run(config, listeners, shutdown).await
    });
    // Connections past the drain deadline are dropped here, not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Resolves on the first SIGTERM or SIGINT. The handlers stay installed afterwards, so a
/// repeated signal during the drain is ignored rather than killing the process.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "draining");
    })
}

/// SIGUSR1 takes the gateway out of rotation (`/readyz` 503) while it keeps serving: a
/// supervisor that is itself stopping sends it first, waits `AIHUMMER_SHUTDOWN_DELAY` for
/// the proxies to notice, and only then SIGTERM to drain.
fn withdraw_on_sigusr1(shared: Arc<Shared>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = signal(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            shared.withdraw();
        }
    });
    Ok(())
}

/// Starts the leader election, publishing on `leadership`, the scheduler following it,
/// and the outbox deliverer (counted on `metrics`), as `tasks` told to end by `stop`.
fn start_background(
    config: &Config,
    db: &DbTarget,
    pools: &Pools,
    shared: &Arc<Shared>,
    (tasks, stop): (&TaskTracker, &watch::Sender<bool>),
    leadership: watch::Sender<bool>,
    metrics: &Arc<Metrics>,
) {
    let context = scheduler::Context {
        pool: pools.owner.clone(),
        retention: config.retention,
    };
    let scheduler = Scheduler::new(
        context,
        shared.instance.clone(),
        config.housekeeping_interval,
    );
    tasks.spawn(scheduler.run(leadership.subscribe()));
    let elector = Elector::new(db.options.clone(), shared.instance.clone(), leadership);
    tasks.spawn(elector.run(stop.subscribe()));
    let Some(webhook) = &config.reply_webhook else {
        tracing::warn!(
            "AIHUMMER_REPLY_WEBHOOK_URL is not set: this gateway delivers no replies; \
             they wait in the outbox for a gateway that has it"
        );
        return;
    };
    let deliverer = Deliverer::new(
        pools.owner.clone(),
        webhook.clone(),
        config.outbox_lease,
        shared.instance.clone(),
        config.outbox_concurrency,
    );
    match deliverer {
        Ok(deliverer) => {
            let deliverer = deliverer.observed(metrics.attempts.clone(), metrics.lag.clone());
            tracing::info!(webhook = %redact::url(webhook.as_str()), "delivering replies");
            tasks.spawn(deliverer.run(stop.subscribe()));
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot build the webhook client; no replies are delivered")
        }
    }
}

/// Resolves when this process is reparented, i.e. its supervisor died without stopping
/// it. A supervised gateway must not linger holding the port; `PR_SET_PDEATHSIG` is not
/// used because it fires when the spawning *thread* exits, which tokio makes unpredictable.
async fn supervisor_gone() {
    let parent = std::os::unix::process::parent_id();
    let mut tick = tokio::time::interval(PARENT_CHECK);
    loop {
        tick.tick().await;
        if std::os::unix::process::parent_id() != parent {
            tracing::warn!(supervisor_pid = parent, "the supervisor is gone; draining");
            return;
        }
    }
}

/// Counts each change of leadership published on `leading`, until the elector is gone.
async fn count_leadership_changes(mut leading: watch::Receiver<bool>, metrics: Arc<Metrics>) {
    let mut was = *leading.borrow_and_update();
    while leading.changed().await.is_ok() {
        let is = *leading.borrow_and_update();
        if is != was {
            metrics.leadership_changes.inc();
            metrics.leader.set(i64::from(is));
            was = is;
        }
    }
}

/// Logs once `open` turns true: the supervisor's probe was answered ready, and client
/// traffic is taken from the shared socket from then on.
async fn log_when_open(mut open: watch::Receiver<bool>) {
    if open.wait_for(|open| *open).await.is_ok() {
        tracing::info!(
            "ready, and told the supervisor: accepting client traffic on the shared socket"
        );
    }
}

/// Serves on `listeners` until `shutdown` resolves, then drains.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    // The elector publishes on `leadership` once the database is up; /healthz reads it.
    let (leadership, leading) = watch::channel(false);
    let metrics = Arc::new(Metrics::new()?);
    tokio::spawn(count_leadership_changes(leading.clone(), metrics.clone()));
    let shared = Arc::new(Shared::new(config.database.is_some(), leading));
    let inbound = Arc::new(Inbound {
        shared: shared.clone(),
        verifier: config.inbound_secret.clone().map(|secret| {
            Verifier::new(
                secret,
                config.inbound_tolerance,
                config.inbound_legacy_signature,
            )
        }),
        workspace: config.default_workspace,
        responder: Box::new(Builtin),
        wake: Wake::default(),
        batch: Batch::default(),
    });
    let wake = inbound.wake.clone();
    // Under a supervisor, the public socket is shared with the gateway serving now: take
    // client traffic only once the supervisor's probe has been answered ready, so the
    // supervisor knows this gateway serves before any client does (its status never lags
    // a 200 from the public `/readyz`); connections wait in the shared queue meanwhile,
    // for the gateway serving now. Alone, or with nothing to wait for (health-only), take
    // it at once: `/readyz` tells clients and proxies when it is ready. The private probe
    // answers from the first moment.
    let supervised = listeners.probe.is_some();
    let public_open = match supervised && shared.full_mode {
        true => {
            tokio::spawn(log_when_open(shared.ready_answered()));
            shared.ready_answered()
        }
        false => watch::channel(true).1,
    };
    // Two servers, because the listeners serve different routers; they drain together.
    let public_routes = routes::public(shared.clone(), inbound);
    let private_routes = routes::private(shared.clone(), metrics.clone());
    let server = Server::new(
        http_metrics::counted(public_routes, metrics.clone(), "public"),
        config.limits,
    )
    .count_connections(metrics.connections.with_label_values(&["public"]));
    let private = Server::new(
        http_metrics::counted(private_routes, metrics.clone(), "private"),
        config.limits,
    )
    .count_connections(metrics.connections.with_label_values(&["private"]));
    let mut addrs = vec![server.serve_public(listeners.public, public_open)?];
    for listener in [listeners.probe, listeners.operator].into_iter().flatten() {
        addrs.push(private.serve_probe(listener)?);
    }
    tracing::info!(
        version = crate::VERSION,
        pid = shared.pid,
        listening = ?addrs,
        max_connections = config.limits.max_connections,
        mode = if shared.full_mode { "full" } else { "health-only" },
        "aihummer-gateway serving"
    );

    withdraw_on_sigusr1(shared.clone())?;
    let (stop, _) = watch::channel(false);
    let background = TaskTracker::new();
    let bring_up = async {
        match &config.database {
            Some(db) => {
                let pools = database::start(
                    db,
                    config.app_database.as_ref(),
                    config.default_workspace,
                    &shared,
                )
                .await?;
                shared.set_ready(pools.clone());
                background.spawn(wake.run(pools.app.pool().clone(), stop.subscribe()));
                start_background(
                    &config,
                    db,
                    &pools,
                    &shared,
                    (&background, &stop),
                    leadership,
                    &metrics,
                );
            }
            None => tracing::warn!(
                "AIHUMMER_DATABASE_URL is not set: health-only mode, /readyz answers 503"
            ),
        }
        Ok::<_, StartupError>(())
    };
    // A successful bring-up disables its branch; only the signal or a failure ends this.
    let failure = tokio::select! {
        _ = shutdown => None,
        Err(err) = bring_up => Some(err),
    };

    // Leadership and leases are given up at once, beside the HTTP drain, so another
    // gateway takes over the scheduler and the outbox without waiting for this one.
    shared.start_draining();
    metrics.draining.set(1);
    stop.send_replace(true);
    background.close();
    // Only client connections are worth reporting: a probe or operator request still open
    // at the deadline is dropped like any other.
    let (drained, _, background_done) = tokio::join!(
        server.drain(config.drain_timeout),
        private.drain(config.drain_timeout),
        tokio::time::timeout(config.drain_timeout, background.wait())
    );
    if background_done.is_err() {
        tracing::warn!("background work did not stop within the drain deadline");
    }
    match drained {
        Drained::Clean => tracing::info!("drained"),
        Drained::DeadlineReached(open) => tracing::warn!(
            open,
            timeout = ?config.drain_timeout,
            "drain deadline reached; dropping the remaining connections"
        ),
    }
    if let Some(pools) = shared.pools() {
        let close = async { tokio::join!(pools.app.close(), pools.owner.close()) };
        let _ = tokio::time::timeout(POOL_CLOSE_TIMEOUT, close).await;
    }
    match failure {
        Some(err) => Err(err.into()),
        None => Ok(()),
    }
}
