use std::process::ExitCode;

use aihummer_common::logging;
use aihummer_gateway::{VERSION, admin, app, config::Config, listeners};
use clap::{Parser, Subcommand};

/// AiHummer gateway: serves HTTP on AIHUMMER_GATEWAY_ADDR or on sockets inherited through
/// LISTEN_FDS. Configured entirely by AIHUMMER_* environment variables (see the README).
#[derive(Parser)]
#[command(name = "aihummer-gateway", version = VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect or repair the reply outbox (uses AIHUMMER_DATABASE_URL).
    #[command(subcommand)]
    Outbox(Outbox),
}

#[derive(Subcommand)]
enum Outbox {
    /// Print reply counts by state as JSON.
    Stats,
    /// Put dead-lettered replies back in the queue, keeping their idempotency keys.
    Requeue {
        /// Only this reply.
        #[arg(long)]
        id: Option<uuid::Uuid>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SAFETY: nothing has started a thread yet: clap and the code above are single-threaded,
    // and every tokio runtime is built below, after this call.
    let inherited = unsafe { listeners::take_inherited() };
    logging::init();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            // The error itself is the message: it names the variable to fix.
            tracing::error!("{err}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        None => match app::start(config, inherited) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(error = %err, "aihummer-gateway stopped");
                ExitCode::from(err.exit_code())
            }
        },
        Some(Command::Outbox(command)) => operator(config, command),
    }
}

fn operator(config: Config, command: Outbox) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("aihummer-gateway: cannot start a runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match command {
            Outbox::Stats => admin::outbox_stats(&config)
                .await
                .map(|stats| serde_json::json!(stats).to_string()),
            Outbox::Requeue { id } => admin::outbox_requeue(&config, id)
                .await
                .map(|n| format!("requeued {n} dead-lettered replies")),
        }
    });
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("aihummer-gateway: {err}");
            ExitCode::from(1)
        }
    }
}
