//! `aihummer run`: binds the sockets, starts the runtime, and runs the supervisor and the
//! control server side by side until a stop signal has drained every gateway.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::config::{self, ConfigError, Settings};
use crate::control::{self, Access, BindError};
use crate::metrics_endpoint;
use crate::process::fds::{self, FdError};
use crate::supervise::{self, Driver, Handle};
use crate::update::{Updater, UpdaterError};

/// Why the supervisor could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
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
    let settings = Settings::from_env()?;
    let inherited = inherited?;
    // The control socket first: a second supervisor is then reported as such, rather than
    // as a busy port.
    let control = control::bind(&settings.socket, config::current_uid())?;
    let socket_file = SocketFile(settings.socket.clone());
    let public = match inherited {
        Some(listener) => listener,
        None => fds::bind_public(settings.addr)?,
    };
    // One thread is plenty: the supervisor waits on children, probes and a few clients.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(settings, public, control));
    drop(socket_file);
    result
}

async fn serve(
    settings: Settings,
    public: TcpListener,
    control: std::os::unix::net::UnixListener,
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
    let (driver, views) = Driver::new(settings, public, (inbox.clone(), inputs), updater).await?;
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
    let handle = Arc::new(Handle::new(views.status, inbox));
    let access = Access {
        uid: config::current_uid(),
    };
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(control::serve(control, handle, access, async {
        let _ = server_stopped.await;
    }));
    driver.run().await;
    drop(stop_server);
    drop(stop_metrics);
    let _ = server.await;
    tracing::info!("aihummer supervisor stopped");
    Ok(())
}
