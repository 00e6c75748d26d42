use clap::Parser;

/// AiHummer supervisor and operator CLI.
#[derive(Parser)]
#[command(name = "aihummer", version = env!("AIHUMMER_VERSION"))]
struct Cli {}

fn main() {
    Cli::parse();
}
