//! Man pages and shell completions generated from a binary's own clap definition, by its
//! hidden `generate` subcommand. The packaging (`packaging/install.sh`, the `.deb` build)
//! calls it on the binary it installs, so the pages cannot drift from the CLI they describe.

use std::path::PathBuf;

use clap::Subcommand;
use clap_complete::Shell;

/// What `<binary> generate` writes.
#[derive(Debug, Subcommand)]
pub enum Generate {
    /// Write section-1 man pages: one for the binary, one per subcommand
    /// (`aihummer-update.1`, ...).
    Man {
        /// Directory to write the pages into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the completion script for one shell.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: Shell,
        /// Directory to write the script into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Why generating failed.
#[derive(Debug, thiserror::Error)]
pub enum DocgenError {
    /// The output directory or a file in it could not be written.
    #[error("cannot write into {dir}: {source}")]
    Write {
        /// The output directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl Generate {
    /// Writes what was asked for `cmd` (the binary's full clap command).
    pub fn run(self, cmd: clap::Command) -> Result<(), DocgenError> {
        let dir = match &self {
            Generate::Man { out } | Generate::Completions { out, .. } => out.clone(),
        };
        let wrap = |source| DocgenError::Write {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(wrap)?;
        match self {
            // One page per visible command (`aihummer.1`, `aihummer-update.1`, ...); hidden
            // ones, like `generate` itself, get none.
            Generate::Man { .. } => clap_mangen::generate_to(cmd, &dir).map_err(wrap),
            Generate::Completions { shell, .. } => {
                let mut cmd = cmd;
                let name = cmd.get_name().to_string();
                clap_complete::generate_to(shell, &mut cmd, name, &dir)
                    .map(drop)
                    .map_err(wrap)
            }
        }
    }
}
