// The stamping logic is shared by every binary of the workspace.
include!("../packaging/version_stamp.rs");

fn main() {
    stamp_version();
    // `sqlx::migrate!` embeds the SQL files; a changed or added migration must rebuild.
    println!("cargo::rerun-if-changed=../migrations");
}
