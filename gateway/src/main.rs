use std::process::ExitCode;

use aihummer_gateway::{VERSION, app, config::Config, listeners, logging};
use clap::Parser;

/// AiHummer gateway: serves HTTP on AIHUMMER_GATEWAY_ADDR or on sockets inherited through
/// LISTEN_FDS. Configured entirely by AIHUMMER_* environment variables (see the README).
#[derive(Parser)]
#[command(name = "aihummer-gateway", version = VERSION)]
struct Cli {}

fn main() -> ExitCode {
    Cli::parse();
    // SAFETY: nothing has started a thread yet: clap and the code above are single-threaded,
    // and the tokio runtime is built below, after this call.
    let inherited = unsafe { listeners::take_inherited() };
    logging::init();
    let result = Config::from_env()
        .map_err(app::GatewayError::from)
        .and_then(|config| app::start(config, inherited));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "aihummer-gateway stopped");
            ExitCode::from(err.exit_code())
        }
    }
}
