//! `aihummer-publish`: writes the release CDN layout (manifest, artifact, checksum and
//! optional minisign signature) from a built gateway binary, for any static file server
//! to serve. See `aihummer::publish` for the layout.
//!
//! ```text
//! aihummer-publish release --binary target/release/aihummer-gateway --version 1.4.2 \
//!     --channel stable --out /srv/cdn [--target TRIPLE] [--secret-key release.key] \
//!     [--expires-in 14d | --no-expiry] [--min-version 1.2.0] [--notes-url URL]
//! aihummer-publish keygen --out-dir DIR [--unencrypted]
//! ```
//!
//! An encrypted secret key's password comes from `AIHUMMER_PUBLISH_KEY_PASSWORD`; nothing
//! is prompted for, so the tool runs unattended in a release pipeline.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use aihummer::docgen;
use aihummer::durable::write_atomic;
use aihummer::publish::{self, Release, SigningKey};
use aihummer::update::Channel;
use aihummer::update::manifest::TARGET;
use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand};

const PASSWORD_VAR: &str = "AIHUMMER_PUBLISH_KEY_PASSWORD";

#[derive(Parser)]
#[command(name = "aihummer-publish", version = aihummer::VERSION, about = "Publish AiHummer gateway releases as a static CDN layout")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Publish a built gateway binary on a channel.
    Release {
        /// The built aihummer-gateway.
        #[arg(long)]
        binary: PathBuf,
        /// The version it was built as (SemVer; must be what `--version` prints).
        #[arg(long)]
        version: semver::Version,
        /// stable, beta, alfa or dev.
        #[arg(long, default_value = "stable")]
        channel: String,
        /// Root of the CDN tree.
        #[arg(long)]
        out: PathBuf,
        /// Target triple the binary was built for (default: this tool's own).
        #[arg(long, default_value = TARGET)]
        target: String,
        /// minisign secret key to sign latest.json with (password: AIHUMMER_PUBLISH_KEY_PASSWORD).
        #[arg(long)]
        secret_key: Option<PathBuf>,
        /// Lifetime of the manifest, e.g. 30d; nodes report the channel stale and refuse
        /// it afterwards, so re-publish (or re-sign) before then. Default 14 days.
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "no_expiry")]
        expires_in: Option<Duration>,
        /// Write no `expires`: a replayed old manifest then stays valid for ever (only the
        /// nodes' newest-published_at check stands against it). For air-gapped mirrors
        /// that are rarely refreshed.
        #[arg(long)]
        no_expiry: bool,
        /// Oldest running version allowed to update straight to this one.
        #[arg(long)]
        min_version: Option<semver::Version>,
        /// Release notes URL.
        #[arg(long)]
        notes_url: Option<String>,
        /// Staged rollout: the percentage of nodes (0-100, by each node's stable cohort)
        /// that install this version on their own; publish again with a higher number to
        /// widen it. Default: every node.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        rollout: Option<u8>,
        /// Do not run `<binary> --version` (needed when publishing for another platform).
        #[arg(long)]
        skip_version_check: bool,
    },
    /// Generate a minisign key pair: DIR/aihummer-release.pub and DIR/aihummer-release.key.
    Keygen {
        /// Where to write the two files.
        #[arg(long)]
        out_dir: PathBuf,
        /// Leave the secret key unencrypted (otherwise AIHUMMER_PUBLISH_KEY_PASSWORD encrypts it).
        #[arg(long)]
        unencrypted: bool,
    },
    /// Write man pages or shell completions (used by the packaging).
    #[command(subcommand, hide = true)]
    Generate(docgen::Generate),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("aihummer-publish: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("aihummer-publish: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let password = std::env::var(PASSWORD_VAR).ok().filter(|p| !p.is_empty());
    match args.command {
        Command::Release {
            binary,
            version,
            channel,
            out,
            target,
            secret_key,
            expires_in,
            no_expiry,
            min_version,
            notes_url,
            rollout,
            skip_version_check,
        } => {
            let channel: Channel = channel.parse().map_err(|_| {
                anyhow::anyhow!("--channel {channel:?} is not one of stable, beta, alfa, dev")
            })?;
            let release = Release {
                binary,
                version,
                channel,
                target,
                out,
                published_at: SystemTime::now(),
                expires_in: match no_expiry {
                    true => None,
                    false => Some(expires_in.unwrap_or(publish::DEFAULT_EXPIRES_IN)),
                },
                min_version,
                notes_url,
                rollout,
                key: secret_key.map(|path| SigningKey { path, password }),
                verify_binary: !skip_version_check,
            };
            let published = publish::publish(&release).await?;
            println!("manifest  {}", published.manifest.display());
            println!("artifact  {}", published.artifact.display());
            if let Some(sig) = published.signature {
                println!("signature {}", sig.display());
            }
        }
        Command::Keygen {
            out_dir,
            unencrypted,
        } => {
            if !unencrypted && password.is_none() {
                bail!("set {PASSWORD_VAR} to encrypt the secret key, or pass --unencrypted");
            }
            let pair = publish::generate_keypair(if unencrypted { None } else { password })?;
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("create {}", out_dir.display()))?;
            let key = out_dir.join("aihummer-release.key");
            if key.exists() {
                bail!("{} exists; not overwriting a signing key", key.display());
            }
            write_atomic(&key, pair.secret_key.as_bytes(), 0o600)?;
            let public = out_dir.join("aihummer-release.pub");
            write_atomic(&public, pair.public_key.as_bytes(), 0o644)?;
            println!("secret key {}", key.display());
            println!("public key {}", public.display());
            println!(
                "AIHUMMER_UPDATE_PUBKEY={}",
                pair.public_key.lines().nth(1).unwrap_or_default()
            );
        }
        Command::Generate(what) => what.run(Args::command())?,
    }
    Ok(())
}
