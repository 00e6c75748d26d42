//! `aihummer run`: binds the sockets, starts the runtime, and runs the supervisor and the
//! control server side by side until a stop signal has drained every gateway.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::config::{self, ConfigError, Settings};
use crate::control::{self, Access, BindError};
use crate::fleet::node::NodeIdError;
use crate::fleet::{Fleet, FleetError, NodeId, registry};
use crate::metrics_endpoint;
use crate::process::fds::{self, FdError};
use crate::process::identity::{self, Identities, IdentityError};
use crate::supervise::{self, Coordination, Driver, Handle};
use crate::update::{Updater, UpdaterError};

/// Why the supervisor could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The gateway's user, the admin group or the install dir's ownership is unusable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The public listener could not be set up.
    #[error(transparent)]
    Listener(#[from] FdError),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] BindError),
    /// The update pipeline could not be set up.
    #[error(transparent)]
    Updater(#[from] UpdaterError),
    /// `AIHUMMER_METRICS_ADDR` could not be bound.
    #[error("cannot listen on AIHUMMER_METRICS_ADDR {addr}: {source}")]
    MetricsListener {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The node id could not be read or created.
    #[error(transparent)]
    NodeId(#[from] NodeIdError),
    /// `AIHUMMER_DATABASE_URL` cannot be used for the fleet's tables.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// The metrics registry could not be built.
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The async runtime or a signal handler could not be set up.
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Removes the control socket file when the supervisor ends, so the next one starts clean.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the supervisor. `inherited` is the public listener systemd passed, if any, taken
/// before any thread started.
pub fn run(inherited: Result<Option<TcpListener>, FdError>) -> Result<(), AppError> {
    let mut settings = Settings::from_env()?;
    let inherited = inherited?;
    let euid = config::current_uid();
    let identities = Identities::resolve(&settings.gateway_user, &settings.admin_group, euid)?;
    if let (Some(run_as), Some(state_dir)) = (&identities.run_as, &settings.state_dir) {
        identity::check_state_dir(state_dir, run_as)?;
    }
    describe(&identities, &settings);
    // What this process creates (installed versions, the state file) must never be
    // writable by the gateway's user through a loose inherited umask.
    {
        use nix::sys::stat::{Mode, umask};
        let inherited_mask = umask(Mode::S_IWGRP | Mode::S_IWOTH);
        umask(inherited_mask | Mode::S_IWGRP | Mode::S_IWOTH);
    }
    settings.launch.run_as = identities.run_as.clone();
    let access = Access {
        uid: euid,
        gateway_uid: identities.gateway_uid(euid),
        admin_gid: identities.admin_gid,
        gateways: settings.launch.groups.clone(),
    };
    // The control socket first: a second supervisor is then reported as such, rather than
    // as a busy port.
    let control = control::bind(&settings.socket, euid, identities.admin_gid)?;
    let socket_file = SocketFile(settings.socket.clone());
    let public = match inherited {
        Some(listener) => listener,
        None => fds::bind_public(settings.addr)?,
    };
    // One thread is plenty: the supervisor waits on children, probes and a few clients.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(settings, public, control, access));
    drop(socket_file);
    result
}

/// Says in the log who the gateway runs as and who may use the control socket.
fn describe(identities: &Identities, settings: &Settings) {
    match &identities.run_as {
        Some(run_as) if run_as.uid == 0 => tracing::warn!(
            "AIHUMMER_GATEWAY_USER={}: the gateway runs as root, without privilege separation",
            run_as.name
        ),
        Some(run_as) => tracing::info!(
            user = %run_as.name,
            uid = run_as.uid,
            gid = run_as.gid,
            "the gateway runs as AIHUMMER_GATEWAY_USER"
        ),
        None => tracing::info!("not root: the gateway runs as this supervisor's user"),
    }
    if identities.admin_gid.is_none() {
        tracing::info!(
            group = %settings.admin_group,
            "AIHUMMER_ADMIN_GROUP does not exist: only root and this supervisor's user may use the control socket"
        );
    }
}

async fn serve(
    settings: Settings,
    public: TcpListener,
    control: std::os::unix::net::UnixListener,
    access: Access,
) -> Result<(), AppError> {
    let control = tokio::net::UnixListener::from_std(control)?;
    let (inbox, inputs) = mpsc::unbounded_channel();
    supervise::forward_signals(inbox.clone())?;
    tracing::info!(
        version = crate::VERSION,
        pid = std::process::id(),
        listen = %public.local_addr()?,
        control = %settings.socket.display(),
        "aihummer supervisor running"
    );
    let updater = settings.update_options().map(Updater::new).transpose()?;
    let metrics_addr = settings.metrics_addr;
    let node = match &settings.state_dir {
        Some(dir) => NodeId::load_or_create(dir)?,
        None => NodeId::ephemeral(),
    };
    let fleet = settings
        .database_url
        .as_deref()
        .map(|url| Fleet::new(url, node.clone()).map(Arc::new))
        .transpose()?;
    let coordination = Coordination {
        window: settings.update_window,
        fleet: fleet.clone(),
    };
    let identity = registry::Identity {
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        address: public.local_addr()?.to_string(),
    };
    tracing::info!(node = %node, cohort = node.cohort(), fleet = fleet.is_some(), "this node");
    let (driver, views) = Driver::new(
        settings,
        public,
        (inbox.clone(), inputs),
        updater,
        (node, coordination),
    )
    .await?;
    let status = views.status.clone();
    if let Some(fleet) = &fleet {
        tokio::spawn(registry::run(
            fleet.clone(),
            identity.clone(),
            status.clone(),
        ));
    }
    let (stop_metrics, metrics_stopped) = oneshot::channel::<()>();
    if let Some(addr) = metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::MetricsListener { addr, source })?;
        tracing::info!(%addr, "serving the node's metrics");
        let node = metrics_endpoint::Node {
            metrics: views.metrics.clone(),
            active_probe: views.active_probe.clone(),
        };
        tokio::spawn(metrics_endpoint::serve(listener, node, async {
            let _ = metrics_stopped.await;
        }));
    }
    let handle = Arc::new(Handle::new(views.status, inbox, fleet.clone()));
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(control::serve(control, handle, access, async {
        let _ = server_stopped.await;
    }));
    driver.run().await;
    if let Some(fleet) = &fleet {
        registry::farewell(fleet, &identity, &status.borrow().clone()).await;
    }
    drop(stop_server);
    drop(stop_metrics);
    let _ = server.await;
    tracing::info!("aihummer supervisor stopped");
    Ok(())
}
