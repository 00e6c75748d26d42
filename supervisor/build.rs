// The stamping logic is shared by every binary of the workspace.
include!("../packaging/version_stamp.rs");

fn main() {
    stamp_version();
    // The updater picks the artifact built for the platform this binary was compiled for.
    println!(
        "cargo::rustc-env=AIHUMMER_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
}
