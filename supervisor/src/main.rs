//! `aihummer`: parses the command line, then either runs the supervisor (`run`) or acts as
//! a client of a running one. Exit codes are chosen here, in one place: see the library's
//! "Exit codes".

use std::path::Path;
use std::process::ExitCode;

use aihummer::cli::{self, ClientError};
use aihummer::process::fds;
use aihummer::{VERSION, app, config, docgen};
use aihummer_common::logging;
use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

/// AiHummer supervisor and operator CLI. Configured by AIHUMMER_* environment variables;
/// the client commands talk to the supervisor at AIHUMMER_SUPERVISOR_SOCKET.
#[derive(Parser)]
#[command(name = "aihummer", version = VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the supervisor in the foreground (systemd's ExecStart).
    Run,
    /// Show the supervisor's state: gateways, updates, the last handoff and error.
    Status {
        /// Print one JSON document, stable for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show this binary's version, and the running supervisor's and gateway's.
    Version {
        /// Print one JSON document, stable for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Download, verify, stage and hand off to the channel's newer gateway; exit 0 once it
    /// serves. With --check only ask (exit 0: up to date, 100: newer available).
    Update {
        /// Only check: asks the running supervisor (its settings), else checks from this
        /// environment; print the newer version if any.
        #[arg(long)]
        check: bool,
        /// Install exactly this version (one quarantined before, too); the channel must
        /// offer it.
        #[arg(long, conflicts_with = "check")]
        version: Option<String>,
        /// Print one JSON document, stable for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Hand back to the previously installed gateway with a zero-downtime handoff.
    Rollback {
        /// Print one JSON document, stable for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Restart the gateway with a zero-downtime handoff. The new gateway gets the
    /// supervisor's environment, not this shell's: a changed environment file needs
    /// `systemctl restart aihummer`.
    Restart {
        /// Print one JSON document, stable for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The fleet sharing this node's database: every node, the rollout lease, halted
    /// versions.
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// Write man pages or shell completions (used by the packaging).
    #[command(subcommand, hide = true)]
    Generate(docgen::Generate),
}

#[derive(Subcommand)]
enum FleetCmd {
    /// Show every node (id, host, version serving, state, last seen), the rollout lease
    /// holder and the halted versions.
    Status {
        /// Print one JSON document, stable for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Lift the fleet-wide halt on VERSION: nodes in apply mode install it on their own
    /// again.
    Resume {
        /// The halted version.
        version: String,
        /// Print one JSON document, stable for scripts.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run => {
            // SAFETY: nothing has started a thread yet: clap and the code above are
            // single-threaded, and the tokio runtime is built inside `app::run`, after this.
            let inherited = unsafe { fds::take_inherited_listener() };
            logging::init();
            match app::run(inherited) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    // The log is the supervisor's voice (journald under systemd): the
                    // error itself is the message, so it is the line an operator reads.
                    tracing::error!("{err}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Generate(what) => match what.run(Cli::command()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("aihummer: {err}");
                ExitCode::FAILURE
            }
        },
        command => {
            let json = command.wants_json();
            match client(command) {
                Ok(code) => ExitCode::from(code),
                Err(err) => {
                    eprintln!("aihummer: {err:#}");
                    let code = err
                        .downcast_ref::<ClientError>()
                        .map_or(1, ClientError::exit_code);
                    // Scripts asked for one JSON document on stdout, failures included.
                    if json {
                        let doc = serde_json::json!({
                            "ok": false,
                            "error": format!("{err:#}"),
                            "exit_code": code,
                        });
                        println!("{doc}");
                    }
                    ExitCode::from(code)
                }
            }
        }
    }
}

impl Cmd {
    /// Whether the command was asked for JSON output.
    fn wants_json(&self) -> bool {
        match self {
            Cmd::Run | Cmd::Generate(_) => false,
            Cmd::Status { json }
            | Cmd::Version { json }
            | Cmd::Update { json, .. }
            | Cmd::Rollback { json }
            | Cmd::Restart { json }
            | Cmd::Fleet(FleetCmd::Status { json } | FleetCmd::Resume { json, .. }) => *json,
        }
    }
}

fn client(command: Cmd) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let path = config::socket_path_from_env();
    Ok(runtime.block_on(run_client(command, &path))?)
}

/// Runs a client command; the `u8` is the exit code of a command that succeeded.
async fn run_client(command: Cmd, path: &Path) -> Result<u8, ClientError> {
    match command {
        Cmd::Status { json } => cli::status(path, json).await.map(|()| 0),
        Cmd::Version { json } => cli::version(path, json).await.map(|()| 0),
        Cmd::Restart { json } => cli::restart(path, json).await.map(|()| 0),
        Cmd::Update {
            check: true, json, ..
        } => cli::update_check(path, json).await,
        Cmd::Update {
            check: false,
            version,
            json,
        } => cli::update(path, version, json).await.map(|()| 0),
        Cmd::Rollback { json } => cli::rollback(path, json).await.map(|()| 0),
        Cmd::Fleet(FleetCmd::Status { json }) => cli::fleet::status(path, json).await.map(|()| 0),
        Cmd::Fleet(FleetCmd::Resume { version, json }) => {
            cli::fleet::resume(path, version, json).await.map(|()| 0)
        }
        Cmd::Run | Cmd::Generate(_) => Ok(0),
    }
}
